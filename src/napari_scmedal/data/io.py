"""Reading AnnData files without ever writing to them, and the one check that a path is a readable ``.h5ad``."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import h5py

from ..errors import DataError


def check_h5ad_file(path) -> Path:
    """The path of an existing HDF5 (``.h5ad``) file, checked before anything opens it.

    Parameters
    ----------
    path
        A path (str or path-like; ``~`` is expanded).

    Returns
    -------
    pathlib.Path
        The expanded path.

    Raises
    ------
    DataError
        If nothing exists there, it is a folder, or the file is not HDF5, each with the fix.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise DataError(f"File not found: {path}. Check the path (an .h5ad file is expected).")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .h5ad file. Pass the path of the .h5ad file itself.")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an HDF5/.h5ad file. Convert it to .h5ad first (e.g. anndata.read_csv / "
                        "scanpy.read_10x_h5 followed by adata.write_h5ad).")
    return path


def read_h5ad(path, layer: str | None = None, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file fully into memory (or open it backed); the file is opened read-only and never written.

    Parameters
    ----------
    path
        Path of the ``.h5ad`` file.
    layer
        If given, the named layer (e.g. ``"counts"``) becomes ``X`` of the returned object (the
        original ``X`` is kept as ``layers["X"]`` unless a layer of that name exists). ``X`` may be
        dense or sparse either way.
    backed
        Open the file backed (``mode "r"``: the matrix stays on disk) instead of reading it; no ``layer``.

    Raises
    ------
    DataError
        If the file does not exist, is not an HDF5/h5ad file, or lacks the requested layer.
    """
    path = check_h5ad_file(path)
    if backed and layer is not None:
        raise DataError("A layer cannot be chosen for backed reading: open the file in memory to use a layer.")
    try:
        # anndata opens the HDF5 file with mode "r" either way: nothing can be written.
        adata = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    except Exception as exc:  # corrupt or foreign HDF5 file
        raise DataError(
            f"Could not read {path} as AnnData ({type(exc).__name__}: {exc}). "
            "Check that it was written by anndata (adata.write_h5ad)."
        ) from exc
    if layer is not None:
        adata = use_layer(adata, layer, source=str(path))
    return adata


def use_layer(adata: ad.AnnData, layer: str, source: str | None = None) -> ad.AnnData:
    """Return ``adata`` with ``layers[layer]`` moved into ``X`` (in place on this in-memory object);
    ``layer="raw"`` (no layer of that name) gives a new AnnData of ``adata.raw`` (its genes) and ``adata.obs``."""
    if layer == "raw" and "raw" not in adata.layers and adata.raw is not None:
        from .validation import resolve_layer

        return resolve_layer(adata, layer)[0]
    if layer not in adata.layers:
        where = f" in {source}" if source else ""
        available = sorted(adata.layers.keys())
        raise DataError(
            f"Layer {layer!r} not found{where}. Available layers: {available or 'none'}"
            f"{', or raw (adata.raw)' if adata.raw is not None else ''}. "
            "Pass one of these as layer=..., or layer=None to use X."
        )
    old_x = adata.X
    adata.X = adata.layers[layer]
    if "X" not in adata.layers and old_x is not None:
        adata.layers["X"] = old_x
    return adata


__all__ = ["check_h5ad_file", "read_h5ad", "use_layer"]
