"""npe2 reader: an ``.h5ad`` file opens as a Points layer of cells (see :mod:`._layers`).

Files of at least :func:`backed_threshold_bytes` (2 GB by default; environment variable
``NAPARI_SCMEDAL_BACKED_GB``) open **backed**: obs and obsm are read, the expression matrix stays on disk.
The layer's AnnData is then a backed AnnData, so training from the model widget runs out of core and the
genomap stacks read cells on demand (docs/scaling.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._layers import cells_layer_data

#: default size from which .h5ad files open backed
BACKED_DEFAULT_GB = 2.0


def _is_h5ad(path) -> bool:
    return isinstance(path, (str, Path)) and str(path).lower().endswith(".h5ad")


def backed_threshold_bytes() -> float:
    """Files at least this large open backed (``NAPARI_SCMEDAL_BACKED_GB``, default 2 GB; 0 = always)."""
    try:
        return float(os.environ.get("NAPARI_SCMEDAL_BACKED_GB", BACKED_DEFAULT_GB)) * 1e9
    except ValueError:
        return BACKED_DEFAULT_GB * 1e9


def napari_get_reader(path):
    """Return :func:`read_h5ad_layers` when ``path`` (or every path of a list) is an ``.h5ad`` file."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_is_h5ad(p) for p in paths):
        return None
    return read_h5ad_layers


def read_h5ad_layers(path):
    """Read ``.h5ad`` file(s) (never modified) into cells layer-data tuples.

    Points sit at ``obsm["X_umap"]``, else ``obsm["X_pca"]``, else a PCA of the log-normalised
    genes; features are the obs columns; the AnnData is in ``layer.metadata["adata"]`` (backed for
    large files, see the module docstring).
    """
    from napari_scmedal.data import read_h5ad

    paths = path if isinstance(path, (list, tuple)) else [path]
    out = []
    for p in paths:
        meta = {"source_path": str(p)}
        if Path(p).exists() and Path(p).stat().st_size >= backed_threshold_bytes():
            adata, coords, source = read_backed(p)
            meta["backed"] = True
            out.append(cells_layer_data(adata, name=Path(p).stem, coords=coords, source=source, extra_metadata=meta))
            continue
        adata = read_h5ad(p)
        out.append(cells_layer_data(adata, name=Path(p).stem, extra_metadata=meta))
    return out


def read_backed(path, seed: int = 0, max_fit: int = 5000, n_top: int = 2000):
    """Open ``path`` backed (read-only) and return ``(adata, coords (n, 2), source)``.

    The file's UMAP/PCA is used when present; otherwise two principal components of the
    log-normalised expression are fitted on ``max_fit`` sampled cells (their ``n_top`` most variable
    genes) and every cell is projected block by block, so the matrix is never loaded whole.
    """
    from napari_scmedal.data import detect_input_kind, read_h5ad
    from napari_scmedal.data.ondisk import DEFAULT_CHUNK_CELLS, H5adSource
    from napari_scmedal.embedding import fit_pca_2d
    from napari_scmedal.selection import subsample

    from ._layers import file_embedding, log_normalised, most_variable

    adata = read_h5ad(path, backed=True)
    found = file_embedding(adata)
    if found is not None:
        return (adata, *found)
    with H5adSource(path, obs=adata.obs) as src:
        n = src.n_obs
        sample = src.read_rows(subsample(n, max_fit, seed))
        counts = detect_input_kind(sample) == "counts"  # decided once, from the sample, for every block
        Xs = log_normalised(sample, counts)
        keep = most_variable(Xs, n_top)
        project = fit_pca_2d(Xs[:, keep], seed)
        coords = np.empty((n, 2), np.float32)
        for a in range(0, n, DEFAULT_CHUNK_CELLS):
            block = log_normalised(src.read(a, min(a + DEFAULT_CHUNK_CELLS, n)), counts)
            coords[a:a + block.shape[0]] = project(block[:, keep])
    return adata, coords, "PCA of log-normalised genes (sampled fit)"
