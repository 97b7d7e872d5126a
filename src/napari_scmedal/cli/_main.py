"""The ``scmedal`` parser and entry point: error handling and exit codes."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ScMEDALError
from . import demo, embed, evaluate, genomap, holdout, train
from ._common import PROG, _Console, _setup_runtime


def _common_options() -> argparse.ArgumentParser:
    """The options every command has (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--seed", type=int, default=0, help="random seed for training, sampling and layouts (default 0)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:0, mps or auto (default: auto = GPU when available)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages (errors still shown)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``scmedal`` argument parser: one subcommand per module of :mod:`napari_scmedal.cli`."""
    common = _common_options()
    p = argparse.ArgumentParser(
        prog=PROG,
        description="scMEDAL for single-cell data: train fixed/random-effects autoencoders, write latents, "
                    "genomaps of counterfactuals, metrics, and run the end-to-end demo.",
        epilog="Run 'scmedal COMMAND --help' for the options of one command. Same as 'python -m napari_scmedal'.",
    )
    from .. import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in (train, embed, genomap, evaluate, holdout, demo):
        command.add_parser(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scmedal`` with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 success, 1 a napari-scmedal error (its message on stderr, no traceback), 2 bad
        command line or no command, 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    con = _Console(quiet=args.quiet)
    try:
        _setup_runtime(args)
        return int(args.func(args, con) or 0)
    except ScMEDALError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
