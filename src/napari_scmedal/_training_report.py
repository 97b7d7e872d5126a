"""Plain-text reports of a training run, shared by the ``scmedal`` command and the napari model widget.

Formatting only (no Qt, no science): these read what the core recorded after ``ScMEDAL.train`` --
``model.derived`` (the settings the run used and why), ``model.history`` (how each network stopped) and
``model.health`` (:mod:`napari_scmedal.models.health`; also stored in the model file).
"""

from __future__ import annotations

__all__ = ["STOP_REASONS", "settings_lines", "settings_summary", "stop_lines", "health_lines",
           "health_problems", "health_state"]

#: How a network's training ended (``history[kind]["stopped"]``), in words.
STOP_REASONS = {
    "early_stopping": "early stopping (validation loss stopped improving)",
    "max_epochs": "reached max epochs",
    "max_time": "time cap reached (best weights kept)",
    "cancelled": "cancelled (best weights kept)",
    "nonfinite": "non-finite loss",
}
_ORDER = ("batch_size", "lr", "max_epochs", "patience", "min_epochs", "steps_per_epoch")


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def settings_lines(derived: dict | None) -> list[str]:
    """One line per setting the last ``train()`` used, value and reason:
    ``batch_size = 32  (derived: 845 training cells / ...)`` or ``max_epochs = 2  (given)``."""
    if not derived:
        return []
    s, why = derived.get("settings") or {}, derived.get("reasons") or {}
    keys = [k for k in _ORDER if k in s] + [k for k in s if k not in _ORDER]
    return [f"{k} = {_value(s[k])}  ({why.get(k, 'given')})" for k in keys]


def settings_summary(derived: dict | None) -> str:
    """Compact one-liner, e.g. ``auto preset, 845 training cells: batch 32, lr 0.001, epochs <= 500 (min 23),
    patience 15``; ``""`` when nothing was recorded (model files saved before the settings were)."""
    if not derived or not derived.get("settings"):
        return ""
    s = derived["settings"]
    parts = []
    if "batch_size" in s:
        parts.append(f"batch {s['batch_size']}")
    if "lr" in s:
        parts.append(f"lr {_value(s['lr'])}")
    if "max_epochs" in s:
        parts.append(f"epochs <= {s['max_epochs']}" + (f" (min {s['min_epochs']})" if s.get("min_epochs") else ""))
    if "patience" in s:
        parts.append(f"patience {s['patience']}")
    head = f"{derived.get('preset', '?')} preset"
    if derived.get("n_train") is not None:
        head += f", {derived['n_train']} training cells"
    return f"{head}: " + ", ".join(parts)


def stop_lines(history: dict | None) -> list[str]:
    """``FE: 12 epochs, best epoch 7, stopped: early stopping (...)`` for every network in ``history``."""
    out = []
    for kind, h in (history or {}).items():
        if not isinstance(h, dict) or "epochs" not in h:
            continue
        n = len(h.get("epochs") or [])
        stopped = str(h.get("stopped"))
        reason = STOP_REASONS.get(stopped, stopped)
        out.append(f"{kind.upper()}: {n} epoch{'' if n == 1 else 's'}, best epoch {h.get('best_epoch')}, "
                   f"stopped: {reason}")
    return out


def health_lines(health: dict | None) -> list[str]:
    """One line per network with its measurements and state (``FE ok: gene-mean R^2 0.98, ...``,
    ``RE PROBLEM: ...``, ``FE: not checked (...)``); the problems themselves are in :func:`health_problems`."""
    from .models.health import format_health

    return [format_health({k: h})[0] for k, h in (health or {}).items() if isinstance(h, dict)]


def health_problems(health: dict | None) -> list[str]:
    """Every problem of every network as ``"FE: <sentence naming the problem and the fix>"``."""
    return [f"{k.upper()}: {p}" for k, h in (health or {}).items() if isinstance(h, dict)
            for p in h.get("problems") or []]


def health_state(health: dict | None) -> str:
    """``"problem"`` (some network has problems), ``"not checked"`` (a model file saved before the checks),
    ``"ok"``, or ``"none"`` (no network trained)."""
    hs = [h for h in (health or {}).values() if isinstance(h, dict)]
    if not hs:
        return "none"
    if any(h.get("problems") or h.get("ok") is False for h in hs):
        return "problem"
    if any(h.get("status") == "not checked" or h.get("ok") is None for h in hs):
        return "not checked"
    return "ok"
