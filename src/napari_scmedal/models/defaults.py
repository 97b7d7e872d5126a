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
from typing import Any

__all__ = ["derive_settings", "validate_config", "MIN_STEPS", "PATIENCE_STEPS", "MAX_STEPS", "BN_REFRESH_ROWS", "AUTO_KEYS",
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
    given: dict[str, Any] = {k: config.get(k) for k in AUTO_KEYS if config.get(k) is not None}
    given.update(overrides)
    n = max(int(n_train), 1)
    out: dict[str, Any] = {}
    why: dict[str, str] = {}

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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: Hyperparameter rules: name -> (test, what a valid value is). ``None`` is accepted where the "auto" preset
#: derives the value (AUTO_KEYS) or where the option is off (adv_bound, bn_refresh).
_RULES = {
    "lr": (lambda v: _num(v) and v > 0, "a positive number"),
    "batch_size": (lambda v: _whole(v) and v >= 2, "a whole number >= 2"),
    "max_epochs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "patience": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "min_epochs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "hidden": (lambda v: isinstance(v, list) and len(v) >= 1 and all(_whole(h) and h >= 1 for h in v),
               "a non-empty list of layer widths >= 1, e.g. [512, 132]"),
    "latent": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "fe_w_recon": (lambda v: _num(v) and v > 0, "a positive number"),
    "fe_w_adv": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "fe_w_center": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "fec_w_recon": (lambda v: _num(v) and v > 0, "a positive number"),
    "fec_w_adv": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "fec_w_class": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "re_w_recon": (lambda v: _num(v) and v > 0, "a positive number"),
    "re_w_batch": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "kl_weight": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "prior_sd": (lambda v: _num(v) and v > 0, "a positive number"),
    "kl_estimator": (lambda v: v in ("sample", "analytic"), "'sample' (reference) or 'analytic'"),
    "bn_momentum": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "adv_bound": (lambda v: v is None or (_num(v) and v > 0), "None or a positive number"),
    "adam_eps": (lambda v: _num(v) and v > 0, "a positive number"),
    "input_kind": (lambda v: v in ("auto", "counts", "lognorm"), "'auto', 'counts' or 'lognorm'"),
    "split_seed": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "split_fractions": (lambda v: isinstance(v, list) and len(v) == 3 and all(_num(f) and f >= 0 for f in v)
                        and v[0] > 0 and abs(sum(v) - 1.0) < 1e-6,
                        "three fractions (train, validation, test) >= 0 summing to 1, train > 0"),
    "train_fec": (lambda v: isinstance(v, bool), "True or False"),
    "bn_refresh": (lambda v: v is None or (_whole(v) and v >= 1), "None or a whole number >= 1"),
    "min_delta": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def validate_config(config: dict, error: type[Exception] = ValueError, where: str = "") -> dict:
    """Check every hyperparameter's type and range (``_RULES``); raise ``error`` naming the first bad
    entry, the value and what is valid. Integral floats (``latent=8.0``) are made ints. Returns ``config``."""
    for k, v in list(config.items()):
        if isinstance(v, float) and k in ("batch_size", "max_epochs", "patience", "min_epochs", "latent",
                                          "split_seed", "bn_refresh") and v.is_integer():
            config[k] = v = int(v)
        if k == "hidden" and isinstance(v, (list, tuple)):
            config[k] = v = [int(h) if isinstance(h, float) and h.is_integer() else h for h in v]
        rule = _RULES.get(k)
        if rule is None or (v is None and k in AUTO_KEYS):
            continue
        test, valid = rule
        try:
            ok = bool(test(v))
        except Exception:
            ok = False
        if not ok:
            raise error(f"{where}hyperparameter {k}={v!r} is invalid: it must be {valid}.")
    return config
