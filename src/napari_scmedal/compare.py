"""Compare a cell's versions in genomap images: the single place where that science lives.

:func:`compare_cells` builds, for chosen cells (or one averaged group of cells), the genomap
images of

* ``"Original"`` -- the cell's own expression (log1p-normalised, the recipe's genes),
* ``"FE reconstruction"`` and ``"RE reconstruction"``,
* ``"Counterfactual -> <b>"`` for every target batch ``b`` (the RE autoencoder run with the
  cell's batch replaced by ``b``),

and the differences ``"FE - Original"``, ``"Counterfactual -> <b> - Original"`` and
``"Counterfactual -> <b> - Counterfactual -> own batch"``.  The result, a :class:`Comparison`,
also carries one shared contrast range for all expression images, symmetric limits for all
difference images, each row's own batch and label, row titles, and the genes varying most
across the counterfactual batches.  The GUI, the CLI and the demo all use it; the figures
(:mod:`napari_scmedal.figures`) and analyses (:mod:`napari_scmedal.analysis`) read it.

Pure core: no Qt, no napari.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._utils import atomic_output
from .analysis import rank_pixels, spread_image, top_varying_genes
from .errors import DataError
from .genomap.ensure import ensure_layout, layout_columns, resolve_layout, zscore_reference
from .genomap.limits import robust_limits, symmetric_limits
from .selection import parse_group, resolve_cells, select_cells
from .versions import (
    FE_MINUS_ORIGINAL,
    FE_RECON,
    ORIGINAL,
    RE_RECON,
    cf_minus_original_name,
    cf_minus_own_name,
    cf_key,
    check_target_batches,
    counterfactual_name,
)

if TYPE_CHECKING:
    from .model._protocols import ModelLike

__all__ = [
    "FE_MINUS_ORIGINAL",
    "FE_RECON",
    "ORIGINAL",
    "RE_RECON",
    "Comparison",
    "cf_minus_original_name",
    "cf_minus_own_name",
    "compare_cells",
    "counterfactual_name",
    "ensure_layout",
    "parse_group",
    "resolve_cells",
    "select_cells",
    "stack_comparisons",
    "zscore_reference",
]

SCALES = ("log1p", "zscore")
_CHUNK_ROWS = 65536  # model rows (cells x versions) computed at once


# ----------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Genomap images of chosen cells (or one averaged group) in every version.

    Attributes
    ----------
    images : dict name -> ``(n_rows, rows, cols)`` float32, in display order (expression images
        first: Original, FE, RE, counterfactuals; then differences).  NaN on empty pixels.
    kinds : dict name -> ``"expression"`` | ``"difference"``.
    expression_limits : ``(lo, hi)`` shared by every expression image (one colour scale).
    difference_limits : ``(-d, d)`` shared by every difference image (centred colour scale).
    batches : the target batches, in order.
    row_batches, row_labels : each row's own batch / label (``None`` when a group mixes several).
    row_titles : a title per row.
    row_cells : obs names of the cell(s) behind each row.
    top_genes : DataFrame ``row, rank, gene, row_px, col_px, spread`` -- per row, the genes whose
        pixel varies most across the counterfactual batches (empty with fewer than 2 batches).
    top_genes_overall : DataFrame ``rank, gene, row_px, col_px, spread`` -- the same for the
        per-pixel spread averaged over rows.
    layout : the :class:`GenomapLayout` used.
    scale : ``"log1p"`` or ``"zscore"``; ``units`` says what the pixel values are.
    averaged : whether the selected cells were averaged into one row.
    """

    images: dict[str, np.ndarray]
    kinds: dict[str, str]
    expression_limits: tuple[float, float]
    difference_limits: tuple[float, float]
    batches: list[str]
    row_batches: list[str | None]
    row_labels: list[str | None]
    row_titles: list[str]
    row_cells: list[list[str]]
    top_genes: pd.DataFrame
    top_genes_overall: pd.DataFrame
    layout: Any
    scale: str = "log1p"
    averaged: bool = False
    units: str = "log1p-normalised expression"
    meta: dict = field(default_factory=dict)

    # -- convenience -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.images)

    @property
    def n_rows(self) -> int:
        return int(next(iter(self.images.values())).shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        a = next(iter(self.images.values()))
        return int(a.shape[1]), int(a.shape[2])

    def names_of_kind(self, kind: str) -> list[str]:
        return [n for n, k in self.kinds.items() if k == kind]

    def limits_for(self, name: str) -> tuple[float, float]:
        return self.expression_limits if self.kinds[name] == "expression" else self.difference_limits

    def counterfactual_stack(self, batches: Sequence[str] | None = None) -> np.ndarray:
        """``(n_rows, n_batches, rows, cols)`` counterfactual images."""
        batches = self.batches if batches is None else list(batches)
        return np.stack([self.images[counterfactual_name(b)] for b in batches], axis=1)

    def own_batch_column(self, row: int) -> str | None:
        b = self.row_batches[row]
        return counterfactual_name(b) if b is not None else None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays with file-safe keys (for ``np.savez``), plus ``names``/``kinds``."""
        out: dict[str, np.ndarray] = {}
        for i, img in enumerate(self.images.values()):
            out[f"image_{i:03d}"] = img
        out["names"] = np.array(self.names, dtype=str)
        out["kinds"] = np.array([self.kinds[n] for n in self.names], dtype=str)
        out["row_titles"] = np.array(self.row_titles, dtype=str)
        out["row_batches"] = np.array([b or "" for b in self.row_batches], dtype=str)
        out["expression_limits"] = np.array(self.expression_limits, dtype=np.float64)
        out["difference_limits"] = np.array(self.difference_limits, dtype=np.float64)
        return out

    def save_npz(self, path) -> str:
        """Write every image plus names, kinds, titles and limits to one ``.npz`` (atomic)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        with atomic_output(path) as tmp:
            # numpy's stub matches the **arrays against its allow_pickle: bool keyword too
            np.savez_compressed(tmp, **self.to_arrays())  # type: ignore[arg-type]
        return path


# ----------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------
def _single_or_none(values: Sequence[str | None]) -> str | None:
    u = pd.unique(np.asarray(values, dtype=object))
    return str(u[0]) if len(u) == 1 else None


def _gene_space(model, layout, scale, source):
    """``f(x)``: model-gene expression ``(n, n_genes)`` -> the comparison's units in layout gene order."""
    cols = layout_columns(layout, model.genes)
    if scale == "zscore":
        mean, std = zscore_reference(model, fallback=source)  # the training cells; a loaded model: the data given
        return lambda x: ((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32)[:, cols]
    return lambda x: np.asarray(x, dtype=np.float32)[:, cols]


def _chunk_versions(model, chunk, batches, extra, g):
    """Expression images (gene space) and differences of one chunk of cells, and each cell's own batch."""
    all_batches = [str(b) for b in model.batches]
    v = model.predict_versions(chunk, batches + extra)
    codes = np.asarray(v["batch"], dtype=np.int64)
    own = [all_batches[c] if 0 <= c < len(all_batches) else None for c in codes]
    missing = sorted({n for n in own if n is not None and cf_key(n) not in v})
    if missing:  # the batch column disagreed with the recipe's codes: compute what is missing
        more = model.predict_versions(chunk, missing)
        v.update({cf_key(n): more[cf_key(n)] for n in missing})
    orig, fe, re_ = g(v["original"]), g(v["fe"]), g(v["re"])
    cfs = {b: g(v[cf_key(b)]) for b in batches}
    cf_own = np.full_like(orig, np.nan)
    for n in {o for o in own if o is not None}:
        rows_n = np.flatnonzero(np.array([o == n for o in own]))
        cf_own[rows_n] = cfs[n][rows_n] if n in cfs else g(v[cf_key(n)][rows_n])
    gs = {ORIGINAL: orig, FE_RECON: fe, RE_RECON: re_}
    gs.update({counterfactual_name(b): cfs[b] for b in batches})
    ds = {FE_MINUS_ORIGINAL: fe - orig}
    ds.update({cf_minus_original_name(b): cfs[b] - orig for b in batches})
    ds.update({cf_minus_own_name(b): cfs[b] - cf_own for b in batches})
    return gs, ds, own


def compare_cells(
    model: ModelLike,
    cells,
    target_batches: Sequence[str] | None = None,
    adata=None,
    average: bool = False,
    layout=None,
    scale: str = "log1p",
    n_top: int = 10,
    group_name: str | None = None,
) -> Comparison:
    """Genomap images of chosen cells in every version, with differences.  See module docs.

    Parameters
    ----------
    model : a trained :class:`~napari_scmedal.ScMEDAL`.
    cells : int indices, a boolean mask or obs names, of ``adata`` (default: the model's
        training data).
    target_batches : batches to build counterfactuals for (default: all of the model's).
    average : average the selected cells into one row (a group) -- every version and every
        difference is the mean over the cells (each cell's own-batch counterfactual is its own).
    layout : a :class:`GenomapLayout`; default ``model.layout``, computed once and attached
        when missing (:func:`ensure_layout`).
    scale : ``"log1p"`` (log1p-normalised units) or ``"zscore"`` (per-gene z-scores from a
        cached reference stack, :func:`zscore_reference`, so every view shares one scale).
    n_top : how many top varying genes to report per row and overall.
    group_name : row title for an averaged group (default built from the cells' labels).
    """
    if scale not in SCALES:
        raise DataError(f"Unknown scale {scale!r}; use one of {list(SCALES)}.")
    source = model._training_adata(adata)
    idx = resolve_cells(cells, list(map(str, source.obs_names)))
    all_batches = [str(b) for b in model.batches]
    batches = check_target_batches(all_batches, target_batches)
    layout = resolve_layout(model, layout, source)
    sub = source[idx]
    recipe = model.recipe
    # every batch needed: the targets, plus the cells' own batches (for "- own batch")
    obs_batches = (
        sub.obs[recipe.batch_key].astype(str).unique().tolist() if recipe.batch_key in sub.obs.columns else []
    )
    extra = [b for b in all_batches if b in obs_batches and b not in batches]
    to_layout = _gene_space(model, layout, scale, source)

    def versions(chunk):
        return _chunk_versions(model, chunk, batches, extra, to_layout)

    # cells in chunks so memory stays bounded (averages are accumulated, not stacked)
    chunk_size = max(1, _CHUNK_ROWS // max(1, len(batches) + len(extra) + 3))
    gene_space: dict[str, np.ndarray] = {}
    diffs: dict[str, np.ndarray] = {}
    own_names: list[str | None] = []
    parts_g: list[dict] = []
    parts_d: list[dict] = []
    for start in range(0, len(idx), chunk_size):
        chunk = sub[start:start + chunk_size] if len(idx) > chunk_size else sub
        gs, ds, own = versions(chunk)
        own_names.extend(own)
        if average:
            for k, x in gs.items():
                gene_space[k] = gene_space.get(k, 0.0) + x.astype(np.float64).sum(axis=0, keepdims=True)
            for k, x in ds.items():
                diffs[k] = diffs.get(k, 0.0) + x.astype(np.float64).sum(axis=0, keepdims=True)
        else:
            parts_g.append(gs)
            parts_d.append(ds)
    if average:
        gene_space = {k: (x / len(idx)).astype(np.float32) for k, x in gene_space.items()}
        diffs = {k: (x / len(idx)).astype(np.float32) for k, x in diffs.items()}
    else:
        gene_space = {k: np.concatenate([p[k] for p in parts_g]) for k in parts_g[0]}
        diffs = {k: np.concatenate([p[k] for p in parts_d]) for k in parts_d[0]}

    obs = sub.obs
    names = list(map(str, sub.obs_names))
    batch_vals = obs[recipe.batch_key].astype(str).tolist() if recipe.batch_key in obs.columns else [
        n or "?" for n in own_names
    ]
    label_key = getattr(recipe, "label_key", None)
    label_vals = (
        obs[label_key].astype(str).tolist() if label_key is not None and label_key in obs.columns else [None] * len(names)
    )
    if average:
        rb = [_single_or_none(batch_vals)]
        rl = [_single_or_none(label_vals) if label_vals[0] is not None else None]
        if group_name is None:
            parts = [p for p in (rl[0], rb[0]) if p]
            group_name = ", ".join(parts) if parts else "selected cells"
        titles = [f"{group_name} (mean of {len(names)} cells)"]
        row_cells = [names]
    else:
        rb = list(batch_vals)
        rl = list(label_vals)
        titles = [
            f"{n} ({', '.join(p for p in (l, b) if p)})" for n, l, b in zip(names, rl, rb)
        ]
        row_cells = [[n] for n in names]

    images: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for k, x in gene_space.items():
        images[k] = layout.project(x).astype(np.float32, copy=False)
        kinds[k] = "expression"
    for k, x in diffs.items():
        images[k] = layout.project(x).astype(np.float32, copy=False)
        kinds[k] = "difference"

    expr_lim, diff_lim, top, overall = _summaries(images, kinds, batches, layout, n_top)
    return Comparison(
        images=images,
        kinds=kinds,
        expression_limits=expr_lim,
        difference_limits=diff_lim,
        batches=batches,
        row_batches=rb,
        row_labels=rl,
        row_titles=titles,
        row_cells=row_cells,
        top_genes=top,
        top_genes_overall=overall,
        layout=layout,
        scale=scale,
        averaged=bool(average),
        units="z-score per gene (reference stack)" if scale == "zscore" else "log1p-normalised expression",
        meta={"cells": idx.tolist()},
    )


def _summaries(images, kinds, batches, layout, n_top):
    """Shared limits and top varying genes of a set of images."""
    expr_lim = robust_limits(images[k] for k in images if kinds[k] == "expression")
    diff_lim = symmetric_limits(images[k] for k in images if kinds[k] == "difference")

    # top varying genes across counterfactual batches
    rows_tables = []
    overall = pd.DataFrame(columns=["rank", "gene", "row_px", "col_px", "spread"])
    if len(batches) >= 2:
        stack = np.stack([images[counterfactual_name(b)] for b in batches], axis=1)
        for r in range(stack.shape[0]):
            t = top_varying_genes(stack[r], layout=layout, n=n_top)
            rows_tables.append(pd.DataFrame({
                "row": r, "rank": np.arange(1, len(t) + 1), "gene": t["gene"],
                "row_px": t["row"], "col_px": t["col"], "spread": t["std"],
            }))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty pixels
            mean_spread = np.nanmean(spread_image(stack), axis=0)
        t = rank_pixels(mean_spread, layout=layout, n=n_top).rename(columns={"score": "std"})
        overall = pd.DataFrame({
            "rank": np.arange(1, len(t) + 1), "gene": t["gene"], "row_px": t["row"],
            "col_px": t["col"], "spread": t["std"],
        })
    top = (
        pd.concat(rows_tables, ignore_index=True)
        if rows_tables
        else pd.DataFrame(columns=["row", "rank", "gene", "row_px", "col_px", "spread"])
    )
    return expr_lim, diff_lim, top, overall


def stack_comparisons(comparisons: Sequence[Comparison], n_top: int = 10) -> Comparison:
    """Stack comparisons (e.g. one averaged group each) into one with a row per input row.

    All must have the same image names, layout and scale; the limits and top genes are
    recomputed over the stacked rows, so every row shares one colour scale.
    """
    comps = list(comparisons)
    if not comps:
        raise DataError("Nothing to stack: give at least one comparison.")
    first = comps[0]
    for c in comps[1:]:
        if c.names != first.names or c.scale != first.scale or c.shape != first.shape:
            raise DataError(
                "These comparisons cannot be stacked: they differ in versions, scale or image size. "
                "Compute them with the same target batches, scale and layout."
            )
    images = {n: np.concatenate([c.images[n] for c in comps], axis=0) for n in first.names}
    kinds = dict(first.kinds)
    expr_lim, diff_lim, top, overall = _summaries(images, kinds, first.batches, first.layout, n_top)
    return Comparison(
        images=images, kinds=kinds, expression_limits=expr_lim, difference_limits=diff_lim,
        batches=list(first.batches),
        row_batches=[b for c in comps for b in c.row_batches],
        row_labels=[b for c in comps for b in c.row_labels],
        row_titles=[b for c in comps for b in c.row_titles],
        row_cells=[b for c in comps for b in c.row_cells],
        top_genes=top, top_genes_overall=overall, layout=first.layout, scale=first.scale,
        averaged=all(c.averaged for c in comps), units=first.units,
        meta={"stacked": len(comps)},
    )
