"""Library-size normalisation and the Seurat highly-variable-gene rule, in one place.

Every path that turns counts into log1p-normalised expression calls :func:`log_normalize` (per-row factors from
:func:`size_factors`): the in-memory preprocessing, :meth:`Recipe.log_block <napari_scmedal.data.Recipe.log_block>`
(recipes and the out-of-core reader) and the streaming preprocessing, so they agree bit for bit. Both
preprocessing paths pick the highly variable genes with :func:`seurat_hvg` from per-gene sums accumulated block
by block (:func:`moment_sums`, :func:`hvg_from_sums`), so in memory and out of core choose the same genes.
No scanpy: the arithmetic is scanpy's ``normalize_total`` + ``log1p`` and ``highly_variable_genes(flavor="seurat")``
rule written out with numpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError

__all__ = ["TARGET_SUM", "LibrarySizes", "hvg_from_sums", "log_entries", "log_normalize", "moment_sums",
           "seurat_hvg", "size_factors"]

#: Total counts every cell is scaled to before log1p (scanpy's ``normalize_total(target_sum=1e4)``).
TARGET_SUM = 1e4


class LibrarySizes:
    """Per-cell library sizes given by the user (an ``obs`` column named by ``size_factor_key``), used
    instead of the row sums over the normalisation genes; passed where a ``norm_idx`` goes."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64).ravel()

    def rows(self, sel) -> LibrarySizes:
        """The library sizes of the rows ``sel``."""
        return LibrarySizes(self.values[sel])


def _normalisation_source(block, norm_idx, where: str):
    """The values that make each row's library size, checked: NaN, inf or negative values there would
    silently zero or skew the whole cell, so they are refused like those in the model's genes."""
    src = block if norm_idx is None else block[:, norm_idx]
    vals = src.data if sp.issparse(src) else np.asarray(src)
    if vals.size and not np.all(np.isfinite(vals)):
        raise DataError(f"{where} contains NaN or infinite values in the genes that make each cell's library size "
                        "(normalisation genes, not only the model's genes). Remove or impute them before applying "
                        "the model, or give per-cell totals with size_factor_key=.")
    if vals.size and vals.min() < 0:
        raise DataError(f"{where} contains negative values in the genes that make each cell's library size; "
                        "expected raw counts. Pass unscaled counts (e.g. layer='counts').")
    return src


def size_factors(block, norm_idx=None, target_sum: float = TARGET_SUM, where: str = "adata.X") -> np.ndarray:
    """Per-row normalisation factors ``target_sum / library size`` of a block of raw counts.

    Parameters
    ----------
    block
        Raw counts, cells x genes (dense or sparse).
    norm_idx
        Column positions of the normalisation genes whose row sum is the library size (None: every column),
        or the rows' :class:`LibrarySizes`.
    target_sum
        Total every cell is scaled to.
    where
        What ``block`` is, for error messages.

    Returns
    -------
    numpy.ndarray
        float32 factors, one per row (0 for a row with no counts).

    Raises
    ------
    DataError
        If a value entering the library size is NaN, infinite or negative.
    """
    if isinstance(norm_idx, LibrarySizes):
        totals = norm_idx.values
    else:
        totals = np.asarray(_normalisation_source(block, norm_idx, where).sum(axis=1), dtype=np.float64).ravel()
    factor = np.zeros_like(totals)
    np.divide(target_sum, totals, out=factor, where=totals > 0)
    return factor.astype(np.float32)


def log_normalize(counts, factors=None, target_sum: float = TARGET_SUM):
    """Log1p-normalised expression ``log1p(counts * factor)`` of each row, in float32 (a new array).

    The one implementation of the normalisation (total-count scaling to ``target_sum``, then log1p).

    Parameters
    ----------
    counts
        Raw counts, cells x genes: a dense array or a scipy sparse matrix (any columns: all genes, or only
        some of them when ``factors`` come from the full rows).
    factors
        Per-row factors from :func:`size_factors` (float32, one per row). None: computed from ``counts``
        itself, every column counting towards the library size.
    target_sum
        Total every cell is scaled to when ``factors`` is None.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        float32, dense for dense input and CSR (same sparsity) for sparse input.
    """
    if factors is None:
        factors = size_factors(counts, None, target_sum)
    factors = np.asarray(factors, dtype=np.float32)
    if sp.issparse(counts):
        out = sp.csr_matrix(counts, dtype=np.float32, copy=True)
        row = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
        out.data = np.log1p(out.data * factors[row])
        return out
    return np.log1p(np.asarray(counts, dtype=np.float32) * factors[:, None])


def log_entries(block, counts: bool, norm_idx=None, target_sum: float = TARGET_SUM):
    """``(row, column, value)`` of the stored entries of a block's log1p-normalised expression (float32 values).

    ``counts``: the block holds raw counts (normalised with :func:`log_normalize`, library size over
    ``norm_idx``) rather than log-normalised values (used as given). Sparse blocks give their stored entries,
    dense blocks their non-zero ones.
    """
    if sp.issparse(block):
        blk = sp.csr_matrix(block)
        if counts:
            blk = log_normalize(blk, size_factors(blk, norm_idx, target_sum))
        row = np.repeat(np.arange(blk.shape[0]), np.diff(blk.indptr))
        return row, blk.indices, blk.data.astype(np.float32, copy=False)
    dense = np.asarray(block, dtype=np.float32)
    if counts:
        dense = log_normalize(dense, size_factors(dense, norm_idx, target_sum))
    row, cols = np.nonzero(dense)
    return row, cols, dense[row, cols]


def moment_sums(cols, log_values, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene sums of the normalised (non-log) expression ``expm1(log_values)`` and of its square (float64),
    from entries of :func:`log_entries`; summed over blocks (and ranks) they give :func:`hvg_from_sums`."""
    x = np.expm1(log_values).astype(np.float64)
    return (np.bincount(cols, weights=x, minlength=n_genes), np.bincount(cols, weights=x * x, minlength=n_genes))


def hvg_from_sums(s1: np.ndarray, s2: np.ndarray, n_cells: int, n_top: int) -> np.ndarray:
    """:func:`seurat_hvg` from the per-gene sums of :func:`moment_sums` over ``n_cells`` cells (mean and
    unbiased variance of the normalised expression)."""
    mean = s1 / n_cells
    var = s2 / n_cells - mean ** 2
    if n_cells > 1:
        var *= n_cells / (n_cells - 1)
    return seurat_hvg(mean, var, n_top)


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Boolean mask of the ``n_top`` highly variable genes by the Seurat rule (scanpy's
    ``highly_variable_genes(flavor="seurat")``) from per-gene mean and unbiased variance of the
    normalised (non-log) expression: log dispersion z-scored within 20 equal-width bins of log1p mean
    (a bin with one gene gets normalised dispersion 1), then the top ``n_top`` (ties kept)."""
    mean = np.array(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        disp = np.log(disp)
    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": disp})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    one = stats["dev"].isnull()
    stats.loc[one, "dev"] = stats.loc[one, "avg"]
    stats.loc[one, "avg"] = 0
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    norm = ((df["dispersions"] - stats["avg"]) / stats["dev"]).to_numpy(dtype=np.float64)
    valid = norm[~np.isnan(norm)]
    n_top = min(int(n_top), valid.size)
    if n_top == 0:
        return np.zeros(mean.shape, dtype=bool)
    cut = np.sort(valid)[::-1][n_top - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cut
