"""Stratified train/validation/test splits in which every batch is seen in training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError


def stratified_split(
    batch,
    label=None,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 42,
) -> dict[str, np.ndarray]:
    """Split cell indices into ``{"train", "val", "test"}`` (sorted int64 arrays).

    Strata are batch x label (batch alone when ``label`` is None). Within each stratum of ``n``
    cells, shuffled with ``numpy.random.default_rng(seed)`` (strata visited in sorted order),
    ``round(n * f_val)`` cells go to validation, ``round(n * f_test)`` to test and the rest to
    training, with at least one training cell per stratum, so every batch (and every batch x label
    combination) is seen in training. The same inputs and seed give the same split.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0) or fr[0] <= 0:
        raise DataError(
            f"split_fractions={tuple(fractions)} must be three non-negative numbers (train, val, test) "
            "summing to 1 with a positive training fraction, e.g. (0.6, 0.2, 0.2)."
        )
    b = pd.Series(np.asarray(batch)).astype(str).to_numpy()
    if label is None:
        strata = b
    else:
        lab = pd.Series(np.asarray(label)).astype(str).to_numpy()
        strata = np.char.add(np.char.add(b.astype(str), "\x1f"), lab.astype(str))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    keys, inverse = np.unique(strata, return_inverse=True)
    for k in range(len(keys)):
        idx = np.flatnonzero(inverse == k)
        idx = idx[rng.permutation(idx.size)]
        n = idx.size
        n_val = int(round(n * fr[1]))
        n_test = int(round(n * fr[2]))
        while n - n_val - n_test < 1:  # keep at least one training cell
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64)
            for k, v in parts.items()}


__all__ = ["stratified_split"]
