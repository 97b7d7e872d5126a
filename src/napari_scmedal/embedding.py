"""Two principal components of a matrix's rows, for drawing cells or latents as a 2-D point cloud.

Pure numpy / scikit-learn (no Qt): used by the napari reader and model widget to place points, and by
:mod:`napari_scmedal.train_process` to compute the latents' display coordinates in the training process.
"""

from __future__ import annotations

import numpy as np

from .selection import subsample


def fit_pca_2d(Xfit, seed=0):
    """Fit two principal axes on the rows of ``Xfit``; return ``project(X) -> (n, 2) float32`` for any
    rows with the same columns (dense or sparse; sparse rows are never densified)."""
    from scipy import sparse
    from sklearn.decomposition import PCA

    Xfit = Xfit.toarray() if sparse.issparse(Xfit) else np.asarray(Xfit)
    k = min(2, Xfit.shape[1], Xfit.shape[0])
    pca = PCA(n_components=k, random_state=seed, svd_solver="full" if Xfit.shape[1] <= 500 else "randomized")
    pca.fit(Xfit.astype(np.float32))
    comps = pca.components_.astype(np.float32)  # (k, genes)
    offset = pca.mean_.astype(np.float32) @ comps.T

    def project(X):
        proj = X @ comps.T if sparse.issparse(X) else np.asarray(X, dtype=np.float32) @ comps.T
        Y = np.asarray(proj, dtype=np.float32) - offset
        if k < 2:
            Y = np.column_stack([Y, np.zeros((Y.shape[0], 2 - k), np.float32)])
        return Y.astype(np.float32)

    return project


def pca_2d(X, seed=0, max_fit=5000):
    """First two principal components of the rows of ``X`` (dense or sparse), float32 (n, 2).

    The axes are fitted on at most ``max_fit`` rows (seeded subsample) and every row is projected,
    so large data never needs a dense copy and opens quickly.
    """
    n = X.shape[0]
    if n < 2 or X.shape[1] < 1:
        return np.zeros((n, 2), np.float32)
    return fit_pca_2d(X[subsample(n, max_fit, seed)], seed)(X)


def latents_2d(model, adata=None, kinds=None) -> dict:
    """``{kind: (latent (n, d), its 2-D PCA (n, 2))}`` of ``adata``'s cells for each trained latent (or
    ``kinds``): what the model widget draws as latent clouds (computed in the training process or a worker)."""
    out = {}
    for kind in model.trained_kinds if kinds is None else kinds:
        Z = np.asarray(model.get_latent_representation(kind, adata=adata))
        out[kind] = (Z, pca_2d(Z))
    return out


__all__ = ["fit_pca_2d", "latents_2d", "pca_2d"]
