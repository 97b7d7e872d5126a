"""Contrast limits of genomap images: one rule for comparisons, figures and lazy stacks.

Expression images get the 0.5th and 99.5th percentiles of their finite values (:data:`PERCENTILES`);
difference images get ``(-d, d)`` with ``d`` the 99.5th percentile of the absolute values, so zero is
the middle of a diverging colour map. Lazy stacks are never computed whole: :func:`stack_limits`
applies the same rule to a sample of their chunks.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import DataError

__all__ = ["PERCENTILES", "robust_limits", "stack_limits", "symmetric_limits"]

#: Lower and upper percentiles of the values that set an expression image's contrast.
PERCENTILES = (0.5, 99.5)


def _finite(arrays: Iterable, absolute: bool = False) -> np.ndarray:
    parts = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    vals = np.concatenate(parts) if parts else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    return np.abs(vals) if absolute else vals


def robust_limits(arrays: Iterable, percentiles=PERCENTILES) -> tuple[float, float]:
    """``(lo, hi)`` percentiles of the finite values of ``arrays``; the min and max when those are
    equal, and ``(v, v + 1)`` for constant data (``(0, 1)`` with no finite value)."""
    vals = _finite(arrays)
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, percentiles))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
        if not hi > lo:
            hi = lo + 1.0
    return lo, hi


def symmetric_limits(arrays: Iterable, q: float = PERCENTILES[1]) -> tuple[float, float]:
    """``(-d, d)``: ``d`` the ``q``-th percentile of the absolute finite values (their max when that is 0,
    and a tiny positive number for all-zero data)."""
    vals = _finite(arrays, absolute=True)
    d = float(np.percentile(vals, q)) if vals.size else 0.0
    if not d > 0:
        d = float(vals.max()) if vals.size else 0.0
    if not d > 0:
        d = 1e-6
    return -d, d


def stack_limits(stack, n_chunks: int = 3, percentiles=PERCENTILES, symmetric: bool = False,
                 seed: int = 0) -> tuple[float, float]:
    """Contrast limits of a lazy (dask) stack from ``n_chunks`` of its chunks (the first and random others).

    Parameters
    ----------
    stack
        A dask array ``(n_cells, rows, cols)`` such as :func:`~napari_scmedal.genomap.genomap_stack` returns.
    n_chunks
        Chunks computed for the estimate; the whole stack never is.
    percentiles
        As :func:`robust_limits`; with ``symmetric`` the upper one applies to the absolute values.
    symmetric
        Difference stacks: :func:`symmetric_limits`.
    seed
        Seeds the choice of chunks.

    Raises
    ------
    DataError
        For a stack without cells.
    """
    n_blocks = stack.numblocks[0]
    if n_blocks == 0 or stack.shape[0] == 0:
        raise DataError("the stack has no cells; build it on data with at least one cell.")
    rng = np.random.default_rng(seed)
    k = max(1, min(int(n_chunks), n_blocks))
    picks = [0] + sorted(rng.choice(np.arange(1, n_blocks), k - 1, replace=False).tolist()) if n_blocks > 1 else [0]
    values = [np.asarray(stack.blocks[i].compute()) for i in picks]
    return symmetric_limits(values, percentiles[1]) if symmetric else robust_limits(values, percentiles)
