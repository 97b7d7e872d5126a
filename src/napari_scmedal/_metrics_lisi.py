"""kNN mixing and label-conservation scores of the scIB kind, with scikit-learn only.

* :func:`lisi` -- the local inverse Simpson index (Korsunsky et al. 2019) of every cell: the effective
  number of groups among its neighbours, weighted by a Gaussian kernel whose width is set per cell so
  that the neighbour distribution has the given perplexity (the same calibration as t-SNE).
* :func:`ilisi` / :func:`clisi` -- the median LISI by batch / by label, scaled the scIB way
  (Luecken et al. 2022): iLISI ``(median - 1) / (n_batches - 1)``, 1 = batches perfectly mixed,
  0 = every neighbourhood one batch; cLISI ``(n_labels - median) / (n_labels - 1)``, 1 = every
  neighbourhood one label, 0 = labels fully mixed.
* :func:`kmeans_nmi_ari` -- NMI and ARI between the labels and a k-means clustering with as many
  clusters as labels (scib-metrics' ``nmi_ari_cluster_labels_kmeans``).

Public through :mod:`napari_scmedal.metrics`. ``benchmarks/bench_metrics_vs_scib.py`` checks these
against scib-metrics.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

#: scIB's defaults: 90 neighbours (the query cell included, then masked) and perplexity 90 // 3 = 30.
N_NEIGHBORS = 90


def _codes(groups) -> tuple[np.ndarray, int]:
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes.reshape(-1), int(codes.max()) + 1 if codes.size else 0


def _check(latent, groups) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(latent, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(groups):
        raise DataError(f"latent has shape {x.shape} but groups has {len(groups)} entries; pass one group per "
                        f"latent row.")
    codes, k = _codes(groups)
    if k < 2:
        raise DataError(f"LISI scores need at least two groups; got {k}. Use a grouping with at least two "
                        f"categories.")
    return x, codes, k


def knn(latent, n_neighbors: int = N_NEIGHBORS) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean ``(distances, indices)`` of each cell's ``n_neighbors`` nearest cells, itself included
    (scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors`); fewer when there are fewer cells."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(latent, dtype=np.float64)
    k = int(min(n_neighbors, x.shape[0]))
    return NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)


def _neighbour_weights(dist: np.ndarray, valid: np.ndarray, perplexity: float, tol: float = 1e-5,
                       max_tries: int = 50) -> np.ndarray:
    """Row-normalised ``exp(-beta_i * d_ij)`` with each row's ``beta_i`` found by bisection so that the row's
    entropy is ``log(perplexity)`` (vectorised over rows; the same search as LISI and scib-metrics)."""
    n = dist.shape[0]
    beta = np.ones(n)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    target = np.log(perplexity)

    def entropy(b):
        p = np.where(valid, np.exp(-dist * b[:, None]), 0.0)
        s = p.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(s > 0, np.log(s) + b * (dist * p).sum(1) / s, 0.0)
            p = np.where(s[:, None] > 0, p / s[:, None], 0.0)
        return h, p

    h, p = entropy(beta)
    diff = h - target
    for _ in range(max_tries):
        todo = np.abs(diff) >= tol
        if not todo.any():
            break
        up = diff > 0  # entropy too high: narrower kernel (larger beta)
        lo = np.where(todo & up, beta, lo)
        hi = np.where(todo & ~up, beta, hi)
        new = np.where(up, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2),
                       np.where(np.isinf(lo), beta / 2, (beta + lo) / 2))
        beta = np.where(todo, new, beta)
        h_new, p_new = entropy(beta)
        h, p = np.where(todo, h_new, h), np.where(todo[:, None], p_new, p)
        diff = h - target
    p[h == 0] = np.nan  # no usable neighbour (all at the same point): LISI undefined
    return p


def lisi(latent, groups, n_neighbors: int = N_NEIGHBORS, perplexity: float | None = None,
         neighbors: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Local inverse Simpson index of every cell of ``latent`` (n, d) for ``groups`` (n,).

    Parameters
    ----------
    latent : array-like, shape (n_cells, n_dims)
        The embedding.
    groups : array-like, shape (n_cells,)
        One group (batch or label) per cell.
    n_neighbors : int
        Neighbours searched per cell, the cell itself included and then left out (scIB: 90).
    perplexity : float, optional
        Effective neighbourhood size of the Gaussian kernel; default ``n_neighbors // 3`` (scIB: 30).
    neighbors : (distances, indices), optional
        Precomputed :func:`knn` output, to share one search between several groupings.

    Returns
    -------
    numpy.ndarray
        Per-cell LISI between 1 (neighbours from one group) and the number of groups (all groups
        equally represented); NaN where a cell has no neighbour at a positive distance.
    """
    x, codes, k = _check(latent, groups)
    dist, idx = neighbors if neighbors is not None else knn(x, n_neighbors)
    perplexity = float(np.floor(idx.shape[1] / 3)) if perplexity is None else float(perplexity)
    if perplexity < 1:
        raise DataError(f"LISI needs a perplexity of at least 1 (got {perplexity}); use more neighbours or cells.")
    valid = idx != np.arange(len(idx))[:, None]  # leave the cell itself out
    p = _neighbour_weights(dist, valid, perplexity)
    lab = codes[idx]
    simpson = np.zeros(len(idx))
    for g in range(k):  # sum over groups of (weight share of group g)^2
        simpson += np.nansum(np.where(lab == g, p, 0.0), axis=1) ** 2
    simpson[np.isnan(p).all(1)] = np.nan
    with np.errstate(divide="ignore"):
        return 1.0 / simpson


def ilisi(latent, batch, n_neighbors: int = N_NEIGHBORS, perplexity: float | None = None, neighbors=None) -> float:
    """Scaled integration LISI: ``(median LISI by batch - 1) / (n_batches - 1)``; 1 = batches perfectly mixed
    in every neighbourhood, 0 = every neighbourhood from one batch. Arguments as :func:`lisi`."""
    nb = _codes(batch)[1]
    value = np.nanmedian(lisi(latent, batch, n_neighbors, perplexity, neighbors))
    return float((value - 1) / (nb - 1))


def clisi(latent, label, n_neighbors: int = N_NEIGHBORS, perplexity: float | None = None, neighbors=None) -> float:
    """Scaled cell-type LISI: ``(n_labels - median LISI by label) / (n_labels - 1)``; 1 = every neighbourhood
    one label (types kept apart), 0 = labels fully mixed. Arguments as :func:`lisi`."""
    nl = _codes(label)[1]
    value = np.nanmedian(lisi(latent, label, n_neighbors, perplexity, neighbors))
    return float((nl - value) / (nl - 1))


def kmeans_nmi_ari(latent, label, seed: int = 0) -> dict[str, float]:
    """``{"nmi", "ari"}`` between ``label`` and a k-means clustering of ``latent`` into as many clusters as
    labels (scikit-learn :class:`~sklearn.cluster.KMeans`, 10 restarts, ``seed``); NMI with the arithmetic
    mean normalisation. 1 = the clusters are the labels; about 0 = unrelated."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x, codes, k = _check(latent, label)
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(codes, pred, average_method="arithmetic")),
            "ari": float(adjusted_rand_score(codes, pred))}
