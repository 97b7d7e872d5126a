"""npe2 reader: an ``.h5ad`` file opens as a Points layer of cells (see :mod:`._layers`)."""

from __future__ import annotations

from pathlib import Path

from ._layers import cells_layer_data


def _is_h5ad(path) -> bool:
    return isinstance(path, (str, Path)) and str(path).lower().endswith(".h5ad")


def napari_get_reader(path):
    """Return :func:`read_h5ad_layers` when ``path`` (or every path of a list) is an ``.h5ad`` file."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_is_h5ad(p) for p in paths):
        return None
    return read_h5ad_layers


def read_h5ad_layers(path):
    """Read ``.h5ad`` file(s) (never modified) into cells layer-data tuples.

    Points sit at ``obsm["X_umap"]``, else ``obsm["X_pca"]``, else a PCA of the log-normalised
    genes; features are the obs columns; the AnnData is in ``layer.metadata["adata"]``.
    """
    from napari_scmedal.data import read_h5ad

    paths = path if isinstance(path, (list, tuple)) else [path]
    out = []
    for p in paths:
        adata = read_h5ad(p)
        out.append(cells_layer_data(adata, name=Path(p).stem, extra_metadata={"source_path": str(p)}))
    return out
