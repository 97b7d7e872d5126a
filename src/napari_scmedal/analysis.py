"""The paper's genomap analyses (METHOD.md section 5), in one place to import them from.

* :func:`top_varying_genes` / :func:`top_genes_table` (here): for one cell (or group), the genes whose
  pixel varies most (standard deviation) across the counterfactual batches: where the batch
  changes the picture most.
* :func:`pixel_test` / :func:`counterfactual_group_test` (:mod:`napari_scmedal.pixeltests`, re-exported):
  per-pixel Mann-Whitney U between two groups of batches, Benjamini-Hochberg, genes of the significant
  pixels. Mann-Whitney treats every genomap (cell, or cell x counterfactual batch) as an independent sample.
* :func:`mixed_model_pixels` / :func:`mixed_model_test` / :func:`counterfactual_mixed_model_test`
  (:mod:`napari_scmedal.lmm`, re-exported): per pixel ``value ~ group + (1 | batch)`` for designs where
  the batch (donor) is the independent unit and the group a batch attribute.

Images are ``(..., rows, cols)`` float arrays with NaN on empty pixels; the gene under each pixel comes
from :func:`gene_grid`. Pure core: no Qt, no napari.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import DataError
from .lmm import (
    MixedModelCancelled,
    counterfactual_mixed_model_test,
    mixed_model_pixels,
    mixed_model_test,
)
from .pixeltests import (
    TEST_DESCRIPTIONS,
    PixelTestResult,
    benjamini_hochberg,
    counterfactual_group_test,
    gene_grid,
    grid_for,
    pixel_test,
    write_csv,
)

__all__ = [
    "TEST_DESCRIPTIONS",
    "MixedModelCancelled",
    "PixelTestResult",
    "benjamini_hochberg",
    "counterfactual_group_test",
    "counterfactual_mixed_model_test",
    "gene_grid",
    "mixed_model_pixels",
    "mixed_model_test",
    "pixel_test",
    "rank_pixels",
    "spread_image",
    "top_genes_table",
    "top_varying_genes",
    "write_csv",
]

TOP_GENE_COLUMNS = ["gene", "row", "col", "std"]


# ----------------------------------------------------------------------------------------------
# top genes across counterfactual batches
# ----------------------------------------------------------------------------------------------
def spread_image(cf_images: np.ndarray) -> np.ndarray:
    """Per-pixel standard deviation across counterfactual batches.

    ``cf_images``: ``(n_batches, rows, cols)`` for one cell, or ``(n_cells, n_batches, rows, cols)``.
    Returns ``(rows, cols)`` or ``(n_cells, rows, cols)``; NaN where the pixel is empty.
    Population standard deviation (``ddof=0``), as numpy's default and the reference's.
    """
    a = np.asarray(cf_images, dtype=np.float64)
    if a.ndim not in (3, 4):
        raise DataError(
            f"Expected counterfactual images shaped (n_batches, rows, cols) or "
            f"(n_cells, n_batches, rows, cols), got an array of shape {a.shape}."
        )
    axis = a.ndim - 3
    if a.shape[axis] < 2:
        raise DataError(
            "The spread across counterfactual batches needs at least two target batches; "
            f"got {a.shape[axis]}. Choose two or more batches."
        )
    if not np.isnan(a).any():
        return a.std(axis=axis)
    empty = np.all(np.isnan(a), axis=axis)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (empty) pixels
        out = np.asarray(np.nanstd(a, axis=axis), dtype=np.float64)
    out[empty] = np.nan
    return out


def top_varying_genes(cf_images: np.ndarray, layout=None, n: int = 10) -> pd.DataFrame:
    """The ``n`` genes whose pixel varies most across one cell's counterfactual batches.

    ``cf_images`` is ``(n_batches, rows, cols)`` (one cell or one averaged group).  Returns a
    DataFrame with columns ``gene, row, col, std`` sorted by decreasing ``std``; empty pixels
    never appear.  Ties are broken by pixel order (row-major) so the result is deterministic.
    """
    t = rank_pixels(spread_image(cf_images), layout=layout, n=n)
    return t.rename(columns={"score": "std"})[TOP_GENE_COLUMNS]


def rank_pixels(score: np.ndarray, layout=None, n: int = 10) -> pd.DataFrame:
    """The ``n`` gene pixels with the largest ``score`` (a ``(rows, cols)`` image): DataFrame
    ``gene, row, col, score``, decreasing; empty pixels (no gene, or NaN) never appear; ties in
    row-major order."""
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise DataError(f"Expected one (rows, cols) image to rank, got shape {score.shape}.")
    grid = grid_for(layout, score.shape)
    flat = score.ravel()
    has_gene = np.array([g is not None for g in grid.ravel()]) & ~np.isnan(flat)
    idx = np.flatnonzero(has_gene)
    order = idx[np.argsort(-flat[idx], kind="stable")][: max(int(n), 0)]
    rows, cols = np.unravel_index(order, score.shape)
    return pd.DataFrame(
        {
            "gene": [grid[r, c] for r, c in zip(rows, cols)],
            "row": rows.astype(int),
            "col": cols.astype(int),
            "score": flat[order].astype(float),
        }
    )


def top_genes_table(
    cf_images: np.ndarray, layout=None, n: int = 10, row_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Top varying genes for every row of a ``(n_rows, n_batches, rows, cols)`` stack.

    Columns: ``cell, rank, gene, row, col, std`` (``rank`` 1 = largest spread), ready for CSV.
    """
    a = np.asarray(cf_images)
    if a.ndim != 4:
        raise DataError(
            f"Expected a stack shaped (n_cells, n_batches, rows, cols), got shape {a.shape}."
        )
    names = list(row_names) if row_names is not None else [str(i) for i in range(a.shape[0])]
    if len(names) != a.shape[0]:
        raise DataError(f"{len(names)} row names given for {a.shape[0]} rows; give one name per row.")
    frames = []
    for name, cell in zip(names, a):
        df = top_varying_genes(cell, layout=layout, n=n)
        df.insert(0, "rank", np.arange(1, len(df) + 1))
        df.insert(0, "cell", name)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["cell", "rank", *TOP_GENE_COLUMNS])
    return pd.concat(frames, ignore_index=True)


