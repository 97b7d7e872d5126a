"""Read-only, block-by-block access to the expression matrix of an ``.h5ad`` file.

:class:`H5adSource` reads rows of ``X`` (or a layer) without loading the matrix; :func:`open_source` makes one
from a path, a backed AnnData or a source; :func:`view_rows` gives the file rows a backed view stands for.
The streaming preprocessing (:mod:`napari_scmedal.data.stream`) and the lazy model-ready rows
(:mod:`napari_scmedal.data.lazy`) read through it.
"""

from __future__ import annotations

import os

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from .io import check_h5ad_file
from .validation import check_unique

__all__ = ["DEFAULT_CHUNK_CELLS", "H5adSource", "is_on_disk", "open_source", "row_blocks", "view_rows"]

#: Rows read from the file at once (one block). 8,192 cells x 2,916 genes is 95 MB as float32.
DEFAULT_CHUNK_CELLS = 8192


def is_on_disk(data) -> bool:
    """True for a path to an ``.h5ad`` file, an :class:`H5adSource` or a backed AnnData."""
    return isinstance(data, (str, os.PathLike, H5adSource)) or bool(getattr(data, "isbacked", False))


class H5adSource:
    """Row-block reader of one ``.h5ad`` file, opened read-only (the file is never written).

    ``obs`` (a DataFrame) and the gene names are read at once; the expression matrix (``X`` or
    ``layers[layer]``) is read only by :meth:`read` / :meth:`read_rows`. CSR sparse and dense
    matrices are supported; a CSC matrix (column-major, one row would touch every column) is refused
    with the one-line conversion to use. ``obs`` may be given to use an in-memory table instead (e.g.
    a backed AnnData whose obs the user edited).
    """

    def __init__(self, path, layer: str | None = None, obs: pd.DataFrame | None = None):
        self.path = check_h5ad_file(path)
        self.layer = layer
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"Could not open {self.path} ({exc}); check that it is a readable .h5ad file.") from None
        f = self._f
        try:
            if obs is None:
                obs = ad.io.read_elem(f["obs"])
            var = ad.io.read_elem(f["var"])
        except Exception as exc:
            self.close()
            raise DataError(f"Could not read obs/var of {self.path} as AnnData ({type(exc).__name__}: {exc}). "
                            "Check that it was written by anndata (adata.write_h5ad).") from None
        self.obs = obs
        self.var_names = pd.Index(var.index.astype(str))
        self.var = var
        if layer is None:
            if "X" not in f:
                self.close()
                raise DataError(f"{self.path} has no X matrix. Pass layer=... naming the layer with the expression "
                                "values.")
            elem = f["X"]
            self.where = f"X of {self.path.name}"
        else:
            layers = f.get("layers")
            if layers is None or layer not in layers:
                available = sorted(layers.keys()) if layers is not None else []
                self.close()
                raise DataError(f"Layer {layer!r} not found in {self.path}. Available layers: {available or 'none'}. "
                                "Pass one of these as layer=..., or layer=None to use X.")
            elem = layers[layer]
            self.where = f"layers[{layer!r}] of {self.path.name}"
        if isinstance(elem, h5py.Group):
            enc = elem.attrs.get("encoding-type", "")
            enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            if enc == "csc_matrix":
                self.close()
                raise DataError(
                    f"{self.where} is stored column-major (CSC), which cannot be read a block of cells at a time. "
                    "Convert it once: a = anndata.read_h5ad(path); a.X = a.X.tocsr(); a.write_h5ad(new_path) "
                    "(or train in memory).")
            if enc != "csr_matrix":
                self.close()
                raise DataError(f"{self.where} has an unsupported encoding {enc!r}; expected a CSR sparse or a dense "
                                "matrix as written by anndata.")
            self.sparse = True
            self._data, self._indices, self._indptr = elem["data"], elem["indices"], elem["indptr"]
            self.shape = tuple(int(x) for x in elem.attrs["shape"])
            self.dtype = self._data.dtype
        else:
            self.sparse = False
            self._dense = elem
            self.shape = tuple(int(x) for x in elem.shape)
            self.dtype = elem.dtype
        if self.shape != (len(self.obs), len(self.var_names)):
            n = self.shape
            self.close()
            raise DataError(f"{self.path}: the matrix is {n[0]} x {n[1]} but obs/var list {len(self.obs)} cells and "
                            f"{len(self.var_names)} genes; the file is inconsistent.")

    # ---------------------------------------------------------------- basics
    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def n_vars(self) -> int:
        return self.shape[1]

    @property
    def obs_names(self) -> pd.Index:
        return pd.Index(self.obs.index.astype(str))

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # pragma: no cover
                pass
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return f"H5adSource({str(self.path)!r}, {self.n_obs} cells x {self.n_vars} genes, {self.where})"

    # ---------------------------------------------------------------- reading
    def read(self, start: int, stop: int):
        """Rows ``start:stop`` of the matrix: a CSR matrix (sparse files) or an ndarray (dense)."""
        start, stop = int(start), int(min(stop, self.n_obs))
        if self._f is None:
            raise DataError(f"{self.path} was closed; open it again.")
        if not self.sparse:
            return np.asarray(self._dense[start:stop])
        ptr = np.asarray(self._indptr[start:stop + 1], dtype=np.int64)
        a, b = int(ptr[0]), int(ptr[-1])
        data = np.asarray(self._data[a:b])
        indices = np.asarray(self._indices[a:b])
        return sp.csr_matrix((data, indices, ptr - a), shape=(stop - start, self.n_vars))

    def read_rows(self, rows, window: int = DEFAULT_CHUNK_CELLS):
        """The given rows (any order, repeats allowed) in that order, reading the file in sorted windows of
        at most ``window`` rows so memory stays bounded by the window plus the result."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return sp.csr_matrix((0, self.n_vars), dtype=self.dtype) if self.sparse else np.zeros(
                (0, self.n_vars), self.dtype)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        parts, i = [], 0
        while i < srt.size:
            lo = srt[i]
            j = int(np.searchsorted(srt, lo + window, side="left"))
            blk = self.read(lo, srt[j - 1] + 1)
            parts.append(blk[srt[i:j] - lo])
            i = j
        out = sp.vstack(parts, format="csr") if self.sparse else np.concatenate(parts)
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        return out[inv]


def open_source(data, layer: str | None = None) -> H5adSource:
    """An :class:`H5adSource` for a path, a backed AnnData (its file, with its in-memory obs) or a source."""
    if isinstance(data, H5adSource):
        if layer is not None and layer != data.layer:
            return H5adSource(data.path, layer, obs=data.obs)
        return data
    if getattr(data, "isbacked", False):
        if getattr(data, "is_view", False):  # a subset of the file's cells: the file's own obs describes its rows
            return H5adSource(data.filename, layer)
        return H5adSource(data.filename, layer, obs=data.obs)
    return H5adSource(data, layer)


def view_rows(data, src: H5adSource, sort: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """``(file rows, obs)`` of the cells ``data`` stands for: every row of ``src`` (with its obs), or for a
    backed AnnData view its own cells with the view's obs (sorted into file order, or in the view's order
    with ``sort=False``)."""
    if not getattr(data, "is_view", False):
        return np.arange(src.n_obs, dtype=np.int64), src.obs
    check_unique(src.obs_names, "cell", "obs_names")
    names = pd.Index(data.obs.index.astype(str))
    check_unique(names, "cell", "obs_names")
    rows = src.obs_names.get_indexer(names)
    if np.any(rows < 0):
        raise DataError("some cells of this backed AnnData view are not rows of its file; pass the file's path or "
                        "a view made by indexing the backed AnnData.")
    if not sort:
        return rows.astype(np.int64), data.obs
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), data.obs.iloc[order]


def row_blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of at most ``chunk`` rows covering ``n`` rows."""
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
