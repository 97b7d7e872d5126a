"""Out-of-core data: read an ``.h5ad`` file in row blocks, preprocess it in streaming passes, and
serve model-ready rows on demand (docs/scaling.md).

* :class:`H5adSource` -- read-only row-block access to the expression matrix of an ``.h5ad`` file
  (CSR sparse or dense; obs and var names are read into memory, the matrix never is).
* :func:`stream_prepare` -- the preprocessing of :func:`~napari_scmedal.data.prepare_training`
  (METHOD.md section 2: cell/gene filters, library-size normalisation, log1p, Seurat highly variable
  genes, stratified split, training-split min-max) computed in two streaming passes over the file, with
  peak memory bounded by one block of rows. Under ``torch.distributed`` every rank reads only its own
  blocks and the per-gene statistics are summed across ranks.
* :class:`LazyPrepared` -- the rows of a file as a :class:`~napari_scmedal.data.Prepared` look-alike
  whose ``X``/``X_log`` are read and transformed block by block when sliced.

The per-cell arithmetic is :meth:`Recipe.log_block`, shared with the in-memory path, so a model
trained from disk and one trained in memory see bit-identical inputs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from .preprocess import MIN_CELLS_PER_GENE, MIN_GENES_PER_CELL, TARGET_SUM, check_filtered, finish_recipe
from .recipe import Prepared, Recipe, norm_rows, one_hot
from .splits import stratified_split
from .validation import _summary, check_value_summary, merge_summaries, validate_metadata

__all__ = ["H5adSource", "open_source", "is_on_disk", "stream_prepare", "OnDiskTraining", "LazyPrepared",
           "seurat_hvg", "DEFAULT_CHUNK_CELLS"]

#: Rows read from the file at once (one block). 8,192 cells x 2,916 genes is 95 MB as float32.
DEFAULT_CHUNK_CELLS = 8192


def is_on_disk(data) -> bool:
    """True for a path to an ``.h5ad`` file, an :class:`H5adSource` or a backed AnnData."""
    return isinstance(data, (str, os.PathLike, H5adSource)) or bool(getattr(data, "isbacked", False))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"File not found: {path}. Check the path (an .h5ad file is expected).")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .h5ad file. Pass the path of the .h5ad file itself.")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an HDF5/.h5ad file. Convert it to .h5ad first (e.g. anndata.read_csv / "
                        "scanpy.read_10x_h5 followed by adata.write_h5ad).")


class H5adSource:
    """Row-block reader of one ``.h5ad`` file, opened read-only (the file is never written).

    ``obs`` (a DataFrame) and the gene names are read at once; the expression matrix (``X`` or
    ``layers[layer]``) is read only by :meth:`read` / :meth:`read_rows`. CSR sparse and dense
    matrices are supported; a CSC matrix (column-major, one row would touch every column) is refused
    with the one-line conversion to use. ``obs`` may be given to use an in-memory table instead (e.g.
    a backed AnnData whose obs the user edited).
    """

    def __init__(self, path, layer: str | None = None, obs: pd.DataFrame | None = None):
        self.path = Path(os.fspath(path)).expanduser()
        _check_file(self.path)
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
    from .validation import check_unique

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


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


# -------------------------------------------------------------------------------- HVG
def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Boolean mask of the ``n_top`` highly variable genes by the Seurat rule (scanpy's
    ``highly_variable_genes(flavor="seurat")``) from per-gene mean and unbiased variance of the
    normalised (non-log) expression: log dispersion z-scored within 20 equal-width bins of log1p mean
    (a bin with one gene gets normalised dispersion 1), then the top ``n_top`` (ties kept)."""
    mean = np.array(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        disp = np.log(disp)
    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": disp})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    one = stats["dev"].isnull()
    stats.loc[one, "dev"] = stats.loc[one, "avg"]
    stats.loc[one, "avg"] = 0
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    norm = ((df["dispersions"] - stats["avg"]) / stats["dev"]).to_numpy(dtype=np.float64)
    valid = norm[~np.isnan(norm)]
    n_top = min(int(n_top), valid.size)
    if n_top == 0:
        return np.zeros(mean.shape, dtype=bool)
    cut = np.sort(valid)[::-1][n_top - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cut


# -------------------------------------------------------------------------------- training plan
@dataclass
class OnDiskTraining:
    """Result of :func:`stream_prepare`: everything training needs except the expression values.

    ``cells``: file row of every cell that passed the filters (sorted); ``splits``: positions into
    ``cells`` (``"train"``, ``"val"``, ``"test"``); ``batch``/``label``: codes of those cells;
    ``gene_idx``/``norm_idx``: file columns of the recipe genes / normalisation genes.
    """

    source: H5adSource
    recipe: Recipe
    cells: np.ndarray
    splits: dict
    batch: np.ndarray
    label: np.ndarray | None
    obs_names: pd.Index
    gene_idx: np.ndarray
    norm_idx: np.ndarray | None
    chunk_cells: int = DEFAULT_CHUNK_CELLS
    info: dict = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        return int(self.cells.size)

    def lazy(self) -> "LazyPrepared":
        """All filtered cells as a :class:`LazyPrepared` (rows read when sliced)."""
        return LazyPrepared(self.recipe, self.source, self.cells, self.batch, self.label, self.obs_names,
                            self.gene_idx, self.norm_idx, self.chunk_cells)



def stream_prepare(source, batch_key: str, label_key: str | None = None, n_genes: int = 2916,
                   layer: str | None = None, input_kind: str = "auto", split_seed: int = 42,
                   split_fractions=(0.6, 0.2, 0.2), min_cells_per_batch: int = 5,
                   chunk_cells: int = DEFAULT_CHUNK_CELLS, comm=None, progress=None) -> OnDiskTraining:
    """Preprocess an on-disk ``.h5ad`` in two streaming passes (see the module docstring).

    The same steps and the same errors as :func:`~napari_scmedal.data.prepare_training`; the highly
    variable genes come from per-gene sums (:func:`seurat_hvg`) instead of scanpy (same rule), and the
    scaling minimum and maximum from per-gene extremes over the training cells. ``comm``: a
    :class:`napari_scmedal.distributed.Comm` to split the passes across ranks (default: one process).
    ``progress(dict)`` is called after each block with ``{"pass", "done", "total"}``.
    """
    from ..distributed import Comm

    comm = comm or Comm()
    src = open_source(source, layer)
    n_genes, chunk_cells = int(n_genes), int(chunk_cells)
    if n_genes < 1:
        raise DataError(f"n_genes={n_genes} must be a positive number of genes (default 2916 = 54 x 54).")
    if chunk_cells < 1:
        raise DataError(f"chunk_cells={chunk_cells} must be at least 1 (default {DEFAULT_CHUNK_CELLS}).")
    # the cells to use: every row of the file, or the rows of a backed AnnData view (in file order)
    obs_rows, obs = view_rows(source, src)
    shell = ad.AnnData(obs=obs, var=pd.DataFrame(index=src.var_names))
    validate_metadata(shell, batch_key, label_key=label_key, input_kind=input_kind, n_genes=n_genes,
                      min_cells_per_batch=min_cells_per_batch)
    n, m = src.n_obs, src.n_vars
    selected = np.zeros(n, dtype=bool)
    selected[obs_rows] = True
    blocks = _blocks(n, chunk_cells)
    mine = blocks[comm.rank::comm.world]
    t0 = time.perf_counter()

    # ---- pass 1: value checks, genes detected per cell, cells detecting each gene (among kept cells)
    detected = np.zeros(n, dtype=np.int64)
    gene_cells = np.zeros(m, dtype=np.int64)
    summ = {"nan": 0, "inf": 0, "negative": 0, "non_integer": 0, "min": np.inf, "max": -np.inf}
    for k, (a, b) in enumerate(mine):
        here = np.flatnonzero(selected[a:b])
        if here.size == 0:
            continue
        blk = src.read(a, b)
        if here.size < b - a:
            blk = blk[here]
        summ = merge_summaries(summ, _summary(blk))
        if sp.issparse(blk):
            blk = sp.csr_matrix(blk)
            row = np.repeat(np.arange(here.size), np.diff(blk.indptr))
            nz = blk.data != 0
            det = np.bincount(row[nz], minlength=here.size)
            keep = det >= MIN_GENES_PER_CELL
            gene_cells += np.bincount(blk.indices[nz & keep[row]], minlength=m)
        else:
            nzm = np.asarray(blk) != 0
            det = nzm.sum(1)
            gene_cells += nzm[det >= MIN_GENES_PER_CELL].sum(0)
        detected[a + here] = det
        if progress is not None:
            progress({"pass": 1, "done": k + 1, "total": len(mine)})
    detected = comm.sum(detected)
    gene_cells = comm.sum(gene_cells)
    counts = comm.sum(np.array([summ[k] for k in ("nan", "inf", "negative", "non_integer")], dtype=np.int64))
    summ = {"nan": int(counts[0]), "inf": int(counts[1]), "negative": int(counts[2]), "non_integer": int(counts[3]),
            "min": float(comm.min(np.array(summ["min"]))), "max": float(comm.max(np.array(summ["max"])))}
    summ["min"] = 0.0 if not np.isfinite(summ["min"]) else summ["min"]
    summ["max"] = 0.0 if not np.isfinite(summ["max"]) else summ["max"]
    kind = check_value_summary(summ, src.where, input_kind)
    t1 = time.perf_counter()

    cell_keep = (detected >= MIN_GENES_PER_CELL) & selected
    gene_keep = gene_cells >= MIN_CELLS_PER_GENE
    cells = np.flatnonzero(cell_keep).astype(np.int64)
    at = np.searchsorted(obs_rows, cells)  # the kept cells' rows of ``obs``
    batch_values = obs[batch_key].iloc[at].astype(str)
    check_filtered(int(obs_rows.size), int(cells.size), int(gene_keep.sum()), n_genes, batch_values, batch_key,
                   min_cells_per_batch)
    label_values = None if label_key is None else obs[label_key].iloc[at].astype(str)
    splits = stratified_split(batch_values.to_numpy(), None if label_values is None else label_values.to_numpy(),
                              fractions=split_fractions, seed=split_seed)
    is_train = np.zeros(n, dtype=bool)
    is_train[cells[splits["train"]]] = True
    norm_cols = np.flatnonzero(gene_keep)
    norm_idx = None if norm_cols.size == m else norm_cols
    normalization_genes = [str(g) for g in src.var_names[gene_keep]]

    # ---- pass 2: per-gene sums of the normalised expression (HVG) and per-gene extremes of the log
    # expression over training cells (scaling), with the arithmetic of Recipe.log_block
    s1 = np.zeros(m, dtype=np.float64)
    s2 = np.zeros(m, dtype=np.float64)
    gmax = np.zeros(m, dtype=np.float32)
    gmin = np.full(m, np.inf, dtype=np.float32)
    train_nz = np.zeros(m, dtype=np.int64)
    for k, (a, b) in enumerate(mine):
        keep = cell_keep[a:b]
        if not keep.any():
            continue
        blk = src.read(a, b)
        blk = blk[np.flatnonzero(keep)]
        tr = is_train[a:b][keep]
        if sp.issparse(blk):
            blk = sp.csr_matrix(blk)
            vals = blk.data.astype(np.float32, copy=False)
            row = np.repeat(np.arange(blk.shape[0]), np.diff(blk.indptr))
            if kind == "counts":
                f = _size_factors(blk, norm_idx)
                vals = np.log1p(vals * f[row])
            cols = blk.indices
        else:
            dense = np.asarray(blk, dtype=np.float32)
            if kind == "counts":
                dense = np.log1p(dense * _size_factors(dense, norm_idx)[:, None])
            row, cols = np.nonzero(dense)
            vals = dense[row, cols]
        x = np.expm1(vals).astype(np.float64)
        s1 += np.bincount(cols, weights=x, minlength=m)
        s2 += np.bincount(cols, weights=x * x, minlength=m)
        sel = tr[row]
        if sel.any():
            np.maximum.at(gmax, cols[sel], vals[sel])
            np.minimum.at(gmin, cols[sel], vals[sel])
            train_nz += np.bincount(cols[sel], minlength=m)
        if progress is not None:
            progress({"pass": 2, "done": k + 1, "total": len(mine)})
    s1, s2 = comm.sum(s1), comm.sum(s2)
    gmax, gmin, train_nz = comm.max(gmax), comm.min(gmin), comm.sum(train_nz)
    n_cells = cells.size
    mean = s1 / n_cells
    var = s2 / n_cells - mean ** 2
    if n_cells > 1:
        var *= n_cells / (n_cells - 1)
    hv_kept = seurat_hvg(mean[gene_keep], var[gene_keep], n_genes)
    hv_cols = norm_cols[hv_kept]
    n_train = int(splits["train"].size)
    gmin = np.where(train_nz < n_train, np.float32(0.0), gmin)
    scale_min, scale_max = float(gmin[hv_cols].min()), float(gmax[hv_cols].max())
    genes = [str(g) for g in src.var_names[hv_cols]]
    recipe, batch, label = finish_recipe(genes, n_genes, batch_values, label_values, batch_key, label_key, kind,
                                         layer, scale_min, scale_max, normalization_genes)
    t2 = time.perf_counter()
    info = {"cells_in_file": n, "genes_in_file": m, "cells_used": int(obs_rows.size),
            "cells_removed": int(obs_rows.size - n_cells),
            "genes_removed": int(m - gene_keep.sum()), "pass1_s": t1 - t0, "pass2_s": t2 - t1,
            "chunk_cells": chunk_cells, "ranks": comm.world}
    return OnDiskTraining(source=src, recipe=recipe, cells=cells, splits=splits, batch=batch, label=label,
                          obs_names=pd.Index(obs.index.astype(str)[at]), gene_idx=hv_cols.astype(np.int64),
                          norm_idx=norm_idx, chunk_cells=chunk_cells, info=info)


def _size_factors(block, norm_idx) -> np.ndarray:
    from .recipe import size_factors

    return size_factors(block, norm_idx, TARGET_SUM)


# -------------------------------------------------------------------------------- lazy rows
class _Rows:
    """``prepared.X`` / ``prepared.X_log`` of a :class:`LazyPrepared`: slicing reads and transforms rows."""

    def __init__(self, owner: "LazyPrepared", what: str):
        self._owner, self._what = owner, what

    @property
    def shape(self) -> tuple[int, int]:
        return (self._owner.n_obs, self._owner.recipe.n_genes)

    def __len__(self) -> int:
        return self._owner.n_obs

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None), *rest)]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._owner.n_obs)
            if step != 1:
                return getattr(self._owner.subset(np.arange(start, stop, step)), self._what)
            return getattr(self._owner.block(start, stop), self._what)
        if isinstance(key, (int, np.integer)):
            return getattr(self._owner.block(int(key), int(key) + 1), self._what)[0]
        return getattr(self._owner.subset(key), self._what)

    def __array__(self, dtype=None, copy=None):
        arr = getattr(self._owner.block(0, self._owner.n_obs), self._what)
        return arr if dtype is None else arr.astype(dtype, copy=False)


class LazyPrepared:
    """Model-ready rows of an on-disk data set, read on demand (a :class:`Prepared` look-alike).

    ``X`` and ``X_log`` slice like arrays (``X[a:b]`` reads rows ``a:b`` from the file and transforms
    them with the recipe; the last block is cached so ``X[a:b]`` then ``X_log[a:b]`` read once);
    ``batch``, ``batch_onehot`` (computed per slice), ``label`` and ``obs_names`` are in memory.
    :meth:`block` and :meth:`subset` return ordinary :class:`Prepared` objects.
    """

    def __init__(self, recipe: Recipe, source: H5adSource, rows, batch, label, obs_names, gene_idx, norm_idx,
                 chunk_cells: int = DEFAULT_CHUNK_CELLS):
        self.recipe = recipe
        self.source = source
        self.file_rows = np.asarray(rows, dtype=np.int64)
        self.batch = np.asarray(batch, dtype=np.int64)
        self.label = None if label is None else np.asarray(label, dtype=np.int64)
        self.obs_names = pd.Index(obs_names)
        self.gene_idx = np.asarray(gene_idx, dtype=np.int64)
        self.norm_idx = norm_idx
        self.chunk_cells = int(chunk_cells)
        self.X = _Rows(self, "X")
        self.X_log = _Rows(self, "X_log")
        self.batch_onehot = _OneHot(self)
        self.label_onehot = None
        self._cache: tuple | None = None

    @classmethod
    def from_source(cls, recipe: Recipe, data, layer=None, require_labels: bool = False,
                    chunk_cells: int = DEFAULT_CHUNK_CELLS) -> "LazyPrepared":
        """Every cell of an on-disk data set (path, backed AnnData or source), aligned to ``recipe``
        (raises RecipeMismatchError like :meth:`Recipe.transform`)."""
        src = open_source(data, recipe.layer if layer is None else layer)
        rows, obs = view_rows(data, src, sort=False)  # a backed view: its cells, in the view's order
        idx, norm_idx, batch, label = recipe.align(obs, src.var_names, require_labels, var=src.var)
        return cls(recipe, src, rows, batch, label, pd.Index(obs.index.astype(str)), idx, norm_idx, chunk_cells)

    @property
    def n_obs(self) -> int:
        return int(self.file_rows.size)

    def __len__(self) -> int:
        return self.n_obs

    def _make(self, file_rows_block, positions) -> Prepared:
        sub, n_nonint, vmax = self.recipe.log_block(file_rows_block, self.gene_idx,
                                                    norm_rows(self.norm_idx, positions), self.source.where)
        if sub.shape[0]:
            self.recipe.check_kind(n_nonint, vmax, self.source.where)
        b = self.batch[positions]
        lab = None if self.label is None else self.label[positions]
        return Prepared(X=self.recipe.scale(sub), X_log=sub, batch=b, batch_onehot=one_hot(b, self.recipe.n_batches),
                        label=lab, label_onehot=None if lab is None else one_hot(lab, self.recipe.n_labels),
                        obs_names=self.obs_names[positions])

    def block(self, start: int, stop: int) -> Prepared:
        """Rows ``start:stop`` (positions) as a :class:`Prepared`, read from the file."""
        start, stop = int(start), int(min(stop, self.n_obs))
        cached = self._cache  # one read: another thread may replace it meanwhile
        if cached is not None and cached[0] == (start, stop):
            return cached[1]
        pos = np.arange(start, max(stop, start))
        fr = self.file_rows[pos]
        if fr.size and np.all(np.diff(fr) == 1):  # consecutive increasing file rows: one read
            raw = self.source.read(fr[0], fr[-1] + 1)
        else:
            raw = self.source.read_rows(fr, window=max(self.chunk_cells, 1))
        out = self._make(raw, pos)
        self._cache = ((start, stop), out)
        return out

    def subset(self, idx) -> Prepared:
        """Rows at positions ``idx`` (integers or boolean mask) as a :class:`Prepared`."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        raw = self.source.read_rows(self.file_rows[idx], window=max(self.chunk_cells, 1))
        return self._make(raw, idx)


class _OneHot:
    def __init__(self, owner: LazyPrepared):
        self._owner = owner

    @property
    def shape(self):
        return (self._owner.n_obs, self._owner.recipe.n_batches)

    def __getitem__(self, key):
        return one_hot(self._owner.batch[key], self._owner.recipe.n_batches)

    def __array__(self, dtype=None, copy=None):
        out = one_hot(self._owner.batch, self._owner.recipe.n_batches)
        return out if dtype is None else out.astype(dtype, copy=False)
