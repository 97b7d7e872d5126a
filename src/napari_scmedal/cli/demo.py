"""``scmedal demo``: the end-to-end demo (:func:`napari_scmedal.demo.run_demo`) from the command line,
then napari with the results when a display is available."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ._common import _Console, _formats, _train_bars
from ._paths import _check_output_dir


def cmd_demo(args, con: _Console) -> int:
    from ..demo import run_demo

    out = _check_output_dir(args.out, [])
    formats = _formats(args.formats)
    res = run_demo(out, fast=args.fast, n_genes=args.genes, epochs=args.epochs, formats=formats, dpi=args.dpi,
                   seed=args.seed, device=args.device, threads=args.threads, con=con,
                   progress=_train_bars(enabled=not args.quiet))
    maybe_open_viewer(res.latents, res.model, res.overview, con, no_viewer=args.no_viewer, where=out)
    return 0


def _display_available() -> bool:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import importlib.util

    return importlib.util.find_spec("napari") is not None


def maybe_open_viewer(adata, model, comparison, con: _Console, no_viewer: bool = False, where=None) -> bool:
    """Open napari with the results when a display is available and ``no_viewer`` is False.

    Calls ``napari_scmedal._napari.launch.open_viewer(adata, model, comparison)`` (imported lazily,
    so the core never imports Qt or napari).  Returns True when the viewer was opened.
    """
    if no_viewer:
        return False
    if not _display_available():
        con.say("no display: skipping the napari viewer (the results are in the report)")
        return False
    try:
        from .._napari.launch import open_viewer
    except ImportError as exc:
        con.say(f"napari viewer not opened: the GUI launcher is unavailable ({exc}); open "
                f"{Path(where or '.') / 'latents.h5ad'} in napari instead")
        return False
    con.say("opening napari with the results (close the window to finish)")
    open_viewer(adata, model, comparison)
    return True


def add_parser(sub, common):
    """Add ``demo`` to the subcommands ``sub`` (``common``: the options every command has)."""
    d = sub.add_parser("demo", parents=[common], help="end-to-end demo on the bundled CellBench sample",
                       description="Train scMEDAL (default 'auto' preset: settings derived from the data) on the "
                                   "bundled CellBench sample, write latents, "
                                   "metrics, genomap panels per cell line, top genes, a Mann-Whitney example "
                                   "(CEL-seq2 vs Drop-seq) and report.html; then open napari when a display is "
                                   "available.")
    d.add_argument("--out", default="scmedal_demo", metavar="DIR", help="output folder (default ./scmedal_demo)")
    d.add_argument("--fast", action="store_true",
                   help="reduced mode for tests: fewer cells, 64 genes, at most 2 epochs per network (everything "
                        "still runs; expect training-health warnings)")
    d.add_argument("--genes", type=int, default=None, help="model genes (default 1024 = 32 x 32 genomaps)")
    d.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                   help="maximum epochs per network (default: derived from the data by the 'auto' preset)")
    d.add_argument("--formats", default="png", help="figure formats, comma-separated (default png)")
    d.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150)")
    d.add_argument("--no-viewer", action="store_true", help="do not open napari at the end")
    d.set_defaults(func=cmd_demo)
    return d
