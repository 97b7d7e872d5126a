"""Publication panels from a :class:`~napari_scmedal.compare.Comparison` (PNG, SVG, PDF, TIFF).

Rows are cells (or averaged groups), columns are versions (Original, FE, RE, counterfactuals,
differences).  Expression images share one sequential colour scale (viridis) and one colour bar;
difference images share a diverging colour scale centred on zero (RdBu_r) and their own colour
bar.  The counterfactual to a row's own batch is framed.  Optionally the genes varying most
across the counterfactual batches are marked and labelled.

Figures are plain :class:`matplotlib.figure.Figure` objects on the Agg canvas: nothing here
touches ``matplotlib.pyplot``, so no global figure state is created or leaked, and it works
headless.  Pure core: no Qt, no napari.
"""
from __future__ import annotations

import os
import textwrap
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from ._utils import atomic_output
from .errors import ScMEDALError

__all__ = [
    "FIGURE_FORMATS",
    "FigureFormatError",
    "comparison_figure",
    "pixel_test_figure",
    "save_figure",
    "display_name",
]

FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".tif": "tiff", ".tiff": "tiff"}
EXPRESSION_CMAP = "viridis"
DIFFERENCE_CMAP = "RdBu_r"
OWN_BATCH_COLOR = "#e8590c"
EMPTY_PIXEL_COLOR = "#d9d9d9"


class FigureFormatError(ScMEDALError, ValueError):
    """A figure cannot be written with the requested file name or options."""


def display_name(name: str, width: int = 22) -> str:
    """Column title for display: arrows drawn as arrows, wrapped to ``width`` characters."""
    pretty = name.replace(" -> ", " \u2192 ")
    return "\n".join(textwrap.wrap(pretty, width=width, break_long_words=True)) or pretty


def _cmap(name: str):
    cm = colormaps[name].copy()
    cm.set_bad(EMPTY_PIXEL_COLOR)
    return cm


def _new_figure(size, dpi) -> Figure:
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def comparison_figure(
    comparison,
    columns: Sequence[str] | None = None,
    gene_labels: bool | int = False,
    title: str | None = None,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
    rows: Sequence[int] | None = None,
) -> Figure:
    """Grid figure of a comparison.

    Parameters
    ----------
    comparison : :class:`~napari_scmedal.compare.Comparison`.
    columns : version names to show, in order (default: all, in the comparison's order).
    gene_labels : ``False`` for none, ``True`` for the comparison's top genes of each row (10),
        an int for that many.
    title : figure title (suptitle).
    size : ``(width, height)`` in inches (default grows with the number of rows and columns).
    dpi : figure resolution (pixels per inch on screen; :func:`save_figure` chooses the file's).
    rows : which rows to draw (default all).
    """
    names = list(comparison.images) if columns is None else list(columns)
    unknown = [c for c in names if c not in comparison.images]
    if unknown:
        raise FigureFormatError(
            f"Unknown column(s) {unknown}. Available versions: {list(comparison.images)}."
        )
    if not names:
        raise FigureFormatError("Choose at least one column (version) to draw.")
    row_ids = list(range(comparison.n_rows)) if rows is None else [int(r) for r in rows]
    bad = [r for r in row_ids if not 0 <= r < comparison.n_rows]
    if bad or not row_ids:
        raise FigureFormatError(
            f"Row(s) {bad or row_ids} do not exist: the comparison has {comparison.n_rows} row(s)."
        )
    n_labels = 10 if gene_labels is True else int(gene_labels or 0)
    n_r, n_c = len(row_ids), len(names)
    kinds = [comparison.kinds[c] for c in names]
    has_expr = "expression" in kinds
    has_diff = "difference" in kinds
    n_bars = int(has_expr) + int(has_diff)
    panel, gap = 1.3, 0.12  # inches: one genomap, the space between two
    bar_block = 0.95  # inches per colour bar: bar, ticks and label
    left_in, bottom_in = 0.45 + 0.12 * min(24, max(len(t) for t in comparison.row_titles)) / 4, 0.15
    top_in = 0.75 + (0.4 if title else 0.0)
    if size is None:
        size = (left_in + n_c * (panel + gap) + n_bars * bar_block + 0.1,
                bottom_in + n_r * (panel + gap) + top_in)
    try:
        w, h = float(size[0]), float(size[1])
    except (TypeError, ValueError, IndexError):
        raise FigureFormatError(f"size must be (width, height) in inches, got {size!r}.") from None
    if not (w > 0 and h > 0):
        raise FigureFormatError(f"size must be positive (width, height) in inches, got {size!r}.")
    fig = _new_figure((w, h), dpi)
    left = min(left_in / w, 0.3)
    right = max(left + 0.1, 1 - (n_bars * bar_block + 0.1) / w)
    top = max(0.5, 1 - top_in / h)
    bottom = min(bottom_in / h, 0.1)
    gs = fig.add_gridspec(n_r, n_c, wspace=gap / panel, hspace=gap / panel,
                          left=left, right=right, top=top, bottom=bottom)
    lo, hi = comparison.expression_limits
    dlo, dhi = comparison.difference_limits
    expr_norm = Normalize(vmin=lo, vmax=hi)
    diff_norm = TwoSlopeNorm(vcenter=0.0, vmin=min(dlo, -1e-12), vmax=max(dhi, 1e-12))
    expr_cmap = _cmap(EXPRESSION_CMAP)
    diff_cmap = _cmap(DIFFERENCE_CMAP)
    fontsize = max(5.0, min(8.0, 60.0 / max(n_c, 1)))
    label_size = max(3.5, fontsize - 2.5)
    top = getattr(comparison, "top_genes", None)
    expr_im = diff_im = None
    axes = np.empty((n_r, n_c), dtype=object)
    for i, r in enumerate(row_ids):
        own = comparison.own_batch_column(r)
        for j, name in enumerate(names):
            ax = fig.add_subplot(gs[i, j])
            axes[i, j] = ax
            img = np.ma.masked_invalid(comparison.images[name][r])
            if comparison.kinds[name] == "expression":
                im = ax.imshow(img, cmap=expr_cmap, norm=expr_norm, interpolation="nearest")
                expr_im = im
            else:
                im = ax.imshow(img, cmap=diff_cmap, norm=diff_norm, interpolation="nearest")
                diff_im = im
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(display_name(name), fontsize=fontsize)
            if j == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(comparison.row_titles[r], 24)), fontsize=fontsize)
            if own is not None and name == own:
                for sp in ax.spines.values():
                    sp.set_edgecolor(OWN_BATCH_COLOR)
                    sp.set_linewidth(2.5)
                ax.text(0.02, 0.98, "own batch", transform=ax.transAxes, ha="left", va="top",
                        fontsize=label_size, color="white",
                        bbox=dict(boxstyle="round,pad=0.15", fc=OWN_BATCH_COLOR, ec="none"))
            if n_labels and top is not None and len(top):
                sel = top[top["row"] == r].head(n_labels)
                if len(sel):
                    ax.scatter(sel["col_px"], sel["row_px"], s=6, facecolors="none",
                               edgecolors="red", linewidths=0.6)
                    for _, t in sel.iterrows():
                        ax.annotate(str(t["gene"]), (t["col_px"], t["row_px"]), xytext=(2, 2),
                                    textcoords="offset points", fontsize=label_size, color="red")
    # colour bars to the right of the grid, as tall as the image block
    for ax in (axes[0, 0], axes[-1, -1]):
        ax.apply_aspect()  # square pixels shrink the axes: use their drawn extent
    first, last = axes[0, 0].get_position(), axes[-1, -1].get_position()
    y0, y1 = last.y0, first.y1
    x = last.x1 + 0.15 / w
    bars = [(expr_im, getattr(comparison, "units", "expression"))] if has_expr else []
    if has_diff:
        bars.append((diff_im, "difference"))
    for im, label in bars:
        cax = fig.add_axes((x, y0, 0.12 / w, max(y1 - y0, 0.05)))
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("\n".join(textwrap.wrap(label, 24)), fontsize=fontsize)
        cb.ax.tick_params(labelsize=fontsize)
        x += bar_block / w
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    fig._scmedal_axes = axes  # for callers/tests that want the image axes grid
    return fig


def pixel_test_figure(result, background: np.ndarray | None = None, title: str | None = None,
                      size: tuple[float, float] = (8.0, 3.6), dpi: int = 100) -> Figure:
    """Two panels for a :class:`~napari_scmedal.analysis.PixelTestResult`: the group difference
    (mean B - mean A, diverging) and -log10 q with significant pixels outlined; with
    ``background`` (a genomap) the significant pixels are overlaid on it instead."""
    fig = _new_figure(size, dpi)
    axs = fig.subplots(1, 2)
    d = np.ma.masked_invalid(result.diff)
    lim = float(np.nanmax(np.abs(result.diff))) if np.isfinite(result.diff).any() else 1.0
    lim = lim if lim > 0 else 1.0
    im0 = axs[0].imshow(d, cmap=_cmap(DIFFERENCE_CMAP), norm=TwoSlopeNorm(0.0, -lim, lim),
                        interpolation="nearest")
    axs[0].set_title(f"mean {result.group_b} - mean {result.group_a}", fontsize=8)
    fig.colorbar(im0, ax=axs[0], fraction=0.046, pad=0.04)
    sig = np.asarray(result.significant, dtype=bool)
    if background is not None:
        im1 = axs[1].imshow(np.ma.masked_invalid(background), cmap=_cmap(EXPRESSION_CMAP),
                            interpolation="nearest")
        axs[1].set_title(f"genomap; grey: not significant (q \u2265 {result.alpha:g})", fontsize=8)
    else:
        with np.errstate(divide="ignore"):
            lq = -np.log10(result.q)
        im1 = axs[1].imshow(np.ma.masked_invalid(lq), cmap=_cmap("magma"), interpolation="nearest")
        axs[1].set_title(f"-log10 q; grey: not significant (q \u2265 {result.alpha:g})", fontsize=8)
    fig.colorbar(im1, ax=axs[1], fraction=0.046, pad=0.04)
    # the boolean overlay: pixels that are not significant are greyed out
    grey = np.zeros(sig.shape + (4,), dtype=np.float32)
    grey[~sig] = (0.85, 0.85, 0.85, 0.9)
    axs[1].imshow(grey, interpolation="nearest")
    for ax in axs:
        ax.set_xticks([])
        ax.set_yticks([])
    n_sig = int(sig.sum())
    title = title or (f"Mann-Whitney U per pixel: {n_sig} significant pixel(s) "
                      f"(n={result.n_a} vs {result.n_b})")
    wrapped = textwrap.wrap(title, 90)
    fig.suptitle("\n".join(wrapped), fontsize=9)
    fig.subplots_adjust(top=max(0.5, 1 - (0.35 + 0.17 * len(wrapped)) / size[1]), bottom=0.05)
    return fig


def save_figure(fig: Figure, path, dpi: int = 300, transparent: bool = False) -> str:
    """Write ``fig`` to ``path`` (.png, .svg, .pdf, .tif or .tiff), atomically.

    The figure is rendered to a temporary file in the target folder and moved into place with
    ``os.replace``, so a crash never leaves a half-written file.  Returns the path.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FIGURE_FORMATS:
        raise FigureFormatError(
            f"Cannot save a figure as {os.path.basename(path)!r}: unknown extension {ext or '(none)'!r}. "
            f"Use one of {sorted(FIGURE_FORMATS)}."
        )
    try:
        dpi = int(dpi)
    except (TypeError, ValueError):
        raise FigureFormatError(f"dpi must be a positive number, got {dpi!r}.") from None
    if dpi <= 0:
        raise FigureFormatError(f"dpi must be a positive number, got {dpi}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FigureFormatError(f"The folder {folder!r} does not exist; create it or choose another path.")
    fmt = FIGURE_FORMATS[ext]
    kwargs = {"pil_kwargs": {"compression": "tiff_lzw"}} if fmt == "tiff" else {}
    with atomic_output(path, suffix=ext) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, transparent=transparent, **kwargs)
    return path
