"""Exported panels are readable at their physical size (a real, tiny ScMEDAL on the bundled sample).

* default size: a full-page 180 mm wide panel, height following from the rows;
* every text >= 6 pt at that size, whatever the number of columns (titles wrap, abbreviate or
  turn upright instead of shrinking), nothing leaves the page;
* top-gene labels never overlap each other or any other text (measured with the Agg renderer);
* colour bars present and labelled; SVG keeps text as ``<text>``, PDF embeds TrueType;
* a PNG export has no large blank margins.
"""
import itertools
import re

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from napari_scmedal.figures import (
    DEFAULT_WIDTH_MM,
    MIN_FONT_PT,
    comparison_figure,
    pixel_test_figure,
    save_figure,
)

MM = 1 / 25.4


@pytest.fixture(scope="module")
def comp(sample_model):
    """A real comparison: three cells of the session's briefly trained sample model (tests/conftest.py)."""
    from napari_scmedal.compare import compare_cells

    m, _ = sample_model
    c = compare_cells(m, [0, 1, 2])
    assert len(c.names) == 19 and len(c.top_genes) == 30  # 5 batches: 19 versions, 10 genes a row
    return c


def _widget_columns(c):
    """The export widget's default choice: expression images and the '- Original' differences."""
    return [n for n in c.names if c.kinds[n] == "expression" or n.endswith(" - Original")]


def _drawn_texts(fig):
    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _extent(t, renderer):
    return Text.get_window_extent(t, renderer)  # the text alone (an Annotation adds its arrow)


def _gene_texts(fig, c):
    genes = set(map(str, c.top_genes["gene"]))
    return [t for t in _drawn_texts(fig) if t.get_text() in genes]


def _overlaps(texts, renderer):
    ext = [(t.get_text(), _extent(t, renderer)) for t in texts]
    return [(a, b) for (a, ea), (b, eb) in itertools.combinations(ext, 2) if ea.overlaps(eb)]


def _assert_readable(fig):
    texts = _drawn_texts(fig)
    assert texts
    small = sorted({(round(t.get_fontsize(), 2), t.get_text()[:30]) for t in texts
                    if t.get_fontsize() < MIN_FONT_PT})
    assert not small, f"texts below {MIN_FONT_PT} pt at the exported size: {small[:5]}"
    # nothing drawn leaves the page (no clipped titles, labels, ticks or notes)
    r = fig.canvas.get_renderer()
    tb = fig.get_tightbbox(r)
    w, h = fig.get_size_inches()
    assert tb.x0 >= -1e-3 and tb.y0 >= -1e-3 and tb.x1 <= w + 1e-3 and tb.y1 <= h + 1e-3, (tb, w, h)
    return texts


@pytest.mark.parametrize("which", ["all", "widget"])
@pytest.mark.parametrize("rows", [[0], None])
def test_default_is_a_full_page_panel_with_text_of_at_least_6_pt(comp, which, rows):
    cols = None if which == "all" else _widget_columns(comp)
    fig = comparison_figure(comp, columns=cols, rows=rows, gene_labels=10, title="Counterfactual genomaps")
    w, h = fig.get_size_inches()
    assert w == pytest.approx(DEFAULT_WIDTH_MM * MM)  # many columns: the full page width
    assert 30 * MM < h < 120 * MM  # derived from the rows, not a fixed aspect
    texts = _assert_readable(fig)
    # every column titled, every row labelled, in full or abbreviated (explained in a note)
    axes = fig._scmedal_axes
    assert all(ax.get_title() for ax in axes[0]) and all(ax.get_ylabel() for ax in axes[:, 0])
    if any("CF" in ax.get_title() for ax in axes[0]):
        assert any("CF: counterfactual" in t.get_text().replace("\n", " ") for t in texts)
    # column titles and row labels do not collide
    r = fig.canvas.get_renderer()
    assert not _overlaps([ax.title for ax in axes[0]], r)
    assert not _overlaps([ax.yaxis.label for ax in axes[:, 0]], r)
    # pixels stay square
    for ax in axes.ravel()[:3]:
        bb = ax.get_window_extent(r)
        ny, nx = comp.shape
        assert bb.height / bb.width == pytest.approx(ny / nx, rel=0.02)


def test_gene_labels_never_overlap_at_the_exported_size(comp):
    fig = comparison_figure(comp, columns=_widget_columns(comp), gene_labels=10)
    labels = _gene_texts(fig, comp)
    r = fig.canvas.get_renderer()
    assert not _overlaps(labels, r)
    # nor any other text: titles, row labels, colour-bar ticks and labels, the note
    others = [t for t in _drawn_texts(fig) if t not in labels]
    lab_ext = [_extent(t, r) for t in labels]
    hits = [(t.get_text()[:20], la.get_text()) for t in others for la, e in zip(labels, lab_ext)
            if _extent(t, r).overlaps(e)]
    assert not hits
    # each row names its best-ranked genes, beside its last tile, outside every image
    axes = fig._scmedal_axes
    tiles = [ax.get_window_extent(r) for ax in axes.ravel()]
    for i in range(axes.shape[0]):
        named = [t.get_text() for t in axes[i, -1].texts]
        top = comp.top_genes[comp.top_genes["row"] == i].sort_values("rank")["gene"].astype(str).tolist()
        assert 1 <= len(named) <= 10 and named and set(named) == set(top[:len(named)])
    assert not [t.get_text() for t, e in zip(labels, lab_ext) if any(e.overlaps(b) for b in tiles)]
    # every top gene is circled on every tile of its row
    for ax in axes[0]:
        assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 10


def test_one_row_names_all_ten_genes_and_few_columns_make_a_narrower_panel(comp):
    fig = comparison_figure(comp, columns=comp.names[:2], rows=[1], gene_labels=True)
    assert fig.get_size_inches()[0] < DEFAULT_WIDTH_MM * MM  # tiles are capped: no 80 mm tiles
    _assert_readable(fig)
    labels = _gene_texts(fig, comp)
    assert len(labels) == 10 and not _overlaps(labels, fig.canvas.get_renderer())


def test_colour_bars_present_and_labelled(comp):
    fig = comparison_figure(comp, gene_labels=5)
    bars = [ax for ax in fig.axes if ax not in set(fig._scmedal_axes.ravel())]
    assert len(bars) == 2
    fig.canvas.draw()
    labels = [(ax.get_xlabel() or ax.get_ylabel()).replace("\n", " ") for ax in bars]
    assert labels[0] == comp.units and labels[1].startswith("difference") and comp.units in labels[1]
    r = fig.canvas.get_renderer()
    for ax in bars:
        axis = ax.xaxis if ax.get_xlabel() else ax.yaxis
        assert axis.label.get_fontsize() >= MIN_FONT_PT
        ticks = [t for t in axis.get_ticklabels() if t.get_text()]
        assert len(ticks) >= 2 and all(t.get_fontsize() >= MIN_FONT_PT for t in ticks)
        assert not _overlaps(ticks, r)
        lo, hi = axis.get_view_interval()
        assert all(min(lo, hi) - 1e-9 <= v <= max(lo, hi) + 1e-9 for v in axis.get_ticklocs())


def test_svg_keeps_text_pdf_embeds_truetype_png_has_small_margins(comp, tmp_path):
    fig = comparison_figure(comp, columns=_widget_columns(comp), gene_labels=10, title="Panel")
    svg = open(save_figure(fig, tmp_path / "p.svg"), encoding="utf-8").read()
    assert svg.count("<text") > 20
    named = [t.get_text() for t in _gene_texts(fig, comp)]
    assert named
    for g in named:
        assert re.search(r"<text[^>]*>\s*" + re.escape(g) + r"\s*</text>", svg), g
    assert "Original" in svg and "Panel" in svg
    pdf = open(save_figure(fig, tmp_path / "p.pdf"), "rb").read()
    assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf and b"/Type3" not in pdf
    dpi = 150
    png = save_figure(fig, tmp_path / "p.png", dpi=dpi)
    with Image.open(png) as im:
        assert abs(im.size[0] - DEFAULT_WIDTH_MM * MM * dpi) <= 1  # exactly 180 mm wide
        ink = np.asarray(im.convert("L")) < 250
    h, w = ink.shape
    rows, cols = np.where(ink.any(axis=1))[0], np.where(ink.any(axis=0))[0]
    margins = {"top": rows[0] / h, "bottom": (h - 1 - rows[-1]) / h,
               "left": cols[0] / w, "right": (w - 1 - cols[-1]) / w}
    assert max(margins.values()) < 0.05, margins
    # a foreign figure is cropped to its content (tight bounding box, small pad)
    from napari_scmedal.figures import _new_figure

    other = _new_figure((8, 8), 50)
    other.text(0.5, 0.5, "tiny", fontsize=8)
    with Image.open(save_figure(other, tmp_path / "o.png", dpi=50)) as im:
        assert im.size[0] < 100 and im.size[1] < 100


def test_user_sizes_are_kept_and_stay_readable(comp, tmp_path):
    fig = comparison_figure(comp, columns=_widget_columns(comp), gene_labels=10, size=(250 * MM, 140 * MM))
    assert tuple(fig.get_size_inches()) == pytest.approx((250 * MM, 140 * MM))
    _assert_readable(fig)
    assert not _overlaps(_gene_texts(fig, comp), fig.canvas.get_renderer())
    with Image.open(save_figure(fig, tmp_path / "u.png", dpi=100)) as im:
        assert abs(im.size[0] - 250 * MM * 100) <= 1 and abs(im.size[1] - 140 * MM * 100) <= 1
    # width given, height derived from the rows
    fig = comparison_figure(comp, columns=comp.names[:3], gene_labels=3, size=(120 * MM, None))
    w, h = fig.get_size_inches()
    assert w == pytest.approx(120 * MM) and h < 120 * MM
    _assert_readable(fig)


def test_pixel_test_panel_is_readable(comp, tmp_path):
    from napari_scmedal.analysis import counterfactual_group_test

    b = comp.batches
    res = counterfactual_group_test(comp, b[:2], b[2:], names=("A", "B"))
    for bg in (None, comp.images["Original"][0]):
        fig = pixel_test_figure(res, background=bg, title="Mann-Whitney U per pixel, counterfactuals "
                                "to CELseq2_5cl_p1 vs Dropseq_3cl: 12 significant pixel(s), BH q < 0.05")
        assert fig.get_size_inches()[0] <= DEFAULT_WIDTH_MM * MM + 1e-9
        texts = _assert_readable(fig)
        assert not _overlaps(texts, fig.canvas.get_renderer())
        bars = fig.axes[2:]
        assert len(bars) == 2 and all(ax.get_xlabel() for ax in bars)
        save_figure(fig, tmp_path / "mwu.svg")
