"""What every ``scmedal`` command shares: messages, list options, the runtime setup, reading the model
and the data, and the training progress bar."""
from __future__ import annotations

import sys

from ..progress import Console, ProgressBars
from ..report import report_health
from ._paths import UsageError, _existing_file

PROG = "scmedal"
FORMATS = ("png", "svg", "pdf", "tif", "tiff")


class _Console(Console):
    """``[scmedal] message`` lines on stderr; ``quiet`` (``-q``) silences all but warnings."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet, prefix=PROG)


def _data_options(parser, backed_help: str) -> None:
    """The options every command that reads cells for a trained model shares: ``--layer``,
    ``--size-factor-key`` and ``--backed`` (whose help says what reading backed does for that command)."""
    parser.add_argument("--layer", default=None, help="use this layer instead of X")
    parser.add_argument("--size-factor-key", default=None, metavar="OBS_COLUMN",
                        help="obs column of per-cell total counts, used as library sizes instead of the sum over "
                             "the model's normalisation genes (for count data lacking some of them)")
    parser.add_argument("--backed", action="store_true", help=backed_help)


def _split_list(values) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in str(v).split(",") if x.strip())
    return out


def _formats(text) -> list[str]:
    fmts = [f.lower().lstrip(".") for f in _split_list([text])]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"Unknown figure format(s) {bad or text!r}; use any of {', '.join(FORMATS)}.")
    return fmts


def _train_bars(enabled: bool) -> ProgressBars:
    """The training progress bar on stderr (tqdm), one per run, restarted for each network."""
    return ProgressBars(enabled=enabled, file=sys.stderr, leave=True, dynamic_ncols=True)


def _setup_runtime(args) -> None:
    import numpy as np

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1 (got {args.threads}).")
        import torch

        torch.set_num_threads(int(args.threads))
    np.random.seed(args.seed % (2**32))
    if args.device is not None and args.device != "auto":
        import torch

        try:
            torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"Unknown --device {args.device!r}; use cpu, cuda, cuda:N, mps or auto.") from None


def _load_model(path, args, health: bool = True):
    """The model file (``health``: print WARNING lines for the training-health problems stored in it)."""
    from ..model import ScMEDAL

    p = _existing_file(path, "model file")
    model = ScMEDAL.load(p, device=args.device, threads=args.threads)
    model.size_factor_key = getattr(args, "size_factor_key", None)
    quiet = _Console(quiet=True)
    if health and report_health(model.health, quiet, full=False):
        quiet.warn(f"{p.name} was saved with the training-health problems above; its outputs may be unreliable "
                   "('scmedal evaluate' shows its health).")
    return model, p


def _read_data(path, layer=None, backed: bool = False):
    """The data file in memory, or opened backed (read-only; the matrix stays on disk and is read in
    blocks by the model) with ``backed=True``."""
    from ..data import read_h5ad

    p = _existing_file(path, "data file")
    if not backed:
        return read_h5ad(p, layer=layer), p
    if layer is not None:
        raise UsageError("--layer cannot be combined with --backed: the model reads the layer it was trained on.")
    return read_h5ad(p, backed=True), p
