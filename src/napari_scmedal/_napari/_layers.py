"""AnnData <-> napari layer-data helpers (pure Python: no napari or Qt imports here).

A "cells layer" is a napari Points layer with one point per cell, placed at a 2-D embedding of
the cells, whose ``features`` are the AnnData ``obs`` columns and whose ``metadata["adata"]``
holds the AnnData itself so the widgets can reach the expression data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_scmedal.embedding import pca_2d

#: on-screen size (in world units) of the longest side of a cells layer
DISPLAY_SPAN = 400.0
#: on-screen point size of a cells layer, in world units
POINT_SIZE = 4.0
#: metadata key under which a cells layer keeps its AnnData
ADATA_KEY = "adata"


def log_normalised(X, counts: bool | None = None):
    """Log1p-normalised expression of the rows of ``X`` (a copy): raw counts (``counts=None``: detected
    by :func:`napari_scmedal.data.detect_input_kind`) are normalised to 10^4 per cell, log data kept."""
    from scipy import sparse

    from napari_scmedal.data import detect_input_kind
    from napari_scmedal.data.normalize import log_normalize
    from napari_scmedal.errors import DataError

    vals = X.data if sparse.issparse(X) else np.asarray(X)
    n_bad = int(np.size(vals) - np.count_nonzero(np.isfinite(vals)))
    if n_bad:
        raise DataError(f"The expression matrix has {n_bad} NaN or infinite values, so the cells cannot be placed "
                        "(no obsm['X_umap'] or obsm['X_pca'] to use instead). Remove or impute them (e.g. "
                        "adata.X = np.nan_to_num(adata.X)), or store a 2-D embedding in obsm['X_umap'].")
    X = X.astype(np.float32)
    if counts is None:
        counts = detect_input_kind(X) == "counts"
    return log_normalize(X) if counts else X  # the one normalisation (10^4 per cell, log1p) training uses


def most_variable(X, n_top: int = 2000) -> np.ndarray:
    """Sorted column indices of the ``n_top`` highest-variance columns of ``X`` (dense or sparse)."""
    from scipy import sparse

    if X.shape[1] <= n_top:
        return np.arange(X.shape[1])
    if sparse.issparse(X):
        Xc = X.tocsc()
        mean = np.asarray(Xc.mean(axis=0)).ravel()
        var = np.asarray(Xc.multiply(Xc).mean(axis=0)).ravel() - mean**2
    else:
        var = np.asarray(X).var(axis=0)
    return np.sort(np.argsort(var)[::-1][:n_top])


def file_embedding(adata):
    """``(coords (n, 2) float32, key)`` from ``obsm["X_umap"]`` or ``obsm["X_pca"]``, or None."""
    for key in ("X_umap", "X_pca"):
        if key in adata.obsm and np.asarray(adata.obsm[key]).shape[1] >= 2:
            return np.asarray(adata.obsm[key])[:, :2].astype(np.float32), key
    return None


def embedding_2d(adata):
    """Return ``(coords (n, 2) float32, source)`` for drawing the cells of ``adata``.

    ``source`` is "X_umap" or "X_pca" when the file provides one, else "PCA of log-normalised
    genes" (computed on the 2,000 most variable genes; counts are normalised first).
    """
    found = file_embedding(adata)
    if found is not None:
        return found
    X = log_normalised(adata.X)
    return pca_2d(X[:, most_variable(X)]), "PCA of log-normalised genes"


def features_from_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Layer features: the obs columns (index dropped; categoricals and numbers kept as they are)."""
    feats = obs.copy()
    feats.index = pd.RangeIndex(len(feats))
    for col in feats.columns:
        if feats[col].dtype == object:
            feats[col] = feats[col].astype(str).astype("category")
    return feats


def default_color_key(obs: pd.DataFrame, preferred=("batch", "sample", "donor")):
    """The obs column to colour points by: the first of ``preferred`` present, else the first categorical."""
    for key in preferred:
        if key in obs.columns:
            return key
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype) or obs[col].dtype == object:
            return col
    return None


def points_data(coords):
    """napari (row, col) data from (x, y) coordinates: y points up on screen, like a scatter plot."""
    coords = np.asarray(coords, dtype=np.float32)
    return np.column_stack([-coords[:, 1], coords[:, 0]])


def display_scale(data):
    """Per-axis scale making the longest side of ``data`` span :data:`DISPLAY_SPAN` world units."""
    if len(data) == 0:
        return (1.0, 1.0)
    span = float(np.max(np.ptp(data, axis=0)))
    s = DISPLAY_SPAN / span if span > 0 else 1.0
    return (s, s)


#: obs column names treated as batch-like (the batch palette) when no batch key is known.
BATCH_LIKE = ("batch", "sample", "donor", "protocol", "plate", "run", "library")


def color_cycle(features, key, batch_key=None):
    """The colour cycle for colouring points by ``key``: the batch palette when ``key`` is the batch key (or
    a batch-like name), the cell-type palette otherwise (:func:`categorical_palette`)."""
    kind = "batch" if key == batch_key or str(key).lower() in BATCH_LIKE else "label"
    return categorical_palette(features[key].nunique(), kind)


def cells_layer_data(adata, name, coords=None, color_by=None, source=None, extra_metadata=None, batch_key=None):
    """A napari layer-data tuple ``(data, kwargs, "points")`` for a cells layer of ``adata``."""
    if coords is None:
        coords, source = embedding_2d(adata)
    data = points_data(coords)
    features = features_from_obs(adata.obs)
    color_by = color_by if color_by in features.columns else default_color_key(adata.obs)
    metadata = {ADATA_KEY: adata, "embedding": source}
    if extra_metadata:
        metadata.update(extra_metadata)
    scale = display_scale(data)
    kwargs = {
        "name": name,
        "features": features,
        "scale": scale,
        "size": POINT_SIZE / scale[0],  # sizes are in data units: about POINT_SIZE world units on screen
        "border_width": 0,
        "metadata": metadata,
    }
    if color_by is not None:
        kwargs["face_color"] = color_by
        kwargs["face_color_cycle"] = color_cycle(features, color_by, batch_key)
    return (data, kwargs, "points")


#: Okabe & Ito's colour-blind-safe palette (black left out): batches.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999"]
#: Paul Tol's colour-blind-safe "muted" palette: cell types and other keys, so they never share batch colours.
TOL_MUTED = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499"]


def categorical_palette(n, kind: str = "label"):
    """``n`` distinct RGBA colours, colour-blind safe up to 8 batches / 9 labels: Okabe-Ito for batches
    (``kind="batch"``), Paul Tol's muted set for labels, so batch and cell-type colours differ; past that
    tab20, then a sampled turbo colormap."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    n = max(int(n), 1)
    base = OKABE_ITO if kind == "batch" else TOL_MUTED
    if n <= len(base):
        cols = [to_rgb(c) for c in base[:n]]
    elif n <= 20:
        cols = colormaps["tab20"].colors[:n]
    else:
        cols = colormaps["turbo"](np.linspace(0.05, 0.95, n))[:, :3]
    return [tuple(float(v) for v in c[:3]) + (1.0,) for c in cols]


def legend_layer_data(layers, key, name, titles=None):
    """A points layer-data tuple that explains colour-coded point clouds: a title above each cloud (``titles``,
    one per layer) and, right of the last cloud, one coloured marker and name per category of ``key`` (the
    colours are read from the first layer, so the legend always matches what is drawn)."""
    first = layers[0]
    cats = first.features[key].astype(str).to_numpy()
    colors, names = [], []
    for c in dict.fromkeys(cats):  # categories in order of appearance
        i = int(np.flatnonzero(cats == c)[0])
        names.append(c)
        colors.append(tuple(float(v) for v in first.face_color[i]))
    pts, texts, faces = [], [], []
    (y0, _), (y1, x1) = (np.asarray(v)[-2:] for v in layers[-1].extent.world)
    step = (y1 - y0) / max(len(names) + 2, 12)
    for k, (nm, col) in enumerate(zip(names, colors)):
        pts.append((y0 + (k + 1) * step, x1 + 0.04 * (y1 - y0)))  # a little right of the last cloud
        texts.append(f"  {nm}")
        faces.append(col)
    pts.insert(0, (y0, pts[0][1] if pts else x1))
    texts.insert(0, f"colour: {key}")
    faces.insert(0, (0.0, 0.0, 0.0, 0.0))
    for ly, title in zip(layers, titles or []):
        (a0, b0), (a1, b1) = (np.asarray(v)[-2:] for v in ly.extent.world)
        pts.append((a0 - 0.05 * (a1 - a0), (b0 + b1) / 2))
        texts.append(title)
        faces.append((0.0, 0.0, 0.0, 0.0))
    size = max(step * 0.6, 1e-3)
    kwargs = {"name": name, "features": {"label": texts}, "face_color": np.asarray(faces), "border_width": 0,
              "size": size, "text": {"string": "{label}", "size": 9, "color": "white", "anchor": "upper_left",
                                     "translation": [-size * 0.6, size * 0.8]},
              "metadata": {"scmedal_legend": True}}
    return (np.asarray(pts, dtype=float), kwargs, "points")
