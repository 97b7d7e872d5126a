"""The command line's input and output checks: inputs exist, outputs are writable and never an input.

Every check fails before any work starts (not after hours of training) with a :class:`UsageError` that
says what is wrong and how to fix it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .._utils import check_writable_folder
from ..errors import ScMEDALError


class UsageError(ScMEDALError, ValueError):
    """A command-line request that cannot be carried out as given (e.g. output over an input)."""


def _existing_file(path, what: str) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise UsageError(f"The {what} {str(p)!r} does not exist. Check the path.")
    if p.is_dir():
        raise UsageError(f"The {what} {str(p)!r} is a folder; give the path of the file itself.")
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output_file(out, inputs: Sequence[Path], what: str) -> Path:
    o = Path(os.fspath(out)).expanduser()
    for i in inputs:
        if o.resolve() == Path(i).resolve() or _same_file(o, Path(i)):
            raise UsageError(
                f"The {what} {str(o)!r} is one of the inputs; inputs are never overwritten. "
                "Choose another output path."
            )
    if o.exists() and o.is_dir():
        raise UsageError(f"The {what} {str(o)!r} is a folder; give a file name.")
    check_writable_folder(o.parent, UsageError, f"folder of the {what}")  # fail now, not after training
    return o


def _check_output_dir(out, inputs: Sequence[Path]) -> Path:
    o = Path(os.fspath(out)).expanduser()
    if o.exists() and not o.is_dir():
        raise UsageError(f"The output folder {str(o)!r} exists and is a file. Choose a folder path.")
    for i in inputs:
        ip = Path(i).resolve()
        if o.resolve() == ip:
            raise UsageError(f"The output folder {str(o)!r} is an input file. Choose another folder.")
    return check_writable_folder(o, UsageError, "output folder")  # fail now, not after hours of training
