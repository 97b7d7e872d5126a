"""Shared z-scoring of stacked matrices and the quality report of a genomap layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import spearmanr

from ..errors import LayoutError
from ._compute import gene_correlation
from ._layout import GenomapLayout

__all__ = ["layout_quality", "zscore_stack"]


def zscore_stack(matrices: Sequence) -> list[np.ndarray]:
    """Z-score each gene (column) over all rows of all matrices together (METHOD.md section 5).

    ``matrices`` are cells x genes arrays with the same genes (e.g. the input, the FE and RE
    reconstructions and the counterfactuals of the same cells). Returns float32 arrays of the same
    shapes, ``(x - mean) / std`` with the mean and the population standard deviation (ddof=0) of
    the column over every stacked row, so all versions share one scale. Columns with zero variance
    over the stack become 0. Dense or scipy sparse input; NaN or inf raise :class:`LayoutError`.
    """
    if isinstance(matrices, np.ndarray) and matrices.ndim == 2:
        matrices = [matrices]
    mats = []
    for i, m in enumerate(matrices):
        a = m.toarray() if sp.issparse(m) else np.asarray(m)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise LayoutError(f"zscore_stack: matrix {i} has {a.ndim} dimensions; pass cells x genes matrices.")
        mats.append(a)
    if not mats:
        raise LayoutError("zscore_stack needs at least one matrix (cells x genes).")
    g = mats[0].shape[1]
    bad = [i for i, a in enumerate(mats) if a.shape[1] != g]
    if bad:
        raise LayoutError(f"zscore_stack: matrices {bad} do not have {g} gene columns like matrix 0; "
                          "pass matrices over the same genes in the same order.")
    total = sum(a.shape[0] for a in mats)
    if total == 0:
        return [a.astype(np.float32) for a in mats]
    s = np.zeros(g)
    for a in mats:
        if not np.all(np.isfinite(a)):
            raise LayoutError("zscore_stack: a matrix contains NaN or infinite values; remove or impute them first.")
        s += a.sum(0, dtype=np.float64)
    mean = s / total
    ss = np.zeros(g)
    for a in mats:
        d = a.astype(np.float64, copy=False) - mean
        ss += np.einsum("ij,ij->j", d, d)
    sd = np.sqrt(ss / total)
    const = sd <= 1e-12 * np.maximum(1.0, np.abs(mean))
    inv = np.where(const, 0.0, 1.0 / np.where(const, 1.0, sd))
    return [((a.astype(np.float64, copy=False) - mean) * inv).astype(np.float32) for a in mats]


def _pairs(n: int, max_pairs: int, rng) -> tuple[np.ndarray, np.ndarray]:
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return np.triu_indices(n, 1)
    i = rng.integers(0, n, size=2 * max_pairs)
    k = rng.integers(0, n, size=2 * max_pairs)
    keep = i < k
    return i[keep][:max_pairs], k[keep][:max_pairs]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (NaN when either side is constant)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _neighbour_mean(R: np.ndarray, grid: np.ndarray) -> float:
    h = np.stack([grid[:, :-1].ravel(), grid[:, 1:].ravel()])
    v = np.stack([grid[:-1, :].ravel(), grid[1:, :].ravel()])
    pairs = np.concatenate([h, v], axis=1)
    pairs = pairs[:, (pairs >= 0).all(0)]
    return float(R[pairs[0], pairs[1]].mean()) if pairs.shape[1] else float("nan")


def layout_quality(layout: GenomapLayout, X, seed: int = 0, max_pairs: int = 5_000_000) -> dict:
    """How well a layout puts co-expressed genes close together on ``X`` (cells x the layout's genes).

    Returns a dict, each measure next to the value of a random one-to-one placement of the same
    genes on the same pixels (seeded by ``seed``):

    * ``spearman``: Spearman correlation, over gene pairs, between the correlation distance
      ``1 - r`` of two genes and the 2-D (Euclidean) distance between their pixels (higher is better);
    * ``neighbour_correlation``: mean Pearson correlation of genes on 4-neighbour pixels (higher is
      better), and ``neighbour_ratio`` = layout / random;
    * ``gw_objective``: the square-loss Gromov-Wasserstein objective, mean over gene pairs of
      ``(d_corr - s * d_pixel)^2`` with ``s`` making the mean pixel distance equal the mean
      correlation distance (lower is better).

    With more than ``max_pairs`` gene pairs, a seeded random sample of pairs is used.
    """
    if not isinstance(layout, GenomapLayout):
        raise LayoutError("layout_quality needs a GenomapLayout (from compute_layout).")
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != layout.n_genes:
        raise LayoutError(f"layout_quality needs a cells x genes matrix with the layout's {layout.n_genes} "
                          f"genes as columns (in layout.genes order), got shape {shape}.")
    rng = np.random.default_rng(seed)
    R = gene_correlation(X)
    n = layout.n_genes
    # random baseline: the same pixels, genes placed by a seeded random permutation
    used = np.flatnonzero(np.asarray(layout.mask).ravel())
    rand_flat = used[rng.permutation(n)]
    rand_pog = np.column_stack(np.divmod(rand_flat, layout.shape[1]))
    rand_grid = np.full(layout.shape[0] * layout.shape[1], -1, dtype=np.int64)
    rand_grid[rand_flat] = np.arange(n)
    rand_grid = rand_grid.reshape(layout.shape)
    out: dict[str, Any] = {"n_genes": int(n), "shape": list(layout.shape), "geometry": layout.geometry}
    out["neighbour_correlation"] = _neighbour_mean(R, np.asarray(layout.grid))
    out["neighbour_correlation_random"] = _neighbour_mean(R, rand_grid)
    nr = out["neighbour_correlation_random"]
    out["neighbour_ratio"] = float(out["neighbour_correlation"] / nr) if nr and nr > 0 else float("inf")
    if n < 3:
        out.update(spearman=float("nan"), spearman_random=float("nan"), gw_objective=float("nan"),
                   gw_objective_random=float("nan"), n_pairs=int(n * (n - 1) // 2))
        return out
    i, k = _pairs(n, max_pairs, rng)
    dc = 1.0 - R[i, k]
    del R
    pos = layout.pixel_of_gene.astype(np.float64)
    rpos = rand_pog.astype(np.float64)
    d_lay = np.hypot(*(pos[i] - pos[k]).T)
    d_rand = np.hypot(*(rpos[i] - rpos[k]).T)
    out["spearman"] = _spearman(dc, d_lay)
    out["spearman_random"] = _spearman(dc, d_rand)
    # the mean pixel distance over pairs is the same for any placement on the same pixels (all pairs);
    # use the layout's sample for the scale so layout and random are scored on one scale
    s = dc.mean() / d_lay.mean() if d_lay.mean() > 0 else 1.0
    out["gw_objective"] = float(np.mean((dc - s * d_lay) ** 2))
    out["gw_objective_random"] = float(np.mean((dc - s * d_rand) ** 2))
    out["n_pairs"] = len(i)
    return out
