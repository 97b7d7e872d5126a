"""A model's genomap layout and z-score reference, computed once and shared by every view.

* :func:`layout_columns`: where each layout gene sits among the model's genes (checks they match);
* :func:`ensure_layout`: ``model.layout``, computed with Gromov-Wasserstein on a sample of cells (the grid
  by :func:`~napari_scmedal.genomap.grid_shape`) and attached the first time; :func:`resolve_layout`: the
  layout a view uses (given, the model's, or ensured, on the data viewed for a model loaded without cells);
* :func:`zscore_reference`: per-gene mean and standard deviation over a reference stack of versions
  (METHOD.md section 5), cached per model, so every z-scored view shares one scale.

Works on anything shaped like :class:`~napari_scmedal.ScMEDAL` (genes, batches, recipe, layout,
predict_versions, ...); imports no model code.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from ..errors import DataError, LayoutError
from ..selection import subsample
from ..versions import cf_key
from ._layout import grid_shape

if TYPE_CHECKING:
    from ..model._protocols import ModelLike, VersionsModel

__all__ = ["ensure_layout", "layout_columns", "resolve_layout", "zscore_reference"]

_ZSCORE_CACHE: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def layout_columns(layout, genes: Sequence[str]) -> np.ndarray:
    """Column index into ``genes`` of each layout gene, in the layout's own order.

    Raises
    ------
    LayoutError
        When the layout has genes that are not in ``genes``.
    """
    pos = pd.Index([str(g) for g in genes]).get_indexer([str(g) for g in layout.genes])
    if (pos < 0).any():
        missing = [str(g) for g, p in zip(layout.genes, pos) if p < 0][:5]
        raise LayoutError(f"The genomap layout has genes the model does not use ({missing} ...). Use the model's "
                          f"own layout (model.layout) or recompute it with ensure_layout(model, force=True).")
    return pos


def ensure_layout(model: ModelLike, adata=None, layout=None, shape=None, seed: int = 0, max_cells: int = 2000,
                  force: bool = False):
    """Return the model's genomap layout, computing it once and attaching it if missing.

    Parameters
    ----------
    model
        A trained or untrained :class:`~napari_scmedal.ScMEDAL`.
    adata
        Cells to compute the layout on (default: the model's training data).
    layout
        A :class:`~napari_scmedal.genomap.GenomapLayout` to check and attach instead.
    shape
        Grid ``(rows, cols)``; default :func:`grid_shape` of the model's genes.
    seed
        Seeds the cell sample and the layout computation.
    max_cells
        Cells sampled (seeded) for the gene correlations.
    force
        Recompute even when the model has a layout.

    Returns
    -------
    GenomapLayout
        Also stored as ``model.layout``, so every later view shares it.
    """
    if layout is not None:
        layout_columns(layout, model.genes)
        _attach_layout(model, layout)
        return layout
    existing = model.layout
    if existing is not None and not force:
        return existing
    from ._compute import compute_layout

    if adata is None:  # the model's own cells (in memory or on disk): transform only the sampled ones
        own = cast("VersionsModel", model)  # a model with its cells (a test double passes adata)
        rows = subsample(own.n_cells(), max_cells, seed)
        X = np.asarray(own._prepare(None, lazy=True).subset(rows).X_log, dtype=np.float32)
    else:  # sample the cells first, so only they are read and transformed
        source = adata[subsample(adata.n_obs, max_cells, seed)] if adata.n_obs > max_cells else adata
        X = np.asarray(model.recipe.transform(source).X_log, dtype=np.float32)
    genes = list(model.genes)
    shape = tuple(shape) if shape is not None else grid_shape(len(genes))
    layout = compute_layout(X, shape=shape, genes=genes, seed=seed)
    _attach_layout(model, layout)
    return layout


def resolve_layout(model: ModelLike, layout=None, adata=None):
    """The layout a view of ``model`` uses: ``layout`` when given (checked, not attached), else the model's,
    computed once (:func:`ensure_layout`) on its training cells or, for a model loaded without them, on
    ``adata`` (an AnnData, a backed one, an ``H5adSource`` or a path: opened backed, read-only)."""
    if layout is not None:
        layout_columns(layout, model.genes)
        return layout
    if model.layout is not None:
        return model.layout
    try:
        return ensure_layout(model)  # on the model's own (training) cells
    except DataError:
        if adata is None:
            raise
    if not hasattr(adata, "obs") or hasattr(adata, "read_rows"):  # a path or an H5adSource: open it backed
        import anndata as ad

        adata = ad.read_h5ad(getattr(adata, "path", adata), backed="r")
    return ensure_layout(model, adata=adata)


def _attach_layout(model, layout) -> None:
    model.layout = layout
    _ZSCORE_CACHE.pop(model, None)


def _reference_cells(obs: pd.DataFrame, batch_key: str, label_key: str | None, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` cells with at least one per batch x label present (reference sampling)."""
    rng = np.random.default_rng(seed)
    keys = obs[batch_key].astype(str)
    if label_key is not None and label_key in obs.columns:
        keys = keys + "\x00" + obs[label_key].astype(str)
    keys = keys.to_numpy()
    first = [int(rng.choice(np.flatnonzero(keys == k))) for k in pd.unique(keys)]
    must = np.array(sorted(set(first)), dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(obs)), must)
    extra = max(0, n - must.size)
    if extra and rest.size:
        must = np.concatenate([must, rng.choice(rest, min(extra, rest.size), replace=False)])
    return np.sort(must)


def zscore_reference(model: ModelLike, adata=None, n_cells: int = 300, seed: int = 0, *,
                     fallback=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and std over the reference stack, computed once and cached on the model.

    The stack is the input, FE, RE and every counterfactual of up to ``n_cells`` cells of ``adata``
    (default: the training data; ``fallback``, e.g. the cells being viewed, for a model loaded without
    them), at least one per batch x label. Zero-variance genes get ``std = inf``, so their z-score is 0.
    """
    key = ("zscore", int(n_cells), int(seed))
    cache = _ZSCORE_CACHE.get(model)
    if cache is not None and key in cache:
        return cache[key]
    try:
        source = model._training_adata(adata)
    except DataError:
        if fallback is None:
            raise
        source = fallback
    recipe = model.recipe
    idx = _reference_cells(source.obs, recipe.batch_key, recipe.label_key, n_cells, seed)
    v = model.predict_versions(source[idx], list(model.batches))
    stack = [v["original"], v["fe"], v["re"]] + [v[cf_key(b)] for b in model.batches]
    allrows = np.concatenate(stack, axis=0).astype(np.float64)
    mean, std = allrows.mean(axis=0), allrows.std(axis=0)
    std[std <= 1e-12] = np.inf
    res = (mean.astype(np.float32), std.astype(np.float32))
    _ZSCORE_CACHE.setdefault(model, {})[key] = res
    return res
