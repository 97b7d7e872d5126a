"""Per-pixel tests between two groups of genomaps, and the gene under each pixel.

* :func:`gene_grid` / :func:`grid_for`: a ``(rows, cols)`` object array of gene names (``None`` where no
  gene sits) from a :class:`~napari_scmedal.genomap.GenomapLayout`;
* :func:`pixel_test` / :func:`counterfactual_group_test`: per pixel, a Mann-Whitney U test between the
  counterfactual genomaps of two user-chosen groups of batches, Benjamini-Hochberg correction over the
  tested pixels (:func:`benjamini_hochberg`), significant pixels mapped back to genes and drawn as a
  boolean overlay. Mann-Whitney treats every genomap (cell, or cell x counterfactual batch) as an
  independent sample; :mod:`napari_scmedal.lmm` has the mixed model for donor-level designs and
  returns the same :class:`PixelTestResult`.

Vectorised numpy / scipy. Pure core: no Qt, no napari.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._utils import write_csv
from .errors import DataError
from .versions import counterfactual_name

__all__ = [
    "PIXEL_TESTS",
    "PixelTestResult",
    "benjamini_hochberg",
    "counterfactual_group_test",
    "counterfactual_images",
    "gene_grid",
    "grid_for",
    "pixel_test",
    "write_csv",
]

TEST_DESCRIPTIONS = {
    "mannwhitney": "Mann-Whitney U per pixel (every genomap treated as an independent sample)",
    "mixedlm": "Mixed model per pixel, value ~ group + (1 | batch) (batches as independent units)",
}
#: The per-pixel tests between two groups of batches (pixeltests' Mann-Whitney, lmm's mixed model).
PIXEL_TESTS = tuple(TEST_DESCRIPTIONS)


# ----------------------------------------------------------------------------------------------
# gene <-> pixel
# ----------------------------------------------------------------------------------------------
def gene_grid(layout) -> np.ndarray:
    """``(rows, cols)`` object array with the gene at each pixel (``None`` on empty pixels).

    ``layout`` is a :class:`GenomapLayout` (uses ``shape``, ``genes`` and ``pixel_of_gene``) or
    already a 2-D array of names, returned unchanged.
    """
    if isinstance(layout, np.ndarray) and layout.ndim == 2:
        return layout
    rows, cols = (int(v) for v in layout.shape)
    grid = np.full((rows, cols), None, dtype=object)
    pix = np.asarray(layout.pixel_of_gene, dtype=np.int64)
    for gene, (r, c) in zip(layout.genes, pix):
        grid[r, c] = str(gene)
    return grid


def grid_for(layout, shape: tuple[int, int]) -> np.ndarray:
    if layout is None:
        # no layout: name pixels by position so tables still say where they are
        grid = np.empty(shape, dtype=object)
        for r in range(shape[0]):
            for c in range(shape[1]):
                grid[r, c] = f"pixel_{r}_{c}"
        return grid
    grid = gene_grid(layout)
    if tuple(grid.shape) != tuple(shape):
        raise DataError(
            f"The images are {shape[0]} x {shape[1]} pixels but the genomap layout is "
            f"{grid.shape[0]} x {grid.shape[1]}. Pass the layout the images were made with "
            "(the model's layout, model.layout)."
        )
    return grid


# ----------------------------------------------------------------------------------------------
# multiple testing
# ----------------------------------------------------------------------------------------------
def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of any shape (``scipy.stats.false_discovery_control``);
    NaN entries stay NaN and are not counted as tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


# ----------------------------------------------------------------------------------------------
# per-pixel group test
# ----------------------------------------------------------------------------------------------
@dataclass
class PixelTestResult:
    """Result of a per-pixel test between two groups of genomaps.

    ``table`` has one row per tested pixel: ``gene, row, col, mean_a, mean_b, diff (mean_b -
    mean_a), statistic, p, q, significant``, sorted by ``q`` then ``p``.  ``significant`` is the
    boolean ``(rows, cols)`` overlay (q < alpha), ``q``/``p`` the corresponding images (NaN on
    untested pixels).  ``test`` is ``"mannwhitney"`` (``statistic`` = U) or ``"mixedlm"``
    (:func:`mixed_model_test`: ``diff`` = the model's group coefficient, ``statistic`` = its z).
    """

    table: pd.DataFrame
    significant: np.ndarray
    p: np.ndarray
    q: np.ndarray
    diff: np.ndarray
    alpha: float
    group_a: str = "A"
    group_b: str = "B"
    n_a: int = 0
    n_b: int = 0
    test: str = "mannwhitney"
    meta: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        """The test in plain words, for titles and reports (says what it treats as independent)."""
        return TEST_DESCRIPTIONS.get(self.test, self.test)

    @property
    def significant_genes(self) -> pd.DataFrame:
        """Rows of ``table`` with q < alpha."""
        return self.table[self.table["significant"]].reset_index(drop=True)

    def to_csv(self, path, significant_only: bool = False) -> str:
        df = self.significant_genes if significant_only else self.table
        return write_csv(df, path)


def pixel_test(
    group_a: np.ndarray,
    group_b: np.ndarray,
    layout=None,
    alpha: float = 0.05,
    alternative: str = "two-sided",
    names: tuple[str, str] = ("A", "B"),
) -> PixelTestResult:
    """Per-pixel Mann-Whitney U between two samples of genomaps, BH-corrected.

    Every genomap is treated as an independent sample: with cell-level genomaps of a few donors
    (batches) that overstates the evidence; :func:`mixed_model_test` models the batch instead.

    ``group_a``: ``(n_a, rows, cols)``, ``group_b``: ``(n_b, rows, cols)``.  Pixels that are empty
    (NaN) or constant over both groups are not tested (their q is NaN and they are never
    significant).  The asymptotic p-value with tie correction is used (exact p-values are not
    defined with ties, which are common in expression data).
    """
    a = np.asarray(group_a, dtype=np.float64)
    b = np.asarray(group_b, dtype=np.float64)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise DataError(
            "The two groups must be stacks of genomaps of the same size, shaped "
            f"(n, rows, cols); got {a.shape} and {b.shape}."
        )
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise DataError(
            f"Each group needs at least 2 genomaps for a Mann-Whitney test (got {a.shape[0]} and "
            f"{b.shape[0]}). Choose more cells or more batches per group."
        )
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be between 0 and 1 (got {alpha}); 0.05 is usual.")
    shape = a.shape[1:]
    grid = grid_for(layout, shape)
    af = a.reshape(a.shape[0], -1)
    bf = b.reshape(b.shape[0], -1)
    both = np.concatenate([af, bf], axis=0)
    has_gene = np.array([g is not None for g in grid.ravel()])
    finite = np.all(np.isfinite(both), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        varies = np.nanmax(both, axis=0) > np.nanmin(both, axis=0)
    tested = has_gene & finite & varies
    idx = np.flatnonzero(tested)
    p = np.full(af.shape[1], np.nan)
    u = np.full(af.shape[1], np.nan)
    if idx.size:
        res = stats.mannwhitneyu(
            af[:, idx], bf[:, idx], axis=0, alternative=alternative, method="asymptotic"
        )
        u[idx] = res.statistic
        p[idx] = res.pvalue
    q = benjamini_hochberg(p)
    sig = np.nan_to_num(q, nan=1.0) < alpha
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (empty) pixels
        mean_a = np.nanmean(af, axis=0)
        mean_b = np.nanmean(bf, axis=0)
    diff = mean_b - mean_a
    rows, cols = np.unravel_index(idx, shape)
    table = pd.DataFrame(
        {
            "gene": [grid[r, c] for r, c in zip(rows, cols)],
            "row": rows.astype(int),
            "col": cols.astype(int),
            f"mean_{names[0]}": mean_a[idx],
            f"mean_{names[1]}": mean_b[idx],
            "diff": diff[idx],
            "statistic": u[idx],
            "p": p[idx],
            "q": q[idx],
            "significant": sig[idx],
        }
    )
    table = table.sort_values(["q", "p"], kind="stable").reset_index(drop=True)
    diff_img = diff.reshape(shape)
    diff_img[~tested.reshape(shape)] = np.nan
    return PixelTestResult(
        table=table,
        significant=sig.reshape(shape),
        p=p.reshape(shape),
        q=q.reshape(shape),
        diff=diff_img,
        alpha=float(alpha),
        group_a=str(names[0]),
        group_b=str(names[1]),
        n_a=int(a.shape[0]),
        n_b=int(b.shape[0]),
        test="mannwhitney",
    )


def counterfactual_images(comparison, batches: Sequence[str]) -> list[np.ndarray]:
    """The ``(n_cells, rows, cols)`` counterfactual genomaps of ``comparison`` into each of ``batches``: what
    every per-pixel test between groups of batches samples.

    Raises
    ------
    DataError
        For an averaged comparison (the tests need one row per cell) or a batch without a counterfactual.
    """
    if comparison.averaged:
        raise DataError("The comparison averages its cells into one row; a pixel test needs one row per cell. "
                        "Compute the comparison of the cells without averaging.")
    missing = [str(b) for b in batches if counterfactual_name(b) not in comparison.images]
    if missing:
        raise DataError(f"The comparison has no counterfactual for batch(es) {missing}. Available: "
                        f"{list(comparison.batches)}. Recompute the comparison with these target batches.")
    return [comparison.images[counterfactual_name(b)] for b in batches]


def counterfactual_group_test(
    comparison,
    batches_a: Sequence[str],
    batches_b: Sequence[str],
    alpha: float = 0.05,
    alternative: str = "two-sided",
    names: tuple[str, str] | None = None,
) -> PixelTestResult:
    """Mann-Whitney U per pixel between the counterfactual genomaps of two groups of batches.

    ``comparison`` is a :class:`~napari_scmedal.compare.Comparison` (one row per cell, not
    averaged) holding ``Counterfactual -> <b>`` images for every batch named.  Group A's sample
    is every (cell, batch in ``batches_a``) counterfactual image, group B's likewise, as in the
    paper (METHOD.md section 5).
    """
    batches_a = [str(b) for b in batches_a]
    batches_b = [str(b) for b in batches_b]
    if not batches_a or not batches_b:
        raise DataError("Choose at least one batch for each of the two groups.")
    overlap = sorted(set(batches_a) & set(batches_b))
    if overlap:
        raise DataError(
            f"Batches {overlap} are in both groups; each batch must be in one group only."
        )
    ga = np.concatenate(counterfactual_images(comparison, batches_a), axis=0)
    gb = np.concatenate(counterfactual_images(comparison, batches_b), axis=0)
    if names is None:
        names = ("A", "B")
    res = pixel_test(ga, gb, layout=comparison.layout, alpha=alpha, alternative=alternative, names=names)
    res.meta = {"batches_a": batches_a, "batches_b": batches_b, "n_cells": int(comparison.n_rows)}
    return res
