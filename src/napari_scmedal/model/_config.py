"""The model's presets, the check of user hyperparameters, and the networks a configuration builds.

Everything here is a pure function of a preset name, hyperparameters or a recipe and configuration:
:class:`~napari_scmedal.model.ScMEDAL` calls it when it is constructed, and when a model file is loaded
(the networks are first built on the meta device to check the file's tensor shapes).
"""

from __future__ import annotations

import contextlib
import json
import platform

import torch

from ..errors import ScMEDALError
from ..models import FE, RE
from ..models.defaults import BN_REFRESH_ROWS, validate_config
from ..nn import set_bn_momentum

__all__ = ["DEFAULT_PRESET", "PRESETS", "make_config", "make_networks", "software_versions"]

#: Hyperparameters of the presets. "paper" = METHOD.md section 3 (reference defaults, AML weights);
#: "quick" = laptop setting tuned on the bundled CellBench sample (see docs/model.md).
PRESETS: dict[str, dict] = {
    "paper": dict(
        lr=1e-4, batch_size=512, max_epochs=500, patience=30, hidden=[512, 132], latent=50,
        fe_w_recon=1000.0, fe_w_adv=1.0, fe_w_center=0.0,
        fec_w_recon=2000.0, fec_w_adv=0.5, fec_w_class=3.0,
        re_w_recon=110.0, re_w_batch=0.1, kl_weight=1e-5, prior_sd=0.25, kl_estimator="sample",
        bn_momentum=0.01, adv_bound=None, adam_eps=1e-7,
        input_kind="auto", split_seed=42, split_fractions=[0.6, 0.2, 0.2], train_fec=True,
        min_epochs=1, bn_refresh=None, min_delta=0.0,
    ),
}
PRESETS["quick"] = dict(
    PRESETS["paper"],
    lr=1e-3, batch_size=64, max_epochs=150, patience=10, bn_momentum=0.1,
    fe_w_recon=600.0, fe_w_adv=1.0,
)
#: The default: batch size, learning rate, epochs, patience and the minimum number of steps derived from the
#: number of training cells (napari_scmedal.models.defaults), BatchNorm statistics recomputed before every
#: validation. "paper" and "quick" stay available as explicit, fixed settings.
PRESETS["auto"] = dict(
    PRESETS["paper"],
    lr=None, batch_size=None, max_epochs=None, patience=None, min_epochs=None,
    bn_momentum=0.1, bn_refresh=BN_REFRESH_ROWS, min_delta=0.01,
    fe_w_recon=None, fec_w_recon=None,
    fe_w_center=3.0,  # batch-centring of the FE latent (models.tasks.batch_center_penalty; docs/model.md)
)
#: The preset used when none is given.
DEFAULT_PRESET = "auto"


def make_config(preset: str, hyperparameters: dict) -> dict:
    """The validated configuration of ``preset`` with ``hyperparameters`` overriding its entries.

    Raises
    ------
    ScMEDALError
        For an unknown preset, an unknown hyperparameter name or an invalid value.
    """
    if preset not in PRESETS:
        raise ScMEDALError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    config = json.loads(json.dumps(PRESETS[preset]))
    unknown = sorted(set(hyperparameters) - set(config))
    if unknown:
        raise ScMEDALError(f"unknown hyperparameter(s) {unknown}; valid names are {sorted(config)} "
                           f"(see napari_scmedal.model.PRESETS).")
    for k, v in hyperparameters.items():
        config[k] = list(v) if isinstance(v, tuple) else v
    return validate_config(config, ScMEDALError)


def make_networks(recipe, config: dict, seed: int, device) -> dict[str, torch.nn.Module]:
    """The FE, RE (and FEC) networks a recipe and configuration define, seeded, in eval mode on ``device``
    (``torch.device("meta")`` gives their tensor shapes without allocating them)."""
    c = config
    G, B = recipe.n_genes, len(recipe.batches)
    K = len(recipe.labels) if recipe.labels else 0
    hidden, latent = tuple(c["hidden"]), int(c["latent"])
    meta = torch.device(device).type == "meta"
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if meta else contextlib.nullcontext()), \
            (_NoInit() if meta else contextlib.nullcontext()):
        torch.manual_seed(seed)
        nets: dict[str, torch.nn.Module] = {
            "fe": FE(G, B, None, hidden, latent),
            "re": RE(G, B, hidden, latent, prior_sd=c["prior_sd"], kl_estimator=c["kl_estimator"]),
        }
        if K >= 2 and c["train_fec"]:
            nets["fec"] = FE(G, B, K, hidden, latent)
    for net in nets.values():
        set_bn_momentum(net, c["bn_momentum"])
        net.to(device).eval()
    return nets


class _NoInit(torch.overrides.TorchFunctionMode):
    """Skips the ``torch.nn.init`` initialisers while networks are built on the meta device (shapes only, no
    values to fill). torch's meta ``normal_`` would import torch._dynamo (about 2 s of imports holding the GIL:
    the window froze when the model widget loaded the model its training process had written)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def software_versions() -> dict[str, str]:
    """Versions of napari-scmedal, Python and the main libraries (stored in summaries and model files)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"napari_scmedal": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "scipy", "anndata", "safetensors", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out
