"""scMEDAL networks (AE, AEC, FE, FEC, RE), their training steps and the trainer (pure PyTorch).

Layers, lowest first: :mod:`.networks` (the modules), :mod:`.batch` (the :class:`Tensors` minibatch),
:mod:`.loaders` (minibatch sources), :mod:`.tasks` (losses and one optimiser step per network kind),
:mod:`.trainer` (the training loop, :func:`fit`), plus :mod:`.defaults` (settings) and :mod:`.health`
(post-training checks).
"""

from .batch import Tensors
from .networks import AE, DEFAULT_HIDDEN, DEFAULT_LATENT, FE, RE, Encoder, REDecoder, REEncoder, TiedDecoder
from .tasks import AETask, FETask, RETask, batch_center_penalty
from .trainer import PRECISIONS, expected_last_epoch, fit, resolve_device

__all__ = ["AE", "DEFAULT_HIDDEN", "DEFAULT_LATENT", "FE", "PRECISIONS", "RE", "AETask", "Encoder", "FETask",
           "REDecoder", "REEncoder", "RETask", "Tensors", "TiedDecoder", "batch_center_penalty",
           "expected_last_epoch", "fit", "resolve_device"]
