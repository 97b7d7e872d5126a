"""``ScMEDAL``: the public, scverse-style API of napari-scmedal (pure Python, no Qt).

>>> import napari_scmedal as sm
>>> model = sm.ScMEDAL(adata, batch_key="batch", label_key="cell_line", preset="quick", seed=0)
>>> model.train()
>>> z_fe = model.get_latent_representation("fe")            # batch-invariant latent
>>> x_cf = model.get_counterfactual_expression("Dropseq_3cl")  # every cell as if in that batch
>>> x_lit = model.get_counterfactual_expression("Dropseq_3cl", method="reference")  # METHOD.md's literal swap
>>> model.save("model.scmedal.safetensors"); model = sm.ScMEDAL.load("model.scmedal.safetensors")

The class is put together from one module per concern (see :mod:`._scmedal`); :class:`ModelLike` and
:class:`VersionsModel` say what the rest of the package (comparisons, genomap stacks, figures) uses of a model. See docs/model.md for
the presets, the hyperparameters and the file format.
"""

from __future__ import annotations

from ..modelfile import FILE_FORMAT, FILE_VERSION
from ..versions import CF_DEFAULT, CF_METHODS, CF_NEIGHBOURS, LATENT_KINDS
from ._anchors import CF_ANCHORS_PER_BATCH
from ._config import DEFAULT_PRESET, PRESETS
from ._protocols import ModelLike, VersionsModel
from ._scmedal import ScMEDAL

__all__ = ["CF_ANCHORS_PER_BATCH", "CF_DEFAULT", "CF_METHODS", "CF_NEIGHBOURS", "DEFAULT_PRESET", "FILE_FORMAT",
           "FILE_VERSION", "LATENT_KINDS", "PRESETS", "ModelLike", "ScMEDAL", "VersionsModel"]
