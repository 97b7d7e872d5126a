"""Choosing cells: by obs values (groups), by indices, names or masks, and seeded subsamples.

One rule each, used by the GUI, the CLI, comparisons, metrics and embeddings:

* :func:`parse_group` / :func:`select_cells`: ``"cell_line=A549,batch=b1"`` -> the matching cells;
* :func:`resolve_cells`: int positions, a boolean mask or obs names -> int positions;
* :func:`parse_indices`: typed text (``"0, 12, 40"``, or names) -> positions or names;
* :func:`subsample`: all rows, or a seeded sorted sample of ``size`` rows;
* :func:`limit_cells`: at most ``max_cells`` of chosen cells, a seeded sample (never "the first N", which
  would favour whatever order the file happens to have);
* :func:`stratified_subsample`: about ``n`` cells spread evenly over the values of an obs column.

Pure core: numpy and pandas only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["limit_cells", "parse_group", "parse_indices", "resolve_cells", "select_cells", "stratified_subsample",
           "subsample"]


def subsample(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Row positions ``0..n-1``: all of them when ``size`` is None or at least ``n``, else a seeded,
    sorted sample of ``size`` without replacement."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(size), replace=False))


def limit_cells(idx, max_cells: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_cells`` of the cell positions ``idx`` (a seeded sample, kept in order)."""
    idx = np.asarray(idx, dtype=np.int64)
    return idx[subsample(idx.size, max_cells, seed)]


def stratified_subsample(obs: pd.DataFrame, key: str, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of about ``n`` cells, ``n // groups`` (at least 1) from each value of ``obs[key]``
    (all of a smaller group)."""
    rng = np.random.default_rng(seed)
    codes = obs[key].astype(str).to_numpy()
    groups = sorted(set(codes))
    per = max(1, int(n) // max(len(groups), 1))
    idx: list[int] = []
    for g in groups:
        where = np.flatnonzero(codes == g)
        idx.extend(rng.choice(where, min(per, where.size), replace=False).tolist())
    return np.sort(np.asarray(idx, dtype=np.int64))


def parse_indices(values) -> list:
    """Cells typed by a user: ``"0, 12; 40"`` (or a list of such strings) -> ``[0, 12, 40]``; names
    (anything not an integer) are kept as strings, and then every entry is a string.

    Raises
    ------
    DataError
        When nothing is given.
    """
    if isinstance(values, str):
        values = [values]
    out: list = []
    for v in values or []:
        for t in str(v).replace(";", ",").replace(" ", ",").split(","):
            t = t.strip()
            if t:
                out.append(int(t) if t.lstrip("-").isdigit() else t)
    if not out:
        raise DataError("No cell given: type one or more cell indices or names, e.g. 0, 12, 40.")
    if all(isinstance(v, int) for v in out):
        return out
    return [str(v) for v in out]


def _obs_of(adata_or_obs) -> pd.DataFrame:
    obs = getattr(adata_or_obs, "obs", adata_or_obs)
    if not isinstance(obs, pd.DataFrame):
        raise DataError("select_cells needs an AnnData or its .obs DataFrame.")
    return obs


def parse_group(text: str | Mapping[str, Any] | None) -> dict[str, list[str]]:
    """``"cell_line=A549,batch=b1"`` (or ``;``-separated, values joined with ``|`` for several)
    -> ``{"cell_line": ["A549"], "batch": ["b1"]}``.  A mapping is normalised the same way."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for part in str(text).replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise DataError(
                    f"Cannot read the group {text!r}: each part must be KEY=VALUE, e.g. "
                    "'cell_line=A549,batch=CELseq2_3cl' (join several values with '|')."
                )
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    out: dict[str, list[str]] = {}
    for k, v in items:
        vals = [str(x) for x in v] if isinstance(v, (list, tuple, set, np.ndarray)) else str(v).split("|")
        out.setdefault(str(k), []).extend(x.strip() for x in vals if str(x).strip())
    return out


def select_cells(adata_or_obs, group: Mapping[str, Any] | str | None = None, **criteria) -> np.ndarray:
    """Integer indices of the cells whose obs match every ``key=value`` of ``group``.

    ``select_cells(adata, {"cell_line": "A549", "batch": "CELseq2_5cl_p1"})``; a value may be a
    list (any of them matches); keyword arguments are merged into ``group``.
    """
    obs = _obs_of(adata_or_obs)
    crit = parse_group(group)
    for k, v in parse_group(criteria).items():
        crit.setdefault(k, []).extend(v)
    mask = np.ones(len(obs), dtype=bool)
    for key, values in crit.items():
        if key not in obs.columns:
            raise DataError(
                f"There is no obs column {key!r} to select cells by. Available columns: "
                f"{list(map(str, obs.columns))}."
            )
        col = obs[key].astype(str).to_numpy()
        hit = np.isin(col, values)
        if not hit.any():
            avail = sorted(set(col))
            shown = avail[:20] + (["..."] if len(avail) > 20 else [])
            raise DataError(f"No cell has {key} in {values}. Values of {key!r}: {shown}.")
        mask &= hit
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise DataError(f"No cell matches all of {crit} together. Loosen the selection (fewer criteria).")
    return idx


def resolve_cells(cells, obs_names: Sequence[str]) -> np.ndarray:
    """Int indices from int indices, a boolean mask or obs names (a single one is fine)."""
    n = len(obs_names)
    if cells is None:
        raise DataError("Choose at least one cell (an index, a boolean mask or obs names).")
    if isinstance(cells, (str, bytes, int, np.integer)):
        cells = [cells]
    arr = np.asarray(list(cells) if not isinstance(cells, np.ndarray) else cells)
    if arr.size == 0:
        raise DataError("The cell selection is empty; choose at least one cell.")
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise DataError(f"A boolean cell mask must have one entry per cell ({n}); got {arr.shape[0]}.")
        idx = np.flatnonzero(arr)
        if idx.size == 0:
            raise DataError("The boolean cell mask selects no cell; choose at least one.")
        return idx
    if np.issubdtype(arr.dtype, np.integer):
        idx = arr.astype(np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise DataError(f"Cell index {int(bad[0])} is out of range: there are {n} cells (0 to {n - 1}).")
        return np.where(idx < 0, idx + n, idx)
    names = pd.Index([str(x) for x in obs_names])
    pos = names.get_indexer([str(x) for x in arr.ravel()])
    if (pos < 0).any():
        missing = [str(x) for x, p in zip(arr.ravel(), pos) if p < 0]
        raise DataError(
            f"Unknown cell name(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}: not in the "
            "data's obs_names. Use obs names, integer positions or a boolean mask."
        )
    return pos.astype(np.int64)
