"""The ``scmedal`` command: train, embed, genomap, evaluate, holdout and the end-to-end demo.

Every subcommand is a thin layer over the core (:class:`~napari_scmedal.ScMEDAL`,
:mod:`~napari_scmedal.compare`, :mod:`~napari_scmedal.analysis`, :mod:`~napari_scmedal.figures`,
:mod:`~napari_scmedal.metrics`, :mod:`~napari_scmedal.demo`): what the command line does, Python and
the napari widgets can do too.  Bad input ends with the core's message (what is wrong and how to fix
it) on stderr and a non-zero exit code, without a traceback.  Outputs are written atomically
(temporary file, then ``os.replace``) and never over an input file.  ``python -m napari_scmedal`` is
the same command.

Exit codes: 0 success, 1 a napari-scmedal error (bad input, failed training...), 2 bad command
line (argparse), 130 interrupted.

Modules: :mod:`._main` (the parser and :func:`main`), :mod:`._paths` (input and output checks),
:mod:`._common` (what the commands share) and one module per command (``train``, ``embed``,
``genomap``, ``evaluate``, ``holdout``, ``demo``), each with its ``cmd_*`` function and its
``add_parser``.
"""
from __future__ import annotations

# names the tests reach through the package (the writers and reports live in napari_scmedal.report)
from ..report import report_health  # noqa: F401
from ._common import _Console  # noqa: F401
from ._main import build_parser, main
from ._paths import UsageError
from .demo import maybe_open_viewer  # noqa: F401

__all__ = ["UsageError", "build_parser", "main"]
