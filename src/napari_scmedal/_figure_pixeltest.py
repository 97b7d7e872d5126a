"""The pixel-test panel of :mod:`napari_scmedal.figures` (re-exported there): the group difference and
-log10 q (or a genomap) of a :class:`~napari_scmedal.pixeltests.PixelTestResult`, significant pixels
outlined, laid out at its physical size like the comparison panels. Pure core: no Qt, no napari."""
from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ._figure_text import (
    DEFAULT_WIDTH_MM,
    DIFFERENCE_CMAP,
    EXPRESSION_CMAP,
    FONT_PT,
    MM,
    PAD,
    TITLE_PT,
    _bar_block_height,
    _check_size,
    _cmap,
    _colorbar,
    _Meter,
    _new_figure,
    _tag_figure,
    _wrap,
)
from .genomap.limits import symmetric_limits

__all__ = ["pixel_test_figure"]


def pixel_test_figure(result, background: np.ndarray | None = None, title: str | None = None,
                      size: tuple[float, float | None] | None = None, dpi: int = 100) -> Figure:
    """Two panels for a :class:`~napari_scmedal.analysis.PixelTestResult`: the group difference
    (mean B - mean A, diverging) and -log10 q with significant pixels outlined; with
    ``background`` (a genomap) the significant pixels are overlaid on it instead.

    ``size``: ``(width, height)`` in inches, height ``None`` derived; default at most 180 mm
    wide (panels are capped at 60 mm).  Fonts stay >= 6 pt."""
    given_w, given_h = (None, None) if size is None else _check_size(size)
    meter = _Meter()
    W = given_w if given_w is not None else DEFAULT_WIDTH_MM * MM
    gap = 8 * MM
    n_pr, n_pc = np.shape(result.diff)[:2]
    aspect = n_pr / max(n_pc, 1)
    pw = (W - 2 * PAD - gap) / 2
    if given_w is None:
        pw = min(pw, 60 * MM)
        W = 2 * PAD + gap + 2 * pw
    pw = max(pw, 2 * MM)
    n_sig = int(np.asarray(result.significant, dtype=bool).sum())
    test_name = result.description
    title = title or f"{test_name}: {n_sig} significant pixel(s) (n={result.n_a} vs {result.n_b})"
    sup = _wrap(meter, title, TITLE_PT, W - 2 * PAD)[0]
    sup_h = meter.size(sup, TITLE_PT)[1] + 1.5 * MM
    coef = result.test == "mixedlm"  # the model's coefficient, not a raw mean difference
    titles = [f"{result.group_b} \u2212 {result.group_a} (model coefficient)" if coef
              else f"mean {result.group_b} \u2212 mean {result.group_a}",
              ("genomap" if background is not None else "\u2212log10 q")
              + f"; grey: not significant (q \u2265 {result.alpha:g})"]
    titles = [_wrap(meter, t, FONT_PT, pw)[0] for t in titles]
    t_h = max(meter.size(t, FONT_PT)[1] for t in titles) + 2 / 72
    bar_w = min(pw, 45 * MM)
    bar_labels = ["difference", "expression" if background is not None else "\u2212log10 q"]
    bar_h = _bar_block_height(meter, bar_labels, bar_w + 4 * MM)
    ph = pw * aspect
    fixed = 2 * PAD + sup_h + t_h + bar_h
    H = fixed + ph
    if given_h is not None:
        if given_h < H:
            ph = max(2 * MM, given_h - fixed)
            pw = min(pw, ph / aspect)
            ph = pw * aspect
        H = given_h
    x_off = max(0.0, (W - 2 * PAD - gap - 2 * pw) / 2)
    y_off = max(0.0, (H - fixed - ph) / 2)
    fig = _new_figure((W, H), dpi)
    py0 = H - PAD - y_off - sup_h - t_h - ph
    axs = [fig.add_axes(((PAD + x_off + k * (pw + gap)) / W, py0 / H, pw / W, ph / H)) for k in range(2)]
    d = np.ma.masked_invalid(result.diff)
    lo, hi = symmetric_limits([result.diff])  # the genomaps' rule for differences
    im0 = axs[0].imshow(d, cmap=_cmap(DIFFERENCE_CMAP), norm=TwoSlopeNorm(0.0, lo, hi),
                        interpolation="nearest", aspect="auto")
    sig = np.asarray(result.significant, dtype=bool)
    if background is not None:
        im1 = axs[1].imshow(np.ma.masked_invalid(background), cmap=_cmap(EXPRESSION_CMAP),
                            interpolation="nearest", aspect="auto")
    else:
        with np.errstate(divide="ignore"):
            lq = -np.log10(result.q)
        im1 = axs[1].imshow(np.ma.masked_invalid(lq), cmap=_cmap("magma"), interpolation="nearest",
                            aspect="auto")
    # the boolean overlay: pixels that are not significant are greyed out
    grey = np.zeros(sig.shape + (4,), dtype=np.float32)
    grey[~sig] = (0.85, 0.85, 0.85, 0.9)
    axs[1].imshow(grey, interpolation="nearest", aspect="auto")
    for ax, t in zip(axs, titles):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(t, fontsize=FONT_PT, pad=2)
    bar_y = py0 - 1.8 * MM - 2.0 * MM
    for ax, im, lab in zip(axs, (im0, im1), bar_labels):
        c = (ax.get_position().x0 + ax.get_position().x1) / 2 * W
        _colorbar(fig, im, ((c - bar_w / 2) / W, bar_y / H, bar_w / W, 2.0 * MM / H), lab, bar_w + 4 * MM,
                  meter)
    fig.suptitle(sup, fontsize=TITLE_PT, x=0.5, y=1 - (PAD + y_off) / H, va="top")
    _tag_figure(fig, fitted=True)  # laid out to fill its size (save_figure: no tight cropping)
    return fig
