"""scMEDAL networks (AE, AEC, FE, FEC, RE), their training steps and the trainer (pure PyTorch)."""

from .networks import AE, DEFAULT_HIDDEN, DEFAULT_LATENT, FE, RE, Encoder, REDecoder, REEncoder, TiedDecoder
from .training import AETask, FETask, RETask, Tensors, fit, is_cancelled, resolve_device

__all__ = ["AE", "FE", "RE", "Encoder", "TiedDecoder", "REEncoder", "REDecoder", "DEFAULT_HIDDEN",
           "DEFAULT_LATENT", "AETask", "FETask", "RETask", "Tensors", "fit", "is_cancelled", "resolve_device"]
