"""Out-of-core training preprocessing: two streaming passes over an ``.h5ad`` file (docs/scaling.md).

:func:`stream_prepare` runs the preprocessing of :func:`~napari_scmedal.data.prepare_training` (METHOD.md
section 2: cell/gene filters, library-size normalisation, log1p, Seurat highly variable genes, stratified split,
training-split min-max) with the same block functions (:func:`~napari_scmedal.data.preprocess.detection_counts`,
:func:`~napari_scmedal.data.normalize.log_entries`, :func:`~napari_scmedal.data.normalize.hvg_from_sums`), with
peak memory bounded by one block of rows. Under ``torch.distributed`` every rank reads only its own blocks and
the per-gene statistics are summed across ranks. The result, :class:`OnDiskTraining`, holds everything training
needs except the expression values, which :meth:`OnDiskTraining.lazy` reads on demand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import DataError
from .lazy import LazyPrepared
from .normalize import hvg_from_sums, log_entries, moment_sums
from .preprocess import (
    MIN_CELLS_PER_GENE,
    MIN_GENES_PER_CELL,
    check_filtered,
    detection_counts,
    finish_recipe,
    normalization_columns,
)
from .recipe import Recipe
from .source import DEFAULT_CHUNK_CELLS, H5adSource, open_source, row_blocks, view_rows
from .splits import stratified_split
from .validation import _summary, check_value_summary, merge_summaries, validate_metadata

__all__ = ["OnDiskTraining", "stream_prepare"]


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

    def lazy(self) -> LazyPrepared:
        """All filtered cells as a :class:`LazyPrepared` (rows read when sliced)."""
        return LazyPrepared(self.recipe, self.source, self.cells, self.batch, self.label, self.obs_names,
                            self.gene_idx, self.norm_idx, self.chunk_cells)


def _pass1(src: H5adSource, selected: np.ndarray, mine, comm, progress):
    """Value checks and the filter counts: ``(value summary, genes detected per row, cells per gene)``."""
    n, m = src.n_obs, src.n_vars
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
        det, cells = detection_counts(blk, MIN_GENES_PER_CELL)
        gene_cells += cells
        detected[a + here] = det
        if progress is not None:
            progress({"pass": 1, "done": k + 1, "total": len(mine)})
    counts = comm.sum(np.array([summ[k] for k in ("nan", "inf", "negative", "non_integer")], dtype=np.int64))
    summ = {"nan": int(counts[0]), "inf": int(counts[1]), "negative": int(counts[2]), "non_integer": int(counts[3]),
            "min": float(comm.min(np.array(summ["min"]))), "max": float(comm.max(np.array(summ["max"])))}
    summ["min"] = 0.0 if not np.isfinite(summ["min"]) else summ["min"]
    summ["max"] = 0.0 if not np.isfinite(summ["max"]) else summ["max"]
    return summ, comm.sum(detected), comm.sum(gene_cells)


def _pass2(src: H5adSource, cell_keep, is_train, norm_idx, counts: bool, mine, comm, progress):
    """Per-gene sums of the normalised expression (HVG) and per-gene extremes of the log expression over the
    training cells (scaling): ``(s1, s2, max, min, training entries per gene)``, summed over ranks."""
    m = src.n_vars
    s1 = np.zeros(m, dtype=np.float64)
    s2 = np.zeros(m, dtype=np.float64)
    gmax = np.zeros(m, dtype=np.float32)
    gmin = np.full(m, np.inf, dtype=np.float32)
    train_nz = np.zeros(m, dtype=np.int64)
    for k, (a, b) in enumerate(mine):
        keep = cell_keep[a:b]
        if not keep.any():
            continue
        row, cols, vals = log_entries(src.read(a, b)[np.flatnonzero(keep)], counts, norm_idx)
        a1, a2 = moment_sums(cols, vals, m)
        s1 += a1
        s2 += a2
        sel = is_train[a:b][keep][row]
        if sel.any():
            np.maximum.at(gmax, cols[sel], vals[sel])
            np.minimum.at(gmin, cols[sel], vals[sel])
            train_nz += np.bincount(cols[sel], minlength=m)
        if progress is not None:
            progress({"pass": 2, "done": k + 1, "total": len(mine)})
    return comm.sum(s1), comm.sum(s2), comm.max(gmax), comm.min(gmin), comm.sum(train_nz)


def stream_prepare(source, batch_key: str, label_key: str | None = None, n_genes: int = 2916,
                   layer: str | None = None, input_kind: str = "auto", split_seed: int = 42,
                   split_fractions=(0.6, 0.2, 0.2), min_cells_per_batch: int = 5,
                   chunk_cells: int = DEFAULT_CHUNK_CELLS, comm=None, progress=None) -> OnDiskTraining:
    """Preprocess an on-disk ``.h5ad`` in two streaming passes (see the module docstring).

    The same steps, block functions and errors as :func:`~napari_scmedal.data.prepare_training`; the scaling
    minimum and maximum come from per-gene extremes over the training cells.

    Parameters
    ----------
    source
        A path, a backed AnnData (or a view of one) or an :class:`~napari_scmedal.data.source.H5adSource`.
    batch_key, label_key, n_genes, layer, input_kind, split_seed, split_fractions, min_cells_per_batch
        As in :func:`~napari_scmedal.data.prepare_training`.
    chunk_cells
        Rows read at once.
    comm
        A :class:`napari_scmedal.distributed.Comm` to split the passes across ranks (default: one process).
    progress
        Called after each block with ``{"pass", "done", "total"}``.

    Returns
    -------
    OnDiskTraining
    """
    from ..distributed import Comm  # torch is imported only when streaming

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
    mine = row_blocks(n, chunk_cells)[comm.rank::comm.world]
    t0 = time.perf_counter()
    summ, detected, gene_cells = _pass1(src, selected, mine, comm, progress)
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
    norm_idx = normalization_columns(gene_keep)
    normalization_genes = [str(g) for g in src.var_names[gene_keep]]

    s1, s2, gmax, gmin, train_nz = _pass2(src, cell_keep, is_train, norm_idx, kind == "counts", mine, comm, progress)
    kept = np.flatnonzero(gene_keep)
    hv_cols = kept[hvg_from_sums(s1[kept], s2[kept], cells.size, n_genes)]
    gmin = np.where(train_nz < int(splits["train"].size), np.float32(0.0), gmin)
    scale_min, scale_max = float(gmin[hv_cols].min()), float(gmax[hv_cols].max())
    genes = [str(g) for g in src.var_names[hv_cols]]
    recipe, batch, label = finish_recipe(genes, n_genes, batch_values, label_values, batch_key, label_key, kind,
                                         layer, scale_min, scale_max, normalization_genes)
    info = {"cells_in_file": n, "genes_in_file": m, "cells_used": int(obs_rows.size),
            "cells_removed": int(obs_rows.size - cells.size),
            "genes_removed": int(m - gene_keep.sum()), "pass1_s": t1 - t0, "pass2_s": time.perf_counter() - t1,
            "chunk_cells": chunk_cells, "ranks": comm.world}
    return OnDiskTraining(source=src, recipe=recipe, cells=cells, splits=splits, batch=batch, label=label,
                          obs_names=pd.Index(obs.index.astype(str)[at]), gene_idx=hv_cols.astype(np.int64),
                          norm_idx=norm_idx, chunk_cells=chunk_cells, info=info)
