"""Publication panels from a :class:`~napari_scmedal.compare.Comparison` (PNG, SVG, PDF, TIFF).

Rows are cells (or averaged groups), columns are versions (Original, FE, RE, counterfactuals,
differences).  Expression images share one sequential colour scale (viridis) and one colour bar;
difference images share a diverging colour scale centred on zero (RdBu_r) and their own colour
bar; both bars sit under the columns they apply to and are labelled with the units.  The
counterfactual to a row's own batch is framed.  Optionally the genes varying most across the
counterfactual batches are circled on every tile and named, with leader lines, in a label column
to the right of each row.  Chosen genes can be highlighted (black rings on every tile, named first in
that column) and a gene set outlined on every tile, with its score under each tile
(:mod:`napari_scmedal._figure_marks`, :mod:`napari_scmedal.genesets`).

Panels are laid out for their physical size: by default a full-page 180 mm wide panel (narrower
when there are few columns: tiles are capped at 50 mm), its height following from the number
of rows so that genomap pixels stay square.  Every text is measured and placed at its final
size: nothing is smaller than 6 pt, column titles are wrapped, abbreviated or turned upright
rather than shrunk, gene labels never overlap, and no text leaves the page.  The layout fills
the page up to a 1 mm margin, so the file is written at exactly the requested size.

Figures are plain :class:`matplotlib.figure.Figure` objects on the Agg canvas: nothing here
touches ``matplotlib.pyplot``, so no global figure state is created or leaked, and it works
headless.  Pure core: no Qt, no napari.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._figure_marks import HIGHLIGHT_COLOR, TileMarks
from ._figure_pixeltest import pixel_test_figure
from ._figure_text import (  # noqa: F401  (DEFAULT_WIDTH_MM, MIN_FONT_PT: re-exported, in __all__)
    DEFAULT_WIDTH_MM,
    DIFFERENCE_CMAP,
    EXPRESSION_CMAP,
    FONT_PT,
    GENE_COLOR,
    MAX_TILE_MM,
    MIN_FONT_PT,
    MM,
    OWN_BATCH_COLOR,
    PAD,
    SAVE_RC,
    SMALL_PT,
    TIGHT_PAD,
    TITLE_PT,
    FigureFormatError,
    _bar_block_height,
    _check_size,
    _cmap,
    _colorbar,
    _fit_column_titles,
    _Meter,
    _new_figure,
    _place_bars,
    _spread,
    _tag_figure,
    _wrap,
    display_name,
    short_name,
)
from ._utils import atomic_output

__all__ = [
    "DEFAULT_WIDTH_MM",
    "FIGURE_FORMATS",
    "MIN_FONT_PT",
    "FigureFormatError",
    "comparison_figure",
    "display_name",
    "pixel_test_figure",
    "save_figure",
    "short_name",
]

FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".tif": "tiff", ".tiff": "tiff"}
def comparison_figure(
    comparison,
    columns: Sequence[str] | None = None,
    gene_labels: bool | int = False,
    title: str | None = None,
    size: tuple[float, float | None] | None = None,
    dpi: int = 100,
    rows: Sequence[int] | None = None,
    highlight: Sequence[str] | str | None = None,
    gene_set: Sequence[str] | None = None,
    gene_set_name: str | None = None,
    set_scores=None,
) -> Figure:
    """Grid figure of a comparison, laid out for its physical size.

    Parameters
    ----------
    comparison : :class:`~napari_scmedal.compare.Comparison`.
    columns : version names to show, in order (default: all, in the comparison's order).
    gene_labels : ``False`` for none, ``True`` for the comparison's top genes of each row (10),
        an int for that many.  They are circled on every tile of the row and named in a label
        column to its right, with leader lines to the last tile; when a row is too short for all
        names, the best-ranked ones that fit are named (the full list is the comparison's
        ``top_genes`` table, written as CSV by the CLI) and a note under the panel says so.
    title : figure title.
    size : ``(width, height)`` in inches; height ``None`` follows from the rows so that pixels
        stay square.  Default: 180 mm wide (a full page; narrower when tiles would exceed
        50 mm), height derived.  Fonts stay >= 6 pt whatever the size.
    dpi : figure resolution (pixels per inch on screen; :func:`save_figure` chooses the file's).
    rows : which rows to draw (default all).
    highlight : genes to mark with a ring on every tile, named (in black, before the top genes) in
        the gene-label column beside each row; layout gene names (resolve other identifiers with
        :func:`~napari_scmedal.genesets.resolve_genes`).  Unknown names raise
        :class:`~napari_scmedal.genesets.GeneNotFoundError` with close names.
    gene_set : genes whose pixels are outlined (one outline of their union) on every tile; names
        not in the layout are left out (the note says how many are shown).
    gene_set_name : the set's name, for the note under the panel.
    set_scores : :func:`~napari_scmedal.genesets.set_scores` of the set, written under each tile
        (computed here for a z-scored comparison when not given; a log1p comparison needs it).
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
    given_w, given_h = (None, None) if size is None else _check_size(size)
    n_labels = 10 if gene_labels is True else int(gene_labels or 0)
    n_r, n_c = len(row_ids), len(names)
    kinds = [comparison.kinds[c] for c in names]
    top = comparison.top_genes
    marks = TileMarks(comparison, highlight, gene_set, gene_set_name, set_scores)
    sel = {}
    if n_labels and top is not None and len(top):
        for r in row_ids:
            s = top[top["row"] == r]
            if "rank" in s:
                s = s.sort_values("rank", kind="stable")
            if len(s):
                sel[r] = s.head(n_labels)
    sel = marks.label_rows(sel, row_ids)  # highlighted genes first (named first), then the top genes
    units = comparison.units
    bar_labels = {"expression": units, "difference": f"difference ({units})"}
    bar_kinds = [k for k in ("expression", "difference") if k in kinds]

    meter = _Meter()
    W = given_w if given_w is not None else DEFAULT_WIDTH_MM * MM
    hgap, vgap = 1.2 * MM, 1.2 * MM + marks.score_height
    n_pix_r, n_pix_c = comparison.shape
    aspect = n_pix_r / max(n_pix_c, 1)  # tile height / width: square pixels

    # left: row labels, horizontal, right-aligned, wrapped
    row_texts = [_wrap(meter, str(comparison.row_titles[r]), FONT_PT, min(32 * MM, 0.22 * W))[0]
                 for r in row_ids]
    label_pad = 3 / 72
    left_w = max(meter.size(t, FONT_PT)[0] for t in row_texts) + label_pad + 1 / 72
    # right: the gene-label column
    leader = 4.0 * MM
    gene_w = 0.0
    if sel:
        gene_w = leader + max(meter.width(str(g), SMALL_PT) for s in sel.values() for g in s["gene"]) + 0.5 * MM

    def tile_width(gw):
        tw = (W - 2 * PAD - left_w - gw - (n_c - 1) * hgap) / n_c
        if given_w is None:
            tw = min(tw, MAX_TILE_MM * MM)
        return max(tw, 1.0 * MM)

    tile_w = tile_width(gene_w)
    # row labels taller than a row (many narrow columns): fewer, longer lines
    for wrap_w in (45 * MM, 60 * MM, 0.4 * W):
        if (max(meter.size(t, FONT_PT)[1] for t in row_texts) <= tile_w * aspect + vgap
                or wrap_w <= min(32 * MM, 0.22 * W)):
            break
        row_texts = [_wrap(meter, str(comparison.row_titles[r]), FONT_PT, wrap_w)[0] for r in row_ids]
        left_w = max(meter.size(t, FONT_PT)[0] for t in row_texts) + label_pad + 1 / 72
        tile_w = tile_width(gene_w)

    title_pad = 2 / 72

    def vertical_layout(tw):
        th = tw * aspect
        col = _fit_column_titles(meter, names, tw, max(12 * MM, min(40 * MM, 4 * th)), hgap)
        gx0 = PAD + left_w
        gx1 = gx0 + n_c * tw + (n_c - 1) * hgap
        spans = []
        for k in bar_kinds:
            js = [j for j, kk in enumerate(kinds) if kk == k]
            spans.append((gx0 + min(js) * (tw + hgap), gx0 + max(js) * (tw + hgap) + tw))
        # under the grid only: the gene-label column beside it stays free for labels and leaders
        bars = _place_bars(spans, gx0, gx1, 6 * MM, min(20 * MM, max(5 * MM, gx1 - gx0)), 55 * MM)
        # each bar's label may use the free width around it: the row-label column on the left,
        # up to the gene names on the right, half-way to the other bar
        label_ws = []
        order = sorted(range(len(bars)), key=lambda k: bars[k][0])
        for pos, k in enumerate(order):
            c, w = bars[k]
            left = PAD if pos == 0 else (bars[order[pos - 1]][0] + bars[order[pos - 1]][1] / 2 + c - w / 2) / 2 + 1 * MM
            right = (gx1 + leader - 1 * MM if pos == len(order) - 1
                     else (c + w / 2 + bars[order[pos + 1]][0] - bars[order[pos + 1]][1] / 2) / 2 - 1 * MM)
            label_ws.append((k, max(w, 2 * min(c - left, right - c))))
        label_ws = [lw for _, lw in sorted(label_ws)]
        bar_h = max((_bar_block_height(meter, [bar_labels[k]], lw) for k, lw in zip(bar_kinds, label_ws)),
                    default=0.0)
        return th, col, bars, label_ws, bar_h + marks.score_height

    th, col, bars, label_ws, bar_h = vertical_layout(tile_w)
    lh_gene = meter.size("Ag", SMALL_PT)[1] * 1.1  # one gene label, with a little air

    def capacities():
        """Gene labels that fit beside each row: its height, plus the empty room above the
        first row (beside the column titles) and below the last (beside the colour bars)."""
        caps = []
        for i in range(n_r):
            above = col[4] + title_pad if i == 0 else vgap / 2
            below = bar_h if i == n_r - 1 else vgap / 2
            caps.append(max(1, int((th + above + below) / lh_gene)))
        return caps

    def label_column_width(caps):
        return leader + max(meter.width(str(g), SMALL_PT) for i, r in enumerate(row_ids) if r in sel
                            for g in sel[r]["gene"].head(caps[i])) + 0.5 * MM

    if sel:  # the label column only as wide as the names that fit beside the rows
        gene_w = label_column_width(capacities())
        for _ in range(3):
            tile_w = tile_width(gene_w)
            th, col, bars, label_ws, bar_h = vertical_layout(tile_w)
            need = label_column_width(capacities())
            if need <= gene_w + 1e-9:
                break
            gene_w = need

    if given_w is None:  # capped tiles: the page is only as wide as the content
        W = min(W, 2 * PAD + left_w + n_c * tile_w + (n_c - 1) * hgap + gene_w)
    sup = ""
    sup_h = 0.0
    if title:
        sup = _wrap(meter, str(title), TITLE_PT, W - 2 * PAD)[0]
        sup_h = meter.size(sup, TITLE_PT)[1] + 1.0 * MM

    notes = []
    own_cols = [comparison.own_batch_column(r) for r in row_ids]
    if any(o is not None and o in names for o in own_cols):
        notes.append("Orange frame: counterfactual to the row's own batch.")
    if col[3]:
        notes.append("CF: counterfactual; recon.: reconstruction.")
    notes.extend(marks.notes())

    def note_lines(caps):
        gene_note = []
        n_hl = len(marks.genes)
        if sel and max(len(s) for s in sel.values()) > n_hl:
            n_max = max(len(s) for s in sel.values()) - n_hl
            shown = [max(0, min(c, len(sel[r])) - n_hl) for c, r in zip(caps, row_ids) if r in sel]
            txt = f"Red circles: the {n_max} genes varying most across the counterfactuals in each row"
            if any(k < len(sel[r]) - n_hl for k, r in zip(shown, [r for r in row_ids if r in sel])):
                k = f"{min(shown)}" if min(shown) == max(shown) else f"{min(shown)} to {max(shown)}"
                txt += f"; the top {k} named (all {n_max}: the comparison's top-genes table)"
            gene_note = [txt + "."]
        s = " ".join(notes + gene_note)
        return _wrap(meter, s, SMALL_PT, W - 2 * PAD)[0] if s else ""

    def note_height(note):
        return meter.size(note, SMALL_PT)[1] + 1.0 * MM if note else 0.0

    def fixed_h(col_h, bar_h):  # the note depends on the current layout (labels that fit)
        return (2 * PAD + sup_h + col_h + title_pad + bar_h + note_height(note_lines(capacities()))
                + (n_r - 1) * vgap)

    note = note_lines(capacities())

    H = fixed_h(col[4], bar_h) + n_r * th
    if given_h is not None:
        if given_h < H:  # shrink the tiles to the given height
            # the widest tiles whose panel (titles, tiles, colour bars) fits: bisection
            lo_w, hi_w = 1.0 * MM, tile_w
            for _ in range(10):
                mid = (lo_w + hi_w) / 2
                th, col, bars, label_ws, bar_h = vertical_layout(mid)
                if fixed_h(col[4], bar_h) + n_r * th <= given_h:
                    lo_w = mid
                else:
                    hi_w = mid
            tile_w = lo_w
            th, col, bars, label_ws, bar_h = vertical_layout(tile_w)
            note = note_lines(capacities())
        H = given_h
    content_w = left_w + n_c * tile_w + (n_c - 1) * hgap + gene_w
    x_off = max(0.0, (W - 2 * PAD - content_w) / 2)
    content_h = fixed_h(col[4], bar_h) - 2 * PAD + n_r * th
    y_off = max(0.0, (H - 2 * PAD - content_h) / 2)

    fig = _new_figure((W, H), dpi)
    gx0 = PAD + x_off + left_w
    grid_top = H - PAD - y_off - sup_h - col[4] - title_pad
    lo, hi = comparison.expression_limits
    dlo, dhi = comparison.difference_limits
    expr_norm = Normalize(vmin=lo, vmax=hi)
    diff_norm = TwoSlopeNorm(vcenter=0.0, vmin=min(dlo, -1e-12), vmax=max(dhi, 1e-12))
    expr_cmap = _cmap(EXPRESSION_CMAP)
    diff_cmap = _cmap(DIFFERENCE_CMAP)
    col_texts, col_fs, col_rot = col[0], col[1], col[2]
    px_pt = tile_w * 72 / max(n_pix_c, 1)  # one genomap pixel, in points
    marker_d = max(2.5, min(6.0, 1.3 * px_pt))
    ims = {}
    axes = np.empty((n_r, n_c), dtype=object)
    shown = []
    mark_artists: list = []
    caps = capacities()
    for i, r in enumerate(row_ids):
        own = comparison.own_batch_column(r)
        y0 = grid_top - (i + 1) * th - i * vgap
        for j, name in enumerate(names):
            x0 = gx0 + j * (tile_w + hgap)
            ax = fig.add_axes((x0 / W, y0 / H, tile_w / W, th / H))
            axes[i, j] = ax
            img = np.ma.masked_invalid(comparison.images[name][r])
            if comparison.kinds[name] == "expression":
                im = ax.imshow(img, cmap=expr_cmap, norm=expr_norm, interpolation="nearest", aspect="auto")
            else:
                im = ax.imshow(img, cmap=diff_cmap, norm=diff_norm, interpolation="nearest", aspect="auto")
            ims[comparison.kinds[name]] = im
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_linewidth(0.5)
            if i == 0:
                if col_rot:
                    ax.set_title(col_texts[j], fontsize=col_fs, rotation=90, ha="center", va="bottom",
                                 multialignment="left", pad=2)
                else:
                    ax.set_title(col_texts[j], fontsize=col_fs, pad=2)
            if j == 0:
                ax.set_ylabel(row_texts[i], fontsize=FONT_PT, rotation=0, ha="right", va="center",
                              labelpad=3)
            if own is not None and name == own:
                for sp in ax.spines.values():
                    sp.set_edgecolor(OWN_BATCH_COLOR)
                    sp.set_linewidth(2.5)
            if r in sel:
                s = sel[r][sel[r]["mark"] == "top"]
                ax.scatter(s["col_px"], s["row_px"], s=marker_d ** 2, facecolors="none",
                           edgecolors=GENE_COLOR, linewidths=0.6, clip_on=False)
            mark_artists.extend(marks.draw(fig, ax, r, name, comparison.kinds[name], px_pt, (x0, y0, tile_w, th)))
        # gene names beside the row, never overlapping, with elbow leader lines to the last tile
        if r in sel:
            s = sel[r].head(caps[i])
            shown.append(len(s))
            ax = axes[i, -1]
            x_last = gx0 + (n_c - 1) * (tile_w + hgap)
            gx1 = x_last + tile_w
            mx = [x_last + tile_w * (float(c) + 0.5) / n_pix_c for c in s["col_px"]]
            my = [y0 + th * (1 - (float(p) + 0.5) / n_pix_r) for p in s["row_px"]]
            above = col[4] + title_pad if i == 0 else vgap / 2
            below = bar_h if i == n_r - 1 else vgap / 2
            order = sorted(range(len(s)), key=lambda k: (-my[k], mx[k]))
            ys = _spread([my[k] for k in order], lh_gene, y0 - below + lh_gene / 2,
                         y0 + th + above - lh_gene / 2)
            genes = [str(g) for g in s["gene"]]
            hl = (s["mark"] == "highlight").to_numpy()
            for k, yk in zip(order, ys):
                color = HIGHLIGHT_COLOR if hl[k] else GENE_COLOR
                ax.text((gx1 + leader) / W, yk / H, genes[k], transform=fig.transFigure, ha="left",
                        va="center", fontsize=SMALL_PT, color=color, clip_on=False)
                r_in = (marks.ring_diameter(px_pt) if hl[k] else marker_d) / 2 / 72
                xs = [mx[k] + r_in, gx1 + 1.0 * MM, gx1 + leader - 0.6 * MM]
                xs[0] = min(xs[1], xs[0])
                fig.add_artist(Line2D([x / W for x in xs], [my[k] / H, my[k] / H, yk / H],
                                      transform=fig.transFigure, color=color, lw=0.4, alpha=0.85,
                                      solid_joinstyle="round", solid_capstyle="round"))
    # colour bars under the columns they apply to
    bar_y = grid_top - n_r * th - (n_r - 1) * vgap - 1.8 * MM - 2.0 * MM - marks.score_height
    for kind, (c, w), lw in zip(bar_kinds, bars, label_ws):
        c += x_off
        _colorbar(fig, ims[kind], ((c - w / 2) / W, bar_y / H, w / W, 2.0 * MM / H), bar_labels[kind], lw, meter)
    if note:
        fig.text(PAD / W, (PAD + y_off) / H, note, ha="left", va="bottom", fontsize=SMALL_PT,
                 color="0.25")
    if sup:
        fig.suptitle(sup, fontsize=TITLE_PT, x=0.5, y=1 - (PAD + y_off) / H, va="top")
    # axes: the image axes grid (for callers and tests); fitted: laid out to fill its size, saved as is with no
    # tight cropping; marks: rings, outlines, gene names and set scores drawn on the tiles
    _tag_figure(fig, axes=axes, fitted=True, gene_labels_shown=shown, marks=mark_artists)
    return fig


# ----------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path, dpi: int = 300, transparent: bool = False,
                tight: bool | None = None) -> str:
    """Write ``fig`` to ``path`` (.png, .svg, .pdf, .tif or .tiff), atomically.

    Text stays text: SVG files keep it as ``<text>`` elements (``svg.fonttype = "none"``) and
    PDF files embed TrueType fonts (``pdf.fonttype = 42``), so both stay editable.  ``tight``:
    crop to the drawn content plus a small pad (``bbox_inches="tight"``); default: crop figures
    that were not laid out here, and write the panels of :func:`comparison_figure` and
    :func:`pixel_test_figure` -- which fill their page up to a 1 mm margin -- at exactly their
    physical size.

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
    kwargs: dict[str, Any] = {"pil_kwargs": {"compression": "tiff_lzw"}} if fmt == "tiff" else {}
    if tight is None:
        tight = not getattr(fig, "_scmedal_fitted", False)
    if tight:
        kwargs.update(bbox_inches="tight", pad_inches=TIGHT_PAD)
    with atomic_output(path, suffix=ext) as tmp, matplotlib.rc_context(SAVE_RC):
        fig.savefig(tmp, dpi=dpi, format=fmt, transparent=transparent, **kwargs)
    return path
