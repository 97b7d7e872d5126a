"""Compare a cell's versions in genomap images: the single place where that science lives.

:func:`compare_cells` builds, for chosen cells (or one averaged group of cells), the genomap
images of

* ``"Original"`` -- the cell's own expression (log1p-normalised, the recipe's genes),
* ``"FE reconstruction"`` and ``"RE reconstruction"``,
* ``"Counterfactual -> <b>"`` for every target batch ``b`` (the RE autoencoder run with the
  cell's batch replaced by ``b``),

and the differences ``"FE - Original"``, ``"Counterfactual -> <b> - Original"`` and
``"Counterfactual -> <b> - Counterfactual -> own batch"``.  The result, a :class:`Comparison`,
also carries one shared contrast range for all expression images, symmetric limits for all
difference images, each row's own batch and label, row titles, and the genes varying most
across the counterfactual batches.  The GUI, the CLI and the demo all use it; the figures
(:mod:`napari_scmedal.figures`) and analyses (:mod:`napari_scmedal.analysis`) read it.

Pure core: no Qt, no napari.
"""
from __future__ import annotations

import math
import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ._utils import atomic_output
from .analysis import rank_pixels, spread_image, top_varying_genes
from .errors import DataError, LayoutError

__all__ = [
    "ORIGINAL",
    "FE_RECON",
    "RE_RECON",
    "FE_MINUS_ORIGINAL",
    "counterfactual_name",
    "cf_minus_original_name",
    "cf_minus_own_name",
    "Comparison",
    "compare_cells",
    "stack_comparisons",
    "select_cells",
    "parse_group",
    "resolve_cells",
    "ensure_layout",
    "zscore_reference",
]

ORIGINAL = "Original"
FE_RECON = "FE reconstruction"
RE_RECON = "RE reconstruction"
FE_MINUS_ORIGINAL = "FE - Original"
OWN_BATCH = "own batch"
SCALES = ("log1p", "zscore")
_CHUNK_ROWS = 65536  # model rows (cells x versions) computed at once


def counterfactual_name(batch: str) -> str:
    """Name of the counterfactual image for target batch ``batch``."""
    return f"Counterfactual -> {batch}"


def cf_minus_original_name(batch: str) -> str:
    return f"{counterfactual_name(batch)} - {ORIGINAL}"


def cf_minus_own_name(batch: str) -> str:
    return f"{counterfactual_name(batch)} - Counterfactual -> {OWN_BATCH}"


# ----------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Genomap images of chosen cells (or one averaged group) in every version.

    Attributes
    ----------
    images : dict name -> ``(n_rows, rows, cols)`` float32, in display order (expression images
        first: Original, FE, RE, counterfactuals; then differences).  NaN on empty pixels.
    kinds : dict name -> ``"expression"`` | ``"difference"``.
    expression_limits : ``(lo, hi)`` shared by every expression image (one colour scale).
    difference_limits : ``(-d, d)`` shared by every difference image (centred colour scale).
    batches : the target batches, in order.
    row_batches, row_labels : each row's own batch / label (``None`` when a group mixes several).
    row_titles : a title per row.
    row_cells : obs names of the cell(s) behind each row.
    top_genes : DataFrame ``row, rank, gene, row_px, col_px, spread`` -- per row, the genes whose
        pixel varies most across the counterfactual batches (empty with fewer than 2 batches).
    top_genes_overall : DataFrame ``rank, gene, row_px, col_px, spread`` -- the same for the
        per-pixel spread averaged over rows.
    layout : the :class:`GenomapLayout` used.
    scale : ``"log1p"`` or ``"zscore"``; ``units`` says what the pixel values are.
    averaged : whether the selected cells were averaged into one row.
    """

    images: dict[str, np.ndarray]
    kinds: dict[str, str]
    expression_limits: tuple[float, float]
    difference_limits: tuple[float, float]
    batches: list[str]
    row_batches: list[str | None]
    row_labels: list[str | None]
    row_titles: list[str]
    row_cells: list[list[str]]
    top_genes: pd.DataFrame
    top_genes_overall: pd.DataFrame
    layout: Any
    scale: str = "log1p"
    averaged: bool = False
    units: str = "log1p-normalised expression"
    meta: dict = field(default_factory=dict)

    # -- convenience -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.images)

    @property
    def n_rows(self) -> int:
        return int(next(iter(self.images.values())).shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        a = next(iter(self.images.values()))
        return int(a.shape[1]), int(a.shape[2])

    def names_of_kind(self, kind: str) -> list[str]:
        return [n for n, k in self.kinds.items() if k == kind]

    def limits_for(self, name: str) -> tuple[float, float]:
        return self.expression_limits if self.kinds[name] == "expression" else self.difference_limits

    def counterfactual_stack(self, batches: Sequence[str] | None = None) -> np.ndarray:
        """``(n_rows, n_batches, rows, cols)`` counterfactual images."""
        batches = self.batches if batches is None else list(batches)
        return np.stack([self.images[counterfactual_name(b)] for b in batches], axis=1)

    def own_batch_column(self, row: int) -> str | None:
        b = self.row_batches[row]
        return counterfactual_name(b) if b is not None else None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays with file-safe keys (for ``np.savez``), plus ``names``/``kinds``."""
        out: dict[str, np.ndarray] = {}
        for i, img in enumerate(self.images.values()):
            out[f"image_{i:03d}"] = img
        out["names"] = np.array(self.names, dtype=str)
        out["kinds"] = np.array([self.kinds[n] for n in self.names], dtype=str)
        out["row_titles"] = np.array(self.row_titles, dtype=str)
        out["row_batches"] = np.array([b or "" for b in self.row_batches], dtype=str)
        out["expression_limits"] = np.array(self.expression_limits, dtype=np.float64)
        out["difference_limits"] = np.array(self.difference_limits, dtype=np.float64)
        return out

    def save_npz(self, path) -> str:
        """Write every image plus names, kinds, titles and limits to one ``.npz`` (atomic)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        with atomic_output(path) as tmp:
            np.savez_compressed(tmp, **self.to_arrays())
        return path


# ----------------------------------------------------------------------------------------------
# selecting cells
# ----------------------------------------------------------------------------------------------
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
        items = text.items()
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
            raise DataError(
                f"No cell has {key} in {values}. Values of {key!r}: {shown}."
            )
        mask &= hit
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise DataError(
            f"No cell matches all of {crit} together. Loosen the selection (fewer criteria)."
        )
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
            raise DataError(
                f"A boolean cell mask must have one entry per cell ({n}); got {arr.shape[0]}."
            )
        idx = np.flatnonzero(arr)
        if idx.size == 0:
            raise DataError("The boolean cell mask selects no cell; choose at least one.")
        return idx
    if np.issubdtype(arr.dtype, np.integer):
        idx = arr.astype(np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise DataError(
                f"Cell index {int(bad[0])} is out of range: there are {n} cells (0 to {n - 1})."
            )
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


# ----------------------------------------------------------------------------------------------
# model access (against the contract in docs/architecture.md)
# ----------------------------------------------------------------------------------------------
def _training_adata(model):
    getter = getattr(model, "_training_adata", None)
    if callable(getter):
        return getter(None)  # raises DataError with its fix for a loaded model
    for attr in ("adata", "_adata"):
        a = getattr(model, attr, None)
        if a is not None:
            return a
    raise DataError(
        "This model does not hold its training data (for example it was loaded from a file). "
        "Pass the cells' AnnData with adata=..."
    )


def _layout_genes_index(layout, genes: Sequence[str]) -> np.ndarray:
    """Column index into ``genes`` for each layout gene (the layout's own order)."""
    g = pd.Index([str(x) for x in genes])
    pos = g.get_indexer([str(x) for x in layout.genes])
    if (pos < 0).any():
        missing = [str(x) for x, p in zip(layout.genes, pos) if p < 0][:5]
        raise LayoutError(
            f"The genomap layout has genes the model does not use ({missing} ...). Use the "
            "model's own layout (model.layout) or recompute it with ensure_layout(model, force=True)."
        )
    return pos


def default_shape(n_genes: int) -> tuple[int, int]:
    """Genomap grid used when none is given: the smallest square that fits, less any empty rows."""
    side = int(math.ceil(math.sqrt(n_genes)))
    rows = side
    cols = side
    while (rows - 1) * cols >= n_genes:
        rows -= 1
    return rows, cols


def ensure_layout(model, adata=None, layout=None, shape=None, seed: int = 0, max_cells: int = 2000,
                  force: bool = False):
    """Return the model's genomap layout, computing it once and attaching it if missing.

    ``layout`` given: it is attached and returned.  Otherwise ``model.layout`` is used when
    present (and ``force`` is False); else a layout is computed with Gromov-Wasserstein on the
    log1p expression of up to ``max_cells`` cells of ``adata`` (default: the model's training
    data) and stored as ``model.layout`` so every later view shares it.
    """
    if layout is not None:
        _layout_genes_index(layout, model.genes)
        _attach_layout(model, layout)
        return layout
    existing = getattr(model, "layout", None)
    if existing is not None and not force:
        return existing
    from .genomap import compute_layout

    if adata is None and hasattr(model, "n_cells") and hasattr(model, "_prepare"):
        # the model's own cells (in memory or on disk): transform only the sampled ones
        n = model.n_cells()
        rows = np.arange(n)
        if n > max_cells:
            rows = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
        X = np.asarray(model._prepare(None, lazy=True).subset(rows).X_log, dtype=np.float32)
    else:
        source = adata if adata is not None else _training_adata(model)
        n = source.n_obs
        if n > max_cells:  # sample the cells first, so only they are read and transformed
            source = source[np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))]
        X = np.asarray(model.recipe.transform(source).X_log, dtype=np.float32)
    genes = list(model.genes)
    shape = tuple(shape) if shape is not None else default_shape(len(genes))
    layout = compute_layout(X, shape=shape, genes=genes, seed=seed)
    _attach_layout(model, layout)
    return layout


def _attach_layout(model, layout) -> None:
    try:
        model.layout = layout
    except AttributeError:  # read-only property: try the conventional setter
        setter = getattr(model, "set_layout", None)
        if setter is None:
            raise
        setter(layout)
    _ZSCORE_CACHE.pop(model, None)


def _predict_versions(model, sub, batches: Sequence[str]) -> dict[str, np.ndarray]:
    """Original (log1p), FE and RE reconstructions and counterfactuals for ``sub``'s cells,
    all ``(n_cells, n_genes)`` in log1p units in the model's gene order.

    Uses the model's batched fast path when it offers one (``predict_versions``), otherwise the
    public per-version API.
    """
    fast = getattr(model, "predict_versions", None)
    if callable(fast):
        return fast(sub, batches)
    prepared = model.recipe.transform(sub)
    out = {
        "original": np.asarray(prepared.X_log, dtype=np.float32),
        "fe": np.asarray(model.get_reconstruction("fe", adata=sub), dtype=np.float32),
        "re": np.asarray(model.get_reconstruction("re", adata=sub), dtype=np.float32),
        "batch": np.asarray(prepared.batch),
    }
    for b in batches:
        out[f"cf:{b}"] = np.asarray(model.get_counterfactual_expression(b, adata=sub), dtype=np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# z-score reference (METHOD.md section 5), cached per model
# ----------------------------------------------------------------------------------------------
_ZSCORE_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _reference_cells(obs: pd.DataFrame, batch_key: str, label_key: str | None, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` cells with at least one per batch x label present (reference sampling)."""
    rng = np.random.default_rng(seed)
    keys = obs[batch_key].astype(str)
    if label_key is not None and label_key in obs.columns:
        keys = keys + "\x00" + obs[label_key].astype(str)
    keys = keys.to_numpy()
    must = []
    for k in pd.unique(keys):
        where = np.flatnonzero(keys == k)
        must.append(int(rng.choice(where)))
    must = np.array(sorted(set(must)), dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(obs)), must)
    extra = max(0, n - must.size)
    if extra and rest.size:
        must = np.concatenate([must, rng.choice(rest, min(extra, rest.size), replace=False)])
    return np.sort(must)


def zscore_reference(model, adata=None, n_cells: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and std over the reference stack (input, FE, RE and every counterfactual
    for up to ``n_cells`` cells, at least one per batch x label), computed once and cached on
    the model.  Zero-variance genes get std = inf, so their z-score is 0."""
    key = ("zscore", int(n_cells), int(seed))
    cache = _ZSCORE_CACHE.get(model)
    if cache is not None and key in cache:
        return cache[key]
    source = adata if adata is not None else _training_adata(model)
    recipe = model.recipe
    idx = _reference_cells(source.obs, recipe.batch_key, recipe.label_key, n_cells, seed)
    sub = source[idx]
    v = _predict_versions(model, sub, list(model.batches))
    stack = [v["original"], v["fe"], v["re"]] + [v[f"cf:{b}"] for b in model.batches]
    allrows = np.concatenate(stack, axis=0).astype(np.float64)
    mean = allrows.mean(axis=0)
    std = allrows.std(axis=0)
    std[std <= 1e-12] = np.inf
    res = (mean.astype(np.float32), std.astype(np.float32))
    try:
        _ZSCORE_CACHE.setdefault(model, {})[key] = res
    except TypeError:  # model not weak-referenceable: no caching
        pass
    return res


# ----------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------
def _robust_limits(arrays: Iterable[np.ndarray], lo_q=0.5, hi_q=99.5) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [lo_q, hi_q])
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def _symmetric_limit(arrays: Iterable[np.ndarray], q=99.5) -> tuple[float, float]:
    vals = np.concatenate([np.abs(np.asarray(a, dtype=np.float64)).ravel() for a in arrays] or [np.zeros(1)])
    vals = vals[np.isfinite(vals)]
    d = float(np.percentile(vals, q)) if vals.size else 0.0
    if not d > 0:
        d = float(vals.max()) if vals.size else 0.0
    if not d > 0:
        d = 1e-6
    return -d, d


def _single_or_none(values: Sequence[str]) -> str | None:
    u = pd.unique(np.asarray(values, dtype=object))
    return str(u[0]) if len(u) == 1 else None


def compare_cells(
    model,
    cells,
    target_batches: Sequence[str] | None = None,
    adata=None,
    average: bool = False,
    layout=None,
    scale: str = "log1p",
    n_top: int = 10,
    group_name: str | None = None,
) -> Comparison:
    """Genomap images of chosen cells in every version, with differences.  See module docs.

    Parameters
    ----------
    model : a trained :class:`~napari_scmedal.ScMEDAL`.
    cells : int indices, a boolean mask or obs names, of ``adata`` (default: the model's
        training data).
    target_batches : batches to build counterfactuals for (default: all of the model's).
    average : average the selected cells into one row (a group) -- every version and every
        difference is the mean over the cells (each cell's own-batch counterfactual is its own).
    layout : a :class:`GenomapLayout`; default ``model.layout``, computed once and attached
        when missing (:func:`ensure_layout`).
    scale : ``"log1p"`` (log1p-normalised units) or ``"zscore"`` (per-gene z-scores from a
        cached reference stack, :func:`zscore_reference`, so every view shares one scale).
    n_top : how many top varying genes to report per row and overall.
    group_name : row title for an averaged group (default built from the cells' labels).
    """
    if scale not in SCALES:
        raise DataError(f"Unknown scale {scale!r}; use one of {list(SCALES)}.")
    source = adata if adata is not None else _training_adata(model)
    idx = resolve_cells(cells, list(map(str, source.obs_names)))
    all_batches = [str(b) for b in model.batches]
    if target_batches is None:
        batches = all_batches
    else:
        batches = [str(b) for b in ([target_batches] if isinstance(target_batches, str) else target_batches)]
        unknown = [b for b in batches if b not in all_batches]
        if unknown:
            raise DataError(
                f"Unknown target batch(es) {unknown}. The model knows these batches: {all_batches}."
            )
        if not batches:
            raise DataError(f"Choose at least one target batch from {all_batches}.")
        batches = list(dict.fromkeys(batches))
    if layout is not None:
        _layout_genes_index(layout, model.genes)  # validate; a given layout is used, not attached
    elif getattr(model, "layout", None) is not None:
        layout = model.layout
    else:
        try:
            layout = ensure_layout(model)  # on the training data, attached to the model
        except DataError:
            layout = ensure_layout(model, adata=source)
    cols = _layout_genes_index(layout, model.genes)

    sub = source[idx]
    recipe = model.recipe
    # every batch needed: the targets, plus the cells' own batches (for "- own batch")
    obs_batches = (
        sub.obs[recipe.batch_key].astype(str).unique().tolist() if recipe.batch_key in sub.obs.columns else []
    )
    extra = [b for b in all_batches if b in obs_batches and b not in batches]

    if scale == "zscore":
        try:
            mean, std = zscore_reference(model)  # on the training data when the model has it
        except DataError:
            mean, std = zscore_reference(model, adata=source)  # a loaded model: the data given

        def tf(x):
            return ((x - mean) / std).astype(np.float32)
    else:
        def tf(x):
            return np.asarray(x, dtype=np.float32)

    def g(x):  # gene-space versions (n_cells, n_genes) in layout order
        return tf(np.asarray(x, dtype=np.float32))[:, cols]

    def versions(chunk):
        v = _predict_versions(model, chunk, batches + extra)
        codes = np.asarray(v["batch"], dtype=np.int64)
        own = [all_batches[c] if 0 <= c < len(all_batches) else None for c in codes]
        missing = sorted({n for n in own if n is not None and f"cf:{n}" not in v})
        if missing:  # the batch column disagreed with the recipe's codes: compute what is missing
            v.update({k: x for k, x in _predict_versions(model, chunk, missing).items() if k.startswith("cf:")})
        orig, fe, re_ = g(v["original"]), g(v["fe"]), g(v["re"])
        cfs = {b: g(v[f"cf:{b}"]) for b in batches}
        cf_own = np.full_like(orig, np.nan)
        for n in set(o for o in own if o is not None):
            rows_n = np.flatnonzero(np.array([o == n for o in own]))
            cf_own[rows_n] = cfs[n][rows_n] if n in cfs else g(v[f"cf:{n}"][rows_n])
        gs = {ORIGINAL: orig, FE_RECON: fe, RE_RECON: re_}
        for b in batches:
            gs[counterfactual_name(b)] = cfs[b]
        ds = {FE_MINUS_ORIGINAL: fe - orig}
        for b in batches:
            ds[cf_minus_original_name(b)] = cfs[b] - orig
        for b in batches:
            ds[cf_minus_own_name(b)] = cfs[b] - cf_own
        return gs, ds, own

    # cells in chunks so memory stays bounded (averages are accumulated, not stacked)
    chunk_size = max(1, _CHUNK_ROWS // max(1, len(batches) + len(extra) + 3))
    gene_space: dict[str, np.ndarray] = {}
    diffs: dict[str, np.ndarray] = {}
    own_names: list[str | None] = []
    parts_g: list[dict] = []
    parts_d: list[dict] = []
    for start in range(0, len(idx), chunk_size):
        chunk = sub[start:start + chunk_size] if len(idx) > chunk_size else sub
        gs, ds, own = versions(chunk)
        own_names.extend(own)
        if average:
            for k, x in gs.items():
                gene_space[k] = gene_space.get(k, 0.0) + x.astype(np.float64).sum(axis=0, keepdims=True)
            for k, x in ds.items():
                diffs[k] = diffs.get(k, 0.0) + x.astype(np.float64).sum(axis=0, keepdims=True)
        else:
            parts_g.append(gs)
            parts_d.append(ds)
    if average:
        gene_space = {k: (x / len(idx)).astype(np.float32) for k, x in gene_space.items()}
        diffs = {k: (x / len(idx)).astype(np.float32) for k, x in diffs.items()}
    else:
        gene_space = {k: np.concatenate([p[k] for p in parts_g]) for k in parts_g[0]}
        diffs = {k: np.concatenate([p[k] for p in parts_d]) for k in parts_d[0]}

    obs = sub.obs
    names = list(map(str, sub.obs_names))
    batch_vals = obs[recipe.batch_key].astype(str).tolist() if recipe.batch_key in obs.columns else [
        n or "?" for n in own_names
    ]
    label_key = getattr(recipe, "label_key", None)
    label_vals = (
        obs[label_key].astype(str).tolist() if label_key is not None and label_key in obs.columns else [None] * len(names)
    )
    if average:
        rb = [_single_or_none(batch_vals)]
        rl = [_single_or_none(label_vals) if label_vals[0] is not None else None]
        if group_name is None:
            parts = [p for p in (rl[0], rb[0]) if p]
            group_name = ", ".join(parts) if parts else "selected cells"
        titles = [f"{group_name} (mean of {len(names)} cells)"]
        row_cells = [names]
    else:
        rb = list(batch_vals)
        rl = list(label_vals)
        titles = [
            f"{n} ({', '.join(p for p in (l, b) if p)})" for n, l, b in zip(names, rl, rb)
        ]
        row_cells = [[n] for n in names]

    images: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for k, x in gene_space.items():
        images[k] = layout.project(x).astype(np.float32, copy=False)
        kinds[k] = "expression"
    for k, x in diffs.items():
        images[k] = layout.project(x).astype(np.float32, copy=False)
        kinds[k] = "difference"

    expr_lim, diff_lim, top, overall = _summaries(images, kinds, batches, layout, n_top)
    return Comparison(
        images=images,
        kinds=kinds,
        expression_limits=expr_lim,
        difference_limits=diff_lim,
        batches=batches,
        row_batches=rb,
        row_labels=rl,
        row_titles=titles,
        row_cells=row_cells,
        top_genes=top,
        top_genes_overall=overall,
        layout=layout,
        scale=scale,
        averaged=bool(average),
        units="z-score per gene (reference stack)" if scale == "zscore" else "log1p-normalised expression",
        meta={"cells": idx.tolist()},
    )


def _summaries(images, kinds, batches, layout, n_top):
    """Shared limits and top varying genes of a set of images."""
    expr_lim = _robust_limits(images[k] for k in images if kinds[k] == "expression")
    diff_lim = _symmetric_limit(images[k] for k in images if kinds[k] == "difference")

    # top varying genes across counterfactual batches
    rows_tables = []
    overall = pd.DataFrame(columns=["rank", "gene", "row_px", "col_px", "spread"])
    if len(batches) >= 2:
        stack = np.stack([images[counterfactual_name(b)] for b in batches], axis=1)
        for r in range(stack.shape[0]):
            t = top_varying_genes(stack[r], layout=layout, n=n_top)
            rows_tables.append(pd.DataFrame({
                "row": r, "rank": np.arange(1, len(t) + 1), "gene": t["gene"],
                "row_px": t["row"], "col_px": t["col"], "spread": t["std"],
            }))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty pixels
            mean_spread = np.nanmean(spread_image(stack), axis=0)
        t = rank_pixels(mean_spread, layout=layout, n=n_top).rename(columns={"score": "std"})
        overall = pd.DataFrame({
            "rank": np.arange(1, len(t) + 1), "gene": t["gene"], "row_px": t["row"],
            "col_px": t["col"], "spread": t["std"],
        })
    top = (
        pd.concat(rows_tables, ignore_index=True)
        if rows_tables
        else pd.DataFrame(columns=["row", "rank", "gene", "row_px", "col_px", "spread"])
    )
    return expr_lim, diff_lim, top, overall


def stack_comparisons(comparisons: Sequence[Comparison], n_top: int = 10) -> Comparison:
    """Stack comparisons (e.g. one averaged group each) into one with a row per input row.

    All must have the same image names, layout and scale; the limits and top genes are
    recomputed over the stacked rows, so every row shares one colour scale.
    """
    comps = list(comparisons)
    if not comps:
        raise DataError("Nothing to stack: give at least one comparison.")
    first = comps[0]
    for c in comps[1:]:
        if c.names != first.names or c.scale != first.scale or c.shape != first.shape:
            raise DataError(
                "These comparisons cannot be stacked: they differ in versions, scale or image size. "
                "Compute them with the same target batches, scale and layout."
            )
    images = {n: np.concatenate([c.images[n] for c in comps], axis=0) for n in first.names}
    kinds = dict(first.kinds)
    expr_lim, diff_lim, top, overall = _summaries(images, kinds, first.batches, first.layout, n_top)
    return Comparison(
        images=images, kinds=kinds, expression_limits=expr_lim, difference_limits=diff_lim,
        batches=list(first.batches),
        row_batches=[b for c in comps for b in c.row_batches],
        row_labels=[b for c in comps for b in c.row_labels],
        row_titles=[b for c in comps for b in c.row_titles],
        row_cells=[b for c in comps for b in c.row_cells],
        top_genes=top, top_genes_overall=overall, layout=first.layout, scale=first.scale,
        averaged=all(c.averaged for c in comps), units=first.units,
        meta={"stacked": len(comps)},
    )
