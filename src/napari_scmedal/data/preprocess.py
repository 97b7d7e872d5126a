"""Training preprocessing (docs/data.md; METHOD.md section 2), done with scanpy.

1. validate (:func:`validate_adata`) and decide the input kind;
2. filter cells with < 10 detected genes, then genes detected in < 3 cells (``scanpy.pp.filter_cells`` /
   ``filter_genes``);
3. raw counts only: ``normalize_total(target_sum=1e4)`` then ``log1p`` (log-normalised input is used as is);
4. ``highly_variable_genes(flavor="seurat", n_top_genes=n_genes)`` on the log data; genes keep their
   original order;
5. stratified 60/20/20 split on batch x label (batch alone without label), every batch in training;
6. one global min-max scaling whose min and max come from the *training split only*;
7. batch and label one-hot codes over the sorted categories of the (filtered) data.

Only the selected genes are ever densified (float32); a sparse input stays sparse until then. Their model
inputs are computed by :meth:`Recipe.log_block`, the arithmetic shared with ``recipe.transform`` and the
out-of-core reader (:mod:`napari_scmedal.data.ondisk`), so all three agree bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from ..errors import DataError
from .recipe import Prepared, Recipe, one_hot
from .splits import stratified_split
from .validation import check_batches, get_matrix, resolve_layer, validate_adata

TARGET_SUM = 1e4
MIN_GENES_PER_CELL = 10
MIN_CELLS_PER_GENE = 3


@dataclass
class TrainingData:
    """Result of :func:`prepare_training`.

    ``adata``: a copy of the input restricted to the cells and genes that passed the filters (X, layers,
    obs, obsm as in the input; ``var['highly_variable']`` marks the recipe genes), rows in the order of
    ``prepared``. ``recipe``: the :class:`Recipe` (``recipe.transform(adata)`` reproduces ``prepared``).
    ``prepared``: model-ready arrays for those cells. ``splits``: ``{"train", "val", "test"}`` sorted
    int64 row indices into ``prepared`` / ``adata``.
    """

    adata: ad.AnnData
    recipe: Recipe
    prepared: Prepared
    splits: dict

    def split(self, name: str) -> Prepared:
        """The Prepared rows of one split (``"train"``, ``"val"`` or ``"test"``)."""
        return self.prepared.subset(self.splits[name])


def _float32(X):
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32, copy=True)
    return np.array(X, dtype=np.float32, copy=True)


def make_recipe(genes, batch_key, label_key, batches, labels, kind, layer, scale_min=0.0, scale_max=1.0,
                normalization_genes=None) -> Recipe:
    """The Recipe of this preprocessing (in memory and out of core alike)."""
    return Recipe(
        genes=list(genes), batch_key=str(batch_key), label_key=None if label_key is None else str(label_key),
        batches=list(batches), labels=None if labels is None else list(labels), input_kind=kind, layer=layer,
        target_sum=TARGET_SUM if kind == "counts" else None, scale_min=float(scale_min), scale_max=float(scale_max),
        normalization_genes=list(normalization_genes) if kind == "counts" else None,
        min_genes_per_cell=MIN_GENES_PER_CELL, min_cells_per_gene=MIN_CELLS_PER_GENE,
    )


def check_filtered(n_cells_in: int, n_cells: int, n_genes_kept: int, n_genes: int, batch_values, batch_key: str,
                   min_cells_per_batch: int) -> None:
    """The errors after the cell/gene filters (shared by the in-memory and the out-of-core paths)."""
    if n_cells == 0 or n_genes_kept == 0:
        raise DataError(
            f"No data left after filtering cells with < {MIN_GENES_PER_CELL} detected genes and genes detected in "
            f"< {MIN_CELLS_PER_GENE} cells ({n_cells} cells x {n_genes_kept} genes remain). "
            "The matrix is nearly empty; check that X (or the layer) holds expression values."
        )
    stage = f" after removing {n_cells_in - n_cells} cells with fewer than {MIN_GENES_PER_CELL} detected genes"
    check_batches(batch_values, batch_key, min_cells_per_batch, stage=stage)
    if n_genes_kept < n_genes:
        raise DataError(
            f"Only {n_genes_kept} genes are detected in at least {MIN_CELLS_PER_GENE} cells, fewer than the "
            f"n_genes={n_genes} requested. Pass n_genes={n_genes_kept} or fewer (the genomap grid shrinks "
            "accordingly), or use data with more genes."
        )


def finish_recipe(genes, n_genes, batch_values, label_values, batch_key, label_key, kind, layer, scale_min,
                  scale_max, normalization_genes):
    """Check the gene count and the scaling range, build the Recipe and code the cells' batches and labels:
    ``(recipe, batch codes, label codes or None)``. Shared by the in-memory and the out-of-core paths."""
    if len(genes) != n_genes:  # scanpy cuts ties by rank; guard anyway
        raise DataError(f"Highly-variable-gene selection returned {len(genes)} genes instead of {n_genes}. "
                        "Lower n_genes or check the data for many constant genes.")
    if not scale_max > scale_min:
        raise DataError(
            f"The training cells have constant expression ({scale_min:g}) over the selected genes, so they "
            "cannot be scaled. Check that X (or the layer) holds real expression values."
        )
    batches = sorted(batch_values.unique())
    labels = None if label_values is None else sorted(label_values.unique())
    recipe = make_recipe(genes, batch_key, label_key, batches, labels, kind, layer, scale_min, scale_max,
                         normalization_genes)
    batch = recipe.batch_codes(batch_values.to_numpy())
    label = None if labels is None else recipe.label_codes(label_values.to_numpy())
    return recipe, batch, label


def _log_expression(adata, cells, genes, normalization_genes, kind, layer) -> np.ndarray:
    """float32 log1p-normalised expression of ``genes`` for ``cells`` (library size over
    ``normalization_genes``), computed with :meth:`Recipe.log_block`."""
    provisional = make_recipe(genes, "_", None, ["_"], None, kind, layer, normalization_genes=normalization_genes)
    names = pd.Index(adata.var_names.astype(str))
    idx = names.get_indexer(genes)
    norm_idx = None
    if kind == "counts":
        ni = names.get_indexer(normalization_genes)
        norm_idx = None if ni.size == adata.n_vars else np.sort(ni)
    rows = adata.obs_names.get_indexer(cells)
    X = get_matrix(adata, layer)
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()
    out = np.empty((len(rows), len(genes)), dtype=np.float32)
    step = 8192
    for a in range(0, len(rows), step):
        out[a:a + step] = provisional.log_block(X[rows[a:a + step]], idx, norm_idx)[0]
    return out


def prepare_training(
    adata,
    batch_key: str,
    label_key: str | None = None,
    n_genes: int = 2916,
    layer: str | None = None,
    input_kind: str = "auto",
    split_seed: int = 42,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    min_cells_per_batch: int = 5,
) -> TrainingData:
    """Validate and preprocess ``adata`` for training; the input object is never modified.

    See the module docstring for the steps. Raises :class:`~napari_scmedal.errors.DataError` for any
    invalid input (see :func:`validate_adata`), and also when the cell/gene filters leave fewer than
    ``n_genes`` genes, fewer than 2 batches or a batch with fewer than ``min_cells_per_batch`` cells.
    """
    n_genes = int(n_genes)
    if n_genes < 1:
        raise DataError(f"n_genes={n_genes} must be a positive number of genes (default 2916 = 54 x 54).")
    stored_layer = layer  # "raw" is recorded as such, so that inference reads adata.raw too
    adata, layer = resolve_layer(adata, layer)
    kind = validate_adata(adata, batch_key, label_key=label_key, layer=layer, input_kind=input_kind,
                          n_genes=n_genes, min_cells_per_batch=min_cells_per_batch)

    # a minimal working object: the chosen matrix (float32 copy) and cell/gene names only
    X = get_matrix(adata, layer)
    work = ad.AnnData(X=_float32(X), obs=pd.DataFrame(index=adata.obs_names.copy()),
                      var=pd.DataFrame(index=adata.var_names.copy()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.filter_cells(work, min_genes=MIN_GENES_PER_CELL)
        sc.pp.filter_genes(work, min_cells=MIN_CELLS_PER_GENE)
    cells = work.obs_names
    batch_values = adata.obs[batch_key].loc[cells].astype(str)
    check_filtered(adata.n_obs, work.n_obs, work.n_vars, n_genes, batch_values, batch_key, min_cells_per_batch)
    normalization_genes = [str(g) for g in work.var_names]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == "counts":
            sc.pp.normalize_total(work, target_sum=TARGET_SUM)
            sc.pp.log1p(work)
        sc.pp.highly_variable_genes(work, flavor="seurat", n_top_genes=n_genes)
    hv = work.var["highly_variable"].to_numpy()
    genes = [str(g) for g in work.var_names[hv]]
    del work
    # The model-space values come from the recipe's own block arithmetic (Recipe.log_block), the same
    # code that recipe.transform and the out-of-core reader run, so all three agree bit for bit.
    X_log = _log_expression(adata, cells, genes, normalization_genes, kind, layer)
    label_values = None if label_key is None else adata.obs[label_key].loc[cells].astype(str)
    splits = stratified_split(batch_values.to_numpy(),
                              None if label_values is None else label_values.to_numpy(),
                              fractions=split_fractions, seed=split_seed)
    train = X_log[splits["train"]]
    scale_min, scale_max = float(train.min()), float(train.max())
    recipe, batch, label = finish_recipe(genes, n_genes, batch_values, label_values, batch_key, label_key, kind,
                                         stored_layer, scale_min, scale_max, normalization_genes)
    prepared = Prepared(
        X=recipe.scale(X_log), X_log=X_log, batch=batch, batch_onehot=one_hot(batch, recipe.n_batches),
        label=label, label_onehot=None if label is None else one_hot(label, recipe.n_labels),
        obs_names=pd.Index(cells.copy()),
    )

    out = adata[cells, normalization_genes].copy()
    out.var["highly_variable"] = out.var_names.isin(genes)
    if stored_layer == "raw" and layer is None:  # the recipe reads "raw": keep the counts under that name
        out.layers["raw"] = out.X
    return TrainingData(adata=out, recipe=recipe, prepared=prepared, splits=splits)


__all__ = ["prepare_training", "make_recipe", "check_filtered", "finish_recipe", "TrainingData", "TARGET_SUM", "MIN_GENES_PER_CELL", "MIN_CELLS_PER_GENE"]
