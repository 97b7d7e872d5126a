"""Training settings derived from the data (the ``"auto"`` preset, the default).

The reference settings (batch 512, lr 1e-4, Keras BatchNorm momentum, 500 epochs with patience 30)
assume tens of thousands of cells: on a few thousand cells they give about five optimiser steps per
epoch and the RE network never leaves its first epoch (METHOD.md section 3, "Scale of the reference
settings"). The rule here thinks in optimiser *steps*, not epochs, so that the same rule serves a few
hundred cells and millions:

* ``batch_size``: the power of two nearest to ``n_train / 32`` (about 32 steps per epoch), between 32
  and 512 (the reference's size, reached at ~16,000 training cells).
* ``lr``: 1e-3 (Adam). Measured on CellBench and the synthetic data (docs/model.md): 1e-4 needs
  thousands of steps more for the same validation loss.
* ``min_epochs``: at least ``MIN_STEPS`` optimiser steps before early stopping may stop a network.
* ``patience``: ``PATIENCE_STEPS`` steps without a better validation loss, in epochs, between 3 and 30.
* ``max_epochs``: ``MAX_STEPS`` steps, between ``min_epochs + patience`` and 500.
* BatchNorm: momentum 0.1 and, before every validation, population statistics recomputed over (up
  to ``BN_REFRESH_ROWS``) training cells, so validation and the kept best weights never see lagging
  running statistics.
* FE/FEC reconstruction weight: ``RECON_VARIANCE_WEIGHT / v`` with ``v`` the mean per-gene variance of
  the scaled training inputs, so ``w_recon * MSE = RECON_VARIANCE_WEIGHT * (1 - R^2)`` whatever the
  data's scale. The reconstruction MSE of a data set with large variance (e.g. synthetic counts, v =
  0.054) is 17x that of CellBench (v = 0.0032): a fixed weight that suits one lets the adversary lose
  on the other (measured: FE batch predictable from the latent at 100% with 600, 57% with 35, chance
  33%). The constant gives the reference-range value 600 on CellBench. FEC keeps the reference's
  ratio (twice FE's weight).

Each derived value is explained in ``model.derived`` (and ``model.summary()``, the CLI and the model
widget show it). Any value passed explicitly (``ScMEDAL(..., batch_size=128)`` or ``train(...,
max_epochs=50)``) wins over the rule; the others are derived around it.
"""

from __future__ import annotations

import math

__all__ = ["derive_settings", "MIN_STEPS", "PATIENCE_STEPS", "MAX_STEPS", "BN_REFRESH_ROWS", "AUTO_KEYS",
           "RECON_VARIANCE_WEIGHT"]

#: Optimiser steps every network takes before early stopping may stop it.
MIN_STEPS = 600
#: Steps without a better validation loss before early stopping.
PATIENCE_STEPS = 400
#: Step budget that sets max_epochs.
MAX_STEPS = 20_000
#: Training rows whose BatchNorm statistics are recomputed before each validation.
BN_REFRESH_ROWS = 65_536
#: FE reconstruction weight times the mean per-gene variance of the scaled inputs (600 on CellBench).
RECON_VARIANCE_WEIGHT = 1.9
#: Settings the "auto" preset derives (left as None in the preset).
AUTO_KEYS = ("batch_size", "lr", "max_epochs", "patience", "min_epochs", "fe_w_recon", "fec_w_recon")


def _pow2(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def derive_settings(n_train: int, config: dict, overrides: dict | None = None,
                    variance: float | None = None) -> tuple[dict, dict]:
    """``(settings, reasons)`` for ``n_train`` training cells whose scaled inputs have mean per-gene
    variance ``variance`` (needed only when a reconstruction weight is derived).

    ``config``: the model's configuration (entries that are not ``None`` are kept as they are);
    ``overrides``: values passed to ``train()`` (``None`` = not given). ``settings`` holds
    ``batch_size``, ``lr``, ``max_epochs``, ``patience``, ``min_epochs``, ``fe_w_recon`` and
    ``fec_w_recon``; ``reasons`` says for each whether it was derived (and from what) or given.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    given = {k: config.get(k) for k in AUTO_KEYS if config.get(k) is not None}
    given.update(overrides)
    n = max(int(n_train), 1)
    out, why = {}, {}

    if "batch_size" in given:
        out["batch_size"], why["batch_size"] = int(given["batch_size"]), "given"
    else:
        bs = min(512, max(32, _pow2(n / 32)))
        bs = max(2, min(bs, n))
        out["batch_size"] = bs
        why["batch_size"] = f"derived: {n} training cells / ~32 steps per epoch, power of two in [32, 512]"
    spe = max(1, math.ceil(n / out["batch_size"]))  # optimiser steps per epoch

    if "lr" in given:
        out["lr"], why["lr"] = float(given["lr"]), "given"
    else:
        out["lr"], why["lr"] = 1e-3, "derived: Adam 1e-3 (docs/model.md, 'Data-derived defaults')"

    if "min_epochs" in given:
        out["min_epochs"], why["min_epochs"] = int(given["min_epochs"]), "given"
    else:
        out["min_epochs"] = max(2, math.ceil(MIN_STEPS / spe))
        why["min_epochs"] = f"derived: at least {MIN_STEPS} optimiser steps ({spe} per epoch)"

    if "patience" in given:
        out["patience"], why["patience"] = int(given["patience"]), "given"
    else:
        out["patience"] = min(30, max(3, math.ceil(PATIENCE_STEPS / spe)))
        why["patience"] = f"derived: {PATIENCE_STEPS} steps without improvement, in [3, 30] epochs"

    if "max_epochs" in given:
        out["max_epochs"], why["max_epochs"] = int(given["max_epochs"]), "given"
        out["min_epochs"] = min(out["min_epochs"], out["max_epochs"])
    else:
        lo = out["min_epochs"] + out["patience"]
        out["max_epochs"] = min(500, max(lo, math.ceil(MAX_STEPS / spe)))
        out["min_epochs"] = min(out["min_epochs"], out["max_epochs"])
        why["max_epochs"] = f"derived: a budget of {MAX_STEPS} steps, in [min_epochs + patience, 500] epochs"
    for key, factor in (("fe_w_recon", 1.0), ("fec_w_recon", 2.0)):
        if key in given:
            out[key], why[key] = float(given[key]), "given"
        elif variance is None or not variance > 0:
            out[key], why[key] = 600.0 * factor, "derived: no input variance available, reference-range value"
        else:
            out[key] = float(min(4000.0, max(10.0, factor * RECON_VARIANCE_WEIGHT / variance)))
            why[key] = (f"derived: {factor * RECON_VARIANCE_WEIGHT:g} / mean per-gene input variance "
                        f"{variance:.4g}, in [10, 4000]")
    out["steps_per_epoch"] = spe
    why["steps_per_epoch"] = f"{n} training cells / batch {out['batch_size']}"
    return out, why
