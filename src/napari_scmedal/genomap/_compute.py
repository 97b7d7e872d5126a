"""Computing genomap layouts: gene-gene correlation distance vs grid geometry, Gromov-Wasserstein.

Two geometries (see docs/genomap.md for the full description):

``"euclidean"`` (default)
    Square-loss Gromov-Wasserstein between the genes' correlation distances ``C1`` and the squared
    2-D distances between pixels ``D2``. Restricted to one-to-one assignments (permutation
    matrices ``T``) the objective is, up to a constant, ``f(T) = -tr(C1 T D2 T^T)``. Because
    ``D2_jl = |p_j|^2 + |p_l|^2 - 2 p_j . p_l`` has rank 4, the gradient ``-2 C1 T D2`` costs
    ``O(n^2)`` instead of ``O(n^3)``. Along any direction between doubly stochastic matrices
    ``f`` is concave (``f(S - T) = -2 tr(dP^T R dP) <= 0`` with ``R`` the gene correlation matrix,
    positive semi-definite), so the exact line search of conditional gradient always takes the full
    step: every iterate is a permutation and each step is one linear assignment problem, solved
    exactly with POT's network simplex (``ot.emd``). The start is a spectral embedding of the genes
    (top two eigenvectors of the double-centred correlation matrix) rasterised onto the grid.
    Iterations stop when the objective improves by less than ``tol`` (relative) or at ``max_iter``.

``"radial"`` (compatible with the ``genomap`` package, version 1.3.6)
    Reproduces the package's fixed-point iteration ``T <- EMD(-C1 T log(Dr + 1e-15)^T)`` started
    from the uniform coupling, where ``Dr_jl = | |p_j| - |p_l| |`` is the difference of the two
    pixels' distances from the grid centre. Since ``Dr`` only depends on the rings (distinct
    distances from the centre), the iteration is solved exactly on genes x rings (ring capacities
    = ring sizes), which is what makes it fast; the package's stopping rule (error checked every
    10 iterations, at most 1000) is reproduced, cycles included. Within a ring, genes are placed by
    a deterministic rule: genes sorted by their angle in the spectral embedding, pixels sorted by
    their angle around the centre, matched in order with the cyclic shift that best aligns them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import LayoutError
from ._layout import GEOMETRIES, GenomapLayout, _check_shape, grid_shape

__all__ = ["compute_layout", "gene_correlation", "pixel_coordinates", "radial_rings"]

# rows converted to dense float32 at a time while accumulating the gene-gene covariance
_CORR_CHUNK_ELEMENTS = 8_000_000
_EMD_MAX_ITER = 100_000_000


# ----------------------------------------------------------------------------- correlation
def _as_matrix(X):
    if sp.issparse(X):
        return X.tocsr()
    if hasattr(X, "X") and hasattr(X, "var_names"):  # AnnData
        return _as_matrix(X.X)
    X = np.asarray(X)
    if X.dtype == object or not np.issubdtype(X.dtype, np.number):
        raise LayoutError(f"X must be a numeric cells x genes matrix, got dtype {X.dtype}. "
                          "Pass expression values (e.g. adata.X or a log-normalised layer).")
    return X


def gene_correlation(X) -> np.ndarray:
    """Pearson correlation between the gene columns of ``X`` (cells x genes), float64 (n, n).

    Constant genes (zero variance) have correlation 0 with every other gene and 1 with themselves,
    so their correlation distance ``1 - r`` is 1 to every other gene (defined, never NaN).
    Dense or scipy sparse input; large inputs are processed in row chunks. NaN or infinite values
    raise :class:`LayoutError`.
    """
    X = _as_matrix(X)
    if X.ndim != 2:
        raise LayoutError(f"X must be a 2-D cells x genes matrix, got {X.ndim} dimension(s).")
    m, n = X.shape
    if m < 2:
        raise LayoutError(f"A genomap layout needs at least 2 cells to correlate genes, got {m}. "
                          "Pass more cells.")
    sparse = sp.issparse(X)
    if sparse:
        data = X.data
        if data.size and not np.all(np.isfinite(data)):
            raise LayoutError("X contains NaN or infinite values; genomap layouts need finite expression. "
                              "Remove or impute those values (e.g. np.nan_to_num) first.")
        mu = np.asarray(X.sum(0, dtype=np.float64)).ravel() / m
    else:
        if not np.all(np.isfinite(X)):
            raise LayoutError("X contains NaN or infinite values; genomap layouts need finite expression. "
                              "Remove or impute those values (e.g. np.nan_to_num) first.")
        mu = X.sum(0, dtype=np.float64) / m
    # centred Gram in float32 (half the cost of float64, ample precision for a layout), in row
    # chunks so that sparse or very tall inputs never become one dense copy; dense and sparse
    # inputs take the same arithmetic path and give identical layouts
    chunk = max(1, _CORR_CHUNK_ELEMENTS // max(n, 1))
    cov = np.zeros((n, n), dtype=np.float32)
    mu32 = mu.astype(np.float32)
    for start in range(0, m, chunk):
        block = X[start:start + chunk]
        block = block.toarray() if sparse else block
        block = np.asarray(block, dtype=np.float32) - mu32
        cov += block.T @ block
    cov = cov.astype(np.float64)
    cov /= m
    var = np.clip(np.diag(cov).copy(), 0.0, None)
    # zero variance up to round-off of the one-pass formula
    const = var <= 1e-12 * np.maximum(1.0, mu * mu)
    sd = np.sqrt(np.where(const, 1.0, var))
    R = cov
    R /= sd[:, None]
    R /= sd[None, :]
    R[const, :] = 0.0
    R[:, const] = 0.0
    np.clip(R, -1.0, 1.0, out=R)
    np.fill_diagonal(R, 1.0)
    return R


# ----------------------------------------------------------------------------- geometry
def pixel_coordinates(shape) -> np.ndarray:
    """(rows*cols, 2) float64 (row, col) of every pixel, in row-major order."""
    rows, cols = _check_shape(shape)
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.column_stack([r, c]).astype(np.float64)


def _centre_offsets(n: int) -> np.ndarray:
    """The genomap package's grid coordinates along one axis (``createMeshDistance``)."""
    if n % 2 == 0:
        return np.arange(n, dtype=np.float64) - n // 2          # linspace(-n/2, n/2 - 1, n)
    return np.arange(n, dtype=np.float64) - (n - 1) // 2         # linspace(-(n-1)/2, (n-1)/2, n)


def radial_rings(shape) -> tuple[np.ndarray, np.ndarray]:
    """Ring of every pixel as the genomap package defines it.

    Returns ``(ring_sq, angle)``, both (rows, cols): ``ring_sq`` is the integer squared distance
    from the grid centre (equal values = same ring; the package's pixel "distance" is the difference
    of square roots of these), ``angle`` the pixel's angle around the centre in radians, measured
    from the +column direction towards row 0 (counter-clockwise on screen), in ``[0, 2 pi)``.
    The centre is row ``rows // 2`` for an even number of rows and ``(rows - 1) / 2`` for an odd one
    (same for columns), exactly like the package's ``createMeshDistance``.
    """
    rows, cols = _check_shape(shape)
    x = _centre_offsets(rows)[:, None]   # row offsets
    y = _centre_offsets(cols)[None, :]   # column offsets
    ring_sq = (x * x + y * y).astype(np.int64)
    angle = np.mod(np.arctan2(-x, y), 2 * np.pi)
    return ring_sq, np.broadcast_to(angle, (rows, cols)).copy()


# ----------------------------------------------------------------------------- spectral start
def _spectral_embedding(R: np.ndarray, seed: int) -> np.ndarray:
    """2-D embedding of genes: top two eigenvectors of the double-centred correlation matrix."""
    n = R.shape[0]
    if n == 1:
        return np.zeros((1, 2))
    mr = R.mean(0)
    mm = mr.mean()
    k = min(2, n)
    if n <= 600:
        Rc = R - mr[None, :]
        Rc -= mr[:, None]
        Rc += mm
        w, V = np.linalg.eigh(Rc)
        w, V = w[::-1][:k], V[:, ::-1][:, :k]
    else:
        from scipy.sparse.linalg import LinearOperator, eigsh

        def matmat(V):  # double-centred R times V without forming the centred matrix
            V = V.reshape(n, -1)
            s = V.sum(0)
            return R @ V - np.outer(mr, s) - (mr @ V)[None, :] + mm * s[None, :]

        op = LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        w, V = eigsh(op, k=k, which="LA", v0=v0, tol=1e-8)
        order = np.argsort(-w, kind="stable")
        w, V = w[order], V[:, order]
    # deterministic sign: the largest-magnitude entry of each eigenvector is positive
    for j in range(V.shape[1]):
        i = int(np.argmax(np.abs(V[:, j])))
        if V[i, j] < 0:
            V[:, j] = -V[:, j]
    emb = V * np.sqrt(np.clip(w, 0.0, None))[None, :]
    if emb.shape[1] < 2:
        emb = np.column_stack([emb, np.zeros(n)])
    return emb


def _rasterise(emb: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Gene -> pixel (index into the first n row-major pixels) from a 2-D embedding.

    Genes are cut into consecutive quantile groups of ``cols`` along one embedding axis (one group
    per grid row, the last possibly partial), then sorted along the other axis within their row.
    The leading axis goes along the grid's longer side.
    """
    n = emb.shape[0]
    a, b = (0, 1) if rows >= cols else (1, 0)
    idx = np.arange(n)
    by_a = np.lexsort((idx, emb[:, a]))
    perm = np.empty(n, dtype=np.int64)
    for start in range(0, n, cols):
        g = by_a[start:start + cols]
        g = g[np.lexsort((g, emb[g, b]))]
        perm[g] = start + np.arange(len(g))
    return perm


# ----------------------------------------------------------------------------- euclidean GW
def _emd_assignment(cost: np.ndarray, b: np.ndarray | None = None, warm=None, scale=None):
    """Exact min-cost assignment of rows (supply 1 each) to columns (capacity ``b``), with POT.

    ``cost`` is overwritten. ``warm``: dual potentials of a previous, similar problem (same
    ``scale``) to warm-start the network simplex. Returns (column of each row, duals, scale).
    """
    import ot

    n, k = cost.shape
    if scale is None:
        lo, hi = float(cost.min()), float(cost.max())
        scale = (lo, hi - lo if hi > lo else 1.0)
    # POT's network simplex is most reliable on a non-negative, unit-range cost
    c = cost
    c -= scale[0]
    c /= scale[1]
    a = np.ones(n)
    b = np.ones(k) if b is None else np.asarray(b, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"potentials_init": warm} if warm is not None else {}
        try:
            S, log = ot.emd(a, b, c, numItermax=_EMD_MAX_ITER, log=True, **kw)
        except TypeError:  # POT without potentials_init
            S, log = ot.emd(a, b, c, numItermax=_EMD_MAX_ITER, log=True)
    choice = S.argmax(1)
    ok = np.allclose(S[np.arange(n), choice], 1.0) and (log.get("warning") is None)
    if not ok or (b is not None and np.any(np.bincount(choice, minlength=k) > np.rint(b))):
        # fall back to the Hungarian method (rare: numerical trouble in the network simplex)
        from scipy.optimize import linear_sum_assignment

        cols = np.repeat(np.arange(k), np.rint(b).astype(np.int64))
        _, j = linear_sum_assignment(c[:, cols])
        choice = cols[j]
        return choice, None, scale
    return choice, (log["u"], log["v"]), scale


def _gw_euclidean(R: np.ndarray, P: np.ndarray, perm: np.ndarray, max_iter: int, tol: float):
    """Conditional gradient on permutations for ``f = -tr(C1 T D2 T^T)`` (see module docstring)."""
    n = R.shape[0]
    # C1 = 1 - R is never formed: C1 @ V = 1 (1^T V) - R @ V
    c = n - R.sum(1)
    P = P - P.mean(0)
    P = P / (float(np.abs(P).max()) or 1.0)
    q = (P * P).sum(1)
    PQ = np.column_stack([P, q])            # pixel features (n, 3)

    def objective(pm):
        Pp = P[pm]
        U = Pp.sum(0)[None, :] - R @ Pp     # C1 @ Pp
        return -(2.0 * c @ q[pm] - 2.0 * np.sum(Pp * U)), U

    f, U = objective(perm)
    history = [f]
    it = 0
    warm = emd_scale = None
    for it in range(1, max_iter + 1):
        # linearised cost of gene i at pixel j, up to per-gene constants and a factor 2:
        # 2 U_i . p_j - c_i |p_j|^2, one (n, 3) x (3, n) product
        cost = np.column_stack([2.0 * U, -c]) @ PQ.T
        new, warm, emd_scale = _emd_assignment(cost, warm=warm, scale=emd_scale)
        if np.array_equal(new, perm):
            it -= 1
            break
        f_new, U_new = objective(new)
        if f_new >= f:  # no strict improvement (round-off): keep the current layout
            it -= 1
            break
        rel = (f - f_new) / max(abs(f), 1e-300)
        perm, f, U = new, f_new, U_new
        history.append(f)
        if rel < tol:
            break
    return perm, {"iterations": it, "objective": history}


# ----------------------------------------------------------------------------- radial (genomap-compatible)
def _radial_rings_of(pixels_flat: np.ndarray, shape):
    ring_sq, angle = radial_rings(shape)
    rs = ring_sq.ravel()[pixels_flat]
    values, ring = np.unique(rs, return_inverse=True)
    return values, ring, angle.ravel()[pixels_flat]


def _radial_iteration(C1: np.ndarray, ring_values: np.ndarray, sizes: np.ndarray, max_iter: int):
    """The genomap package's fixed-point iteration, on genes x rings. Returns (ring of gene, info)."""
    n = C1.shape[0]
    rho = np.sqrt(ring_values.astype(np.float64))
    L = np.log(np.abs(rho[:, None] - rho[None, :]) + 1e-15)      # (R, R): log(Dr + 1e-15) by ring
    c = C1.sum(1)
    # iteration 1 from the uniform coupling: tens_ij = -c_i * sum_l L[j, l] / n^2
    cost = -c[:, None] * (L @ sizes)[None, :]
    state = _emd_assignment(cost, sizes)[0]
    warm = emd_scale = None
    seen = {state.tobytes(): 1}
    states = [None, state]
    k = 1
    stop = None
    while k < max_iter:
        order = np.argsort(state, kind="stable")
        counts = np.bincount(state, minlength=len(sizes))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        A = np.zeros((n, len(sizes)))
        nz = counts > 0
        A[:, nz] = np.add.reduceat(C1[:, order], starts[nz], axis=1)   # A = C1 @ onehot(state)
        cost = -(A @ L.T)
        # warm start from the previous step's duals (one cost scale for all steps)
        new, warm, emd_scale = _emd_assignment(cost, sizes, warm=warm, scale=emd_scale)
        k += 1
        if np.array_equal(new, state):
            stop = ("converged", k - 1)
            break
        key = new.tobytes()
        if key in seen:  # the package would cycle until max_iter: jump to its last state
            j = seen[key]
            period = k - j
            final = j + (max_iter - j) % period
            stop = ("cycle", period)
            state = states[final]
            k = max_iter
            break
        seen[key] = k
        states.append(new)
        state = new
    return state, {"iterations": int(k), "stop": stop[0] if stop else "max_iter",
                   "cycle_period": int(stop[1]) if stop and stop[0] == "cycle" else None}


def _place_in_rings(ring: np.ndarray, pix_ring: np.ndarray, pix_angle: np.ndarray, emb: np.ndarray):
    """Deterministic place within each ring: genes by embedding angle, pixels by angle, best cyclic shift."""
    n = len(ring)
    gene_angle = np.mod(np.arctan2(emb[:, 1], emb[:, 0]), 2 * np.pi)
    perm = np.empty(n, dtype=np.int64)
    for k in np.unique(ring):
        genes = np.flatnonzero(ring == k)
        pix = np.flatnonzero(pix_ring == k)
        genes = genes[np.lexsort((genes, gene_angle[genes]))]
        pix = pix[np.lexsort((pix, pix_angle[pix]))]
        m = len(genes)
        if m > 1:
            ga, pa = gene_angle[genes], pix_angle[pix]
            best, best_cost = 0, np.inf
            for s in range(m):
                d = np.abs(ga - np.roll(pa, -s))
                cost = np.minimum(d, 2 * np.pi - d).sum()
                if cost < best_cost - 1e-12:
                    best, best_cost = s, cost
            pix = np.roll(pix, -best)
        perm[genes] = pix
    return perm


# ----------------------------------------------------------------------------- public
def compute_layout(X, shape=None, genes: Sequence[str] | None = None, geometry: str = "euclidean",
                   seed: int = 0, max_iter: int | None = None, tol: float = 1e-4) -> GenomapLayout:
    """Compute a genomap layout: a one-to-one gene -> pixel assignment of a ``rows x cols`` grid.

    Parameters
    ----------
    X : cells x genes matrix (dense or scipy sparse; AnnData uses ``.X``), finite values.
    shape : (rows, cols) with ``rows * cols >= n_genes``; None (default) = :func:`grid_shape` (the
        smallest square that fits, less any empty rows: 54 x 54 for 2,916 genes).
        With fewer genes than pixels the genes take the first ``n_genes`` pixels (row-major for
        ``"euclidean"``, the genomap package's column-major order for ``"radial"``); the other pixels
        stay empty (masked, NaN in :meth:`GenomapLayout.project`).
    genes : gene names in the column order of ``X`` (default: an AnnData's ``var_names``, else
        ``"gene0", "gene1", ...``).
    geometry : ``"euclidean"`` (true 2-D neighbourhoods) or ``"radial"`` (the genomap package's rings).
    seed : seeds the eigen-solver's start vector; the result is a deterministic function of
        ``(X, shape, geometry, seed, max_iter, tol)``.
    max_iter : assignment steps; default 10 for ``"euclidean"``, 1000 (the package's) for ``"radial"``.
    tol : ``"euclidean"`` stops when one step improves the objective by less than this (relative).
    """
    t0 = time.perf_counter()
    if geometry not in GEOMETRIES:
        raise LayoutError(f"Unknown geometry {geometry!r}; use 'euclidean' (true 2-D distances) or "
                          "'radial' (compatible with the genomap package).")
    if genes is None and hasattr(X, "var_names") and hasattr(X, "X"):  # AnnData: its gene names
        genes = [str(g) for g in X.var_names]
    Xm = _as_matrix(X)
    if Xm.ndim != 2:
        raise LayoutError(f"X must be a 2-D cells x genes matrix, got shape {getattr(Xm, 'shape', None)}.")
    n = Xm.shape[1]
    if genes is None:
        genes = [f"gene{i}" for i in range(n)]
    genes = [str(g) for g in genes]
    if len(genes) != n:
        raise LayoutError(f"{len(genes)} gene names for {n} columns of X; pass one name per column.")
    if n < 1:
        raise LayoutError("X has no gene columns; a genomap needs at least one gene.")
    if shape is None:
        shape = grid_shape(n)
    rows, cols = _check_shape(shape)
    if n > rows * cols:
        k = grid_shape(n)
        raise LayoutError(f"{n} genes do not fit a {rows} x {cols} genomap ({rows * cols} pixels). Use a "
                          f"bigger shape: the smallest grid that fits is shape={k} ({k[0] * k[1]} pixels), "
                          f"or select at most {rows * cols} genes.")
    R = gene_correlation(Xm)
    t_corr = time.perf_counter() - t0
    emb = _spectral_embedding(R, seed)
    info: dict = {"geometry": geometry, "seed": int(seed), "n_genes": n, "n_cells": int(Xm.shape[0])}
    if geometry == "euclidean":
        max_iter = 10 if max_iter is None else int(max_iter)
        perm = _rasterise(emb, rows, cols)                 # index into the first n row-major pixels
        P = pixel_coordinates((rows, cols))[:n]
        if n > 2 and max_iter > 0:
            perm, gw = _gw_euclidean(R, P, perm, max_iter, tol)
        else:
            gw = {"iterations": 0, "objective": []}
        flat = perm                                        # row-major pixel index
        info.update(iterations=gw["iterations"], objective=[float(v) for v in gw["objective"]])
    else:
        max_iter = 1000 if max_iter is None else int(max_iter)
        # the package fills the first n pixels in column-major order (its reshape(order="F"))
        pix_cm = np.arange(rows * cols).reshape(rows, cols).T.ravel()[:n]  # row-major ids, column-major order
        values, pix_ring, pix_angle = _radial_rings_of(pix_cm, (rows, cols))
        sizes = np.bincount(pix_ring, minlength=len(values)).astype(np.float64)
        if n == 1 or max_iter < 1:
            ring = np.sort(pix_ring)  # innermost rings first
            rinfo = {"iterations": 0, "stop": "trivial", "cycle_period": None}
        else:
            ring, rinfo = _radial_iteration(1.0 - R, values, sizes, max_iter)
        local = _place_in_rings(ring, pix_ring, pix_angle, emb)
        flat = pix_cm[local]
        info.update(rinfo)
        info["ring_sq_of_gene"] = values[ring].astype(int).tolist()
    info["seconds_correlation"] = round(t_corr, 4)
    info["seconds"] = round(time.perf_counter() - t0, 4)
    pog = np.column_stack(np.divmod(flat, cols)).astype(np.int64)
    return GenomapLayout((rows, cols), genes, pog, geometry=geometry, info=info)
