"""Telling the user how a long task goes: one progress bar fed by the core's progress callbacks, and
console messages.

:class:`ProgressBars` is the ``progress`` callable given to :meth:`napari_scmedal.ScMEDAL.train` (one
dict per epoch: ``{"model", "epoch", "max_epochs", "train", "val", "last_epoch", ...}``) and to
:func:`napari_scmedal.data.stream.stream_prepare` (one dict per block: ``{"pass", "done", "total"}``).
It keeps ONE bar of the class it is given, restarted (count, total, description) whenever the network
or the streaming pass changes, so a front end shows a single bar for a whole run: the CLI passes
``tqdm``, the napari widgets ``napari.utils.progress`` (a tqdm subclass).  Imports neither Qt nor
napari (the bar class is a parameter; tqdm is imported only when none is given).

:class:`Console` prints a task's one-line messages (``say``) and warnings (``warn``) on stderr, for the
command line and :func:`napari_scmedal.demo.run_demo`.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Console", "ProgressBars"]


class ProgressBars:
    """A progress callback that drives one reusable bar.

    Parameters
    ----------
    bar_cls : callable, optional
        The bar class, tqdm-like: ``bar_cls(total=..., desc=..., unit=..., **bar_kwargs)`` returns an
        object with ``n``, ``total``, ``update(k)``, ``reset()``, ``set_description(text)``,
        ``set_postfix_str(text, refresh=False)`` and ``close()``. Default: ``tqdm.auto.tqdm``.
    enabled : bool
        False: every call does nothing (no bar is created), e.g. for ``--quiet``.
    desc : str
        Description of a training bar; ``{model}`` is replaced by the network's name in capitals.
    stream_desc : str
        Description of a streaming-pass bar; ``{pass}`` is replaced by the pass number.
    total_key : str
        The key of a training dict that gives the bar's total: ``"max_epochs"`` (the cap; default) or
        ``"last_epoch"`` (the epoch early stopping is expected at, which moves with a new best; falls back
        to ``"max_epochs"``). The total is updated whenever it changes.
    postfix : bool
        Show the latest loss (validation, else training) after the bar.
    **bar_kwargs
        More arguments of ``bar_cls`` (e.g. ``file=sys.stderr, leave=True``).

    Attributes
    ----------
    bar : the current bar, or None before the first call and after :meth:`close`.
    """

    def __init__(self, bar_cls: Callable[..., Any] | None = None, enabled: bool = True,
                 desc: str = "train {model}", stream_desc: str = "read pass {pass}/2",
                 total_key: str = "max_epochs", postfix: bool = True, **bar_kwargs):
        self.bar_cls = bar_cls
        self.enabled = bool(enabled)
        self.desc = desc
        self.stream_desc = stream_desc
        self.total_key = total_key
        self.postfix = postfix
        self.bar_kwargs = bar_kwargs
        self.bar = None
        self._key: tuple | None = None

    def __call__(self, info: dict) -> None:
        """Show one progress dict (training epoch or streaming block); other dicts (e.g. the holdout's
        ``{"stage": "pair", ...}``) are ignored."""
        if not self.enabled or not isinstance(info, dict) or info.get("stage", "train") != "train":
            return
        if "model" in info:
            name = str(info.get("model", "?"))
            epoch = info.get("epoch")
            total = info.get(self.total_key) or info.get("max_epochs")
            self._show(("model", name), self.desc.format(model=name.upper()), "epoch",
                       int(total or 0) or None, epoch, _loss_text(info) if self.postfix else None)
        elif "pass" in info:
            p = info["pass"]
            self._show(("pass", p), self.stream_desc.format(**{"pass": p}), "block",
                       int(info.get("total") or 0) or None, info.get("done"))

    def close(self) -> None:
        """Close the bar (the next call opens a new one)."""
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self._key = None

    # ------------------------------------------------------------------------------------------
    def _show(self, key: tuple, desc: str, unit: str, total: int | None, count, postfix: str | None = None) -> None:
        bar = self.bar
        if bar is None:
            bar = self.bar = self._new_bar(total=total, desc=desc, unit=unit, **self.bar_kwargs)
        elif key != self._key:  # the next network or pass: the same bar, restarted
            bar.set_postfix_str("", refresh=False)
            bar.unit = unit
            bar.total = total
            bar.reset()
            bar.set_description(desc)
        elif total != bar.total:
            bar.total = total
        self._key = key
        if postfix:  # shown by the update below
            bar.set_postfix_str(postfix, refresh=False)
        step = int(bar.n if count is None else count) - bar.n
        if step > 0:
            bar.update(step)

    def _new_bar(self, **kwargs):
        bar_cls = self.bar_cls
        if bar_cls is None:
            from tqdm.auto import tqdm as bar_cls
        return bar_cls(**kwargs)


def _loss_text(info: dict) -> str | None:
    """``"val loss 0.123"`` (else the training loss) of a training progress dict, or None."""
    val = info.get("val") or {}
    tr = info.get("train") or {}
    loss = val.get("total", tr.get("total"))
    if loss is None:
        return None
    return f"{'val' if 'total' in val else 'train'} loss {float(loss):.4g}"


class Console:
    """Messages of a long task on stderr, as ``[PREFIX] message`` lines.

    Parameters
    ----------
    quiet : bool
        Silence :meth:`say` (warnings are still printed).
    prefix : str
        The name in brackets at the start of each line.
    """

    def __init__(self, quiet: bool = False, prefix: str = "scmedal"):
        self.quiet = quiet
        self.prefix = prefix

    def say(self, msg: str) -> None:
        """Print an information line unless ``quiet``."""
        if not self.quiet:
            print(f"[{self.prefix}] {msg}", file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        """Print a warning the user must see: even when ``quiet`` (like errors)."""
        print(f"[{self.prefix}] WARNING: {msg}", file=sys.stderr, flush=True)
