"""Training preprocessing of an in-memory AnnData (docs/data.md; METHOD.md section 2).

1. validate (:func:`validate_adata`) and decide the input kind;
2. filter cells with < 10 detected genes, then genes detected in < 3 of the remaining cells
   (:func:`detection_counts`; scanpy's ``filter_cells`` / ``filter_genes`` rule);
3. raw counts only: total-count normalisation to ``TARGET_SUM`` = 1e4 over the genes that passed the filter,
   then ``log1p`` (:func:`~napari_scmedal.data.normalize.log_normalize`); log-normalised input is used as is;
4. the ``n_genes`` highly variable genes by the Seurat rule (:func:`~napari_scmedal.data.normalize.seurat_hvg`
   from per-gene sums, block by block); genes keep their original order;
5. stratified 60/20/20 split on batch x label (batch alone without label), every batch in training;
6. one global min-max scaling whose min and max come from the *training split only*;
7. batch and label one-hot codes over the sorted categories of the (filtered) data.

The data are read in blocks of rows and only the selected genes are ever densified (float32). The out-of-core
path (:func:`napari_scmedal.data.stream.stream_prepare`) runs the same block functions over a file, and the model
inputs of both come from :meth:`Recipe.log_block`, so the two paths and ``recipe.transform`` agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from .normalize import TARGET_SUM, hvg_from_sums, log_entries, moment_sums
from .recipe import Prepared, Recipe, one_hot
from .splits import stratified_split
from .validation import check_batches, get_matrix, resolve_layer, validate_adata

MIN_GENES_PER_CELL = 10
MIN_CELLS_PER_GENE = 3
#: Rows read and transformed at once.
BLOCK_ROWS = 8192


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


def detection_counts(block, min_genes: int = MIN_GENES_PER_CELL) -> tuple[np.ndarray, np.ndarray]:
    """Genes detected (non-zero) in each row of ``block``, and cells detecting each gene among the rows that
    detect at least ``min_genes`` genes: the two counts of the cell and gene filters, per block of rows.

    Parameters
    ----------
    block
        Expression values, cells x genes (dense or sparse; negative values are refused earlier).
    min_genes
        Genes a cell must detect to count towards the genes' detection.

    Returns
    -------
    tuple of numpy.ndarray
        ``(detected per row, cells per gene)``, int64.
    """
    if sp.issparse(block):
        blk = sp.csr_matrix(block)
        row = np.repeat(np.arange(blk.shape[0]), np.diff(blk.indptr))
        nz = blk.data != 0
        det = np.bincount(row[nz], minlength=blk.shape[0])
        keep = det >= min_genes
        return det, np.bincount(blk.indices[nz & keep[row]], minlength=blk.shape[1])
    nzm = np.asarray(block) != 0
    det = nzm.sum(1)
    return det.astype(np.int64), nzm[det >= min_genes].sum(0).astype(np.int64)


def normalization_columns(gene_keep: np.ndarray) -> np.ndarray | None:
    """Column positions of the normalisation genes (those that passed the gene filter), or None when every
    gene passed (the library size is then the whole row)."""
    cols = np.flatnonzero(gene_keep)
    return None if cols.size == gene_keep.size else cols


def _row_chunks(rows: np.ndarray):
    for a in range(0, len(rows), BLOCK_ROWS):
        yield rows[a:a + BLOCK_ROWS]


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
    if len(genes) != n_genes:  # tied dispersions at the cut are all kept
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


def _filter(X) -> tuple[np.ndarray, np.ndarray]:
    """``(kept rows, kept-gene mask)`` of the cell and gene filters."""
    n, m = X.shape
    detected = np.zeros(n, dtype=np.int64)
    gene_cells = np.zeros(m, dtype=np.int64)
    for a in range(0, n, BLOCK_ROWS):
        det, cells = detection_counts(X[a:a + BLOCK_ROWS])
        detected[a:a + BLOCK_ROWS] = det
        gene_cells += cells
    return np.flatnonzero(detected >= MIN_GENES_PER_CELL), gene_cells >= MIN_CELLS_PER_GENE


def _highly_variable(X, rows, gene_keep, norm_idx, kind: str, n_genes: int) -> np.ndarray:
    """Column positions of the highly variable genes among the kept genes of the kept rows."""
    m = X.shape[1]
    s1, s2 = np.zeros(m), np.zeros(m)
    for part in _row_chunks(rows):
        _, cols, vals = log_entries(X[part], kind == "counts", norm_idx)
        a1, a2 = moment_sums(cols, vals, m)
        s1 += a1
        s2 += a2
    kept = np.flatnonzero(gene_keep)
    return kept[hvg_from_sums(s1[kept], s2[kept], len(rows), n_genes)]


def _log_expression(X, rows, genes, idx, norm_idx, kind, layer) -> np.ndarray:
    """float32 log1p-normalised expression of the columns ``idx`` (named ``genes``) for ``rows`` (library size
    over ``norm_idx``), computed with :meth:`Recipe.log_block`."""
    provisional = make_recipe(genes, "_", None, ["_"], None, kind, layer, normalization_genes=genes)
    out = np.empty((len(rows), len(genes)), dtype=np.float32)
    for a in range(0, len(rows), BLOCK_ROWS):
        out[a:a + BLOCK_ROWS] = provisional.log_block(X[rows[a:a + BLOCK_ROWS]], idx, norm_idx)[0]
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

    X = get_matrix(adata, layer)
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()
    rows, gene_keep = _filter(X)
    cells = adata.obs_names[rows]
    batch_values = adata.obs[batch_key].iloc[rows].astype(str)
    check_filtered(adata.n_obs, rows.size, int(gene_keep.sum()), n_genes, batch_values, batch_key,
                   min_cells_per_batch)
    normalization_genes = [str(g) for g in adata.var_names[gene_keep]]
    norm_idx = normalization_columns(gene_keep) if kind == "counts" else None
    hv_cols = _highly_variable(X, rows, gene_keep, norm_idx, kind, n_genes)
    genes = [str(g) for g in adata.var_names[hv_cols]]
    # The model-space values come from the recipe's own block arithmetic (Recipe.log_block), the same
    # code that recipe.transform and the out-of-core reader run, so all three agree bit for bit.
    X_log = _log_expression(X, rows, genes, hv_cols, norm_idx, kind, layer)
    label_values = None if label_key is None else adata.obs[label_key].iloc[rows].astype(str)
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


__all__ = ["BLOCK_ROWS", "MIN_CELLS_PER_GENE", "MIN_GENES_PER_CELL", "TARGET_SUM", "TrainingData", "check_filtered",
           "detection_counts", "finish_recipe", "make_recipe", "normalization_columns", "prepare_training"]
