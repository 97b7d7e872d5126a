"""Text measured at its final physical size, for the publication panels of :mod:`napari_scmedal.figures`:
a :class:`_Meter` (extents in inches with an Agg renderer), wrapping and abbreviating column titles, spreading
labels without overlap, colour-bar ticks that do not collide and the placement of the colour bars."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import ScMEDALError

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

MM = 1.0 / 25.4  # inches per millimetre
DEFAULT_WIDTH_MM = 180.0  # a full-page figure
MAX_TILE_MM = 50.0  # a default-size panel with few columns is narrower than the page
MIN_FONT_PT = 6.0  # nothing smaller, at the exported size
FONT_PT = 7.0  # column titles, row labels, colour-bar labels
SMALL_PT = 6.0  # tick labels, gene labels, notes
TITLE_PT = 8.0  # the figure title
PAD = 1.0 * MM  # page margin
TIGHT_PAD = 0.03  # inches kept around a figure saved with a tight bounding box
SAVE_RC: dict[RcKeyType, Any] = {"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}
EXPRESSION_CMAP = "viridis"
DIFFERENCE_CMAP = "RdBu_r"
OWN_BATCH_COLOR = "#e8590c"
EMPTY_PIXEL_COLOR = "#d9d9d9"
GENE_COLOR = "#d62728"

def _cmap(name: str):
    cm = colormaps[name].copy()
    cm.set_bad(EMPTY_PIXEL_COLOR)
    return cm


class FigureFormatError(ScMEDALError, ValueError):
    """A figure cannot be written with the requested file name or options."""


def display_name(name: str, width: int = 22) -> str:
    """Column title for display: arrows drawn as arrows, wrapped to ``width`` characters."""
    pretty = name.replace(" -> ", " \u2192 ")
    return "\n".join(textwrap.wrap(pretty, width=width, break_long_words=True)) or pretty


def short_name(name: str) -> str:
    """Abbreviated column title: ``CF`` for counterfactual, ``recon.`` for reconstruction."""
    s = name.replace("Counterfactual -> ", "CF -> ").replace(" reconstruction", " recon.")
    return s.replace(" -> ", " \u2192 ")


def _new_figure(size, dpi) -> Figure:
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _tag_figure(fig: Figure, **attrs: Any) -> None:
    """Store the panel's own attributes on ``fig`` as ``fig._scmedal_<name>`` (a Figure does not declare them):
    ``fitted`` (laid out to fill its size: saved as is, no tight cropping), ``axes``, ``marks``, ..."""
    for name, value in attrs.items():
        setattr(fig, f"_scmedal_{name}", value)


# ----------------------------------------------------------------------------------------------
# measuring and wrapping text at its final size
# ----------------------------------------------------------------------------------------------
class _Meter:
    """Text extents in inches, measured with an Agg renderer independent of the figure's dpi."""

    def __init__(self, dpi: int = 144):
        self.fig = _new_figure((4, 4), dpi)
        canvas = self.fig.canvas
        assert isinstance(canvas, FigureCanvasAgg)  # _new_figure attached it
        self.renderer = canvas.get_renderer()
        self._cache: dict = {}

    def size(self, s: str, fontsize: float, rotation: float = 0.0) -> tuple[float, float]:
        key = (s, float(fontsize), float(rotation))
        if key not in self._cache:
            if not s:
                self._cache[key] = (0.0, 0.0)
            else:
                t = self.fig.text(0, 0, s, fontsize=fontsize, rotation=rotation)
                bb = t.get_window_extent(self.renderer)
                t.remove()
                # a little slack: glyph hinting differs between resolutions and backends
                self._cache[key] = (bb.width / self.fig.dpi * 1.03 + 0.5 / 72,
                                    bb.height / self.fig.dpi)
        return self._cache[key]

    def width(self, s: str, fontsize: float) -> float:
        return self.size(s, fontsize)[0]

    def line_height(self, fontsize: float) -> float:
        """Height added by one more line of text."""
        return self.size("Ag\nAg", fontsize)[1] - self.size("Ag", fontsize)[1]


def _tokens(text: str) -> list[tuple[str, str]]:
    """``(separator, piece)`` pairs: words, further split after ``_``, ``-`` and ``/``."""
    out: list[tuple[str, str]] = []
    for w, word in enumerate(text.split()):
        for p, piece in enumerate(re.split(r"(?<=[_/-])(?=.)", word)):
            out.append((" " if w and not p else "", piece))
    return out


def _wrap(meter: _Meter, text: str, fontsize: float, max_w: float) -> tuple[str, bool]:
    """Greedy wrap to lines at most ``max_w`` inches wide.  Returns ``(text, fits)``; ``fits`` is
    False when a piece had to be broken inside (it is then cut between characters)."""
    lines: list[str] = []
    cur = ""
    fits = True
    for sep, piece in _tokens(text):
        cand = cur + sep + piece if cur else piece
        if meter.width(cand, fontsize) <= max_w:
            cur = cand
            continue
        if cur:
            lines.append(cur)
        cur = piece
        while meter.width(cur, fontsize) > max_w and len(cur) > 1:
            fits = False
            k = len(cur) - 1
            while k > 1 and meter.width(cur[:k], fontsize) > max_w:
                k -= 1
            lines.append(cur[:k])
            cur = cur[k:]
    if cur:
        lines.append(cur)
    return "\n".join(lines), fits


def _spread(targets: Sequence[float], step: float, lo: float, hi: float) -> list[float]:
    """Positions at least ``step`` apart, as near as possible to ``targets`` (sorted from high to
    low, order kept), inside ``[lo, hi]`` (which must hold them: ``(n - 1) * step <= hi - lo``)."""
    ys: list[float] = []
    for t in targets:  # top down, each below the previous one
        y = min(max(t, lo), hi)
        if ys:
            y = min(y, ys[-1] - step)
        ys.append(y)
    if ys and ys[-1] < lo:  # pushed below the band: move everything up, keeping the spacing
        shift = lo - ys[-1]
        ys = [y + shift for y in ys]
        top = hi
        for i, y in enumerate(ys):  # and down again from the top, where that overflowed
            ys[i] = min(y, top)
            top = ys[i] - step
    return ys


def _fit_column_titles(meter: _Meter, names: Sequence[str], tile_w: float, max_len: float,
                       gap: float = 0.0):
    """Choose how column titles are drawn so they fit over tiles ``tile_w`` inches wide.

    Tries horizontal titles (full names, then abbreviated; 7 then 6 pt), wrapped at spaces,
    underscores and hyphens, at most 4 lines; otherwise upright (rotated 90 degrees) abbreviated
    titles at the largest size whose lines fit side by side over a tile.
    Returns ``(texts, fontsize, rotation, abbreviated, height_in)``.
    """
    for fs in (FONT_PT, SMALL_PT):
        for abbreviate in (False, True):
            texts = []
            ok = True
            for n in names:
                t, fits = _wrap(meter, short_name(n) if abbreviate else display_name(n, 10_000), fs,
                                tile_w)
                if not fits or t.count("\n") >= 4:
                    ok = False
                    break
                texts.append(t)
            if ok:
                return texts, fs, 0, abbreviate, max(meter.size(t, fs)[1] for t in texts)
    # upright titles: as many lines side by side as fit over a tile and its gap, as long as needed
    def upright(fs, length):
        return [_wrap(meter, short_name(n), fs, length)[0] for n in names]

    choice = None
    for fs, longest in ((FONT_PT, 40 * MM), (SMALL_PT, 40 * MM), (SMALL_PT, 90 * MM)):
        n_lines = max(1, int((tile_w + 0.8 * gap) / meter.line_height(fs)))
        length = max(10 * MM, min(max_len, longest))
        while length <= longest + 1e-9:
            texts = upright(fs, length)
            if all(t.count("\n") < n_lines for t in texts):
                choice = (texts, fs)
                break
            length += 3 * MM
        if choice:
            break
    texts, fs = choice or (upright(SMALL_PT, 90 * MM), SMALL_PT)
    return texts, fs, 90, True, max(meter.size(t, fs, 90)[1] for t in texts)


def _check_size(size, what="size"):
    try:
        w = float(size[0])
        h = None if size[1] is None else float(size[1])
    except (TypeError, ValueError, IndexError):
        raise FigureFormatError(f"{what} must be (width, height) in inches, got {size!r}.") from None
    if not (w > 0 and (h is None or h > 0)):
        raise FigureFormatError(
            f"{what} must be positive (width, height) in inches (height None: derived), got {size!r}.")
    return w, h


def _colorbar_ticks(meter: _Meter, norm, length: float, fontsize: float) -> list[float]:
    """Ticks inside the colour range whose labels do not collide along a bar ``length`` inches
    long: the most (up to 6 intervals) that keep 1 mm between neighbouring labels."""
    vmin, vmax = float(norm.vmin), float(norm.vmax)
    best = [vmin, vmax] if vmin < vmax else [vmin]
    for nbins in range(6, 0, -1):
        ticks = [float(t) for t in MaxNLocator(nbins=nbins, symmetric=isinstance(norm, TwoSlopeNorm))
                 .tick_values(vmin, vmax) if vmin - 1e-9 <= t <= vmax + 1e-9]
        if len(ticks) < 2 and nbins > 1:
            continue
        pos = [float(norm(t)) * length for t in ticks]
        widths = [meter.width(f"{t:g}".replace("-", "\u2212"), fontsize) for t in ticks]
        if all(pos[k + 1] - pos[k] >= (widths[k] + widths[k + 1]) / 2 + 1 * MM for k in range(len(ticks) - 1)):
            return ticks
        best = ticks[::max(1, len(ticks) - 1)] if len(ticks) > 1 else ticks
    return best


def _colorbar(fig, im, rect, label, label_w, meter, horizontal=True):
    """A labelled colour bar in ``rect`` (figure fraction); ticks and label at readable sizes."""
    cax = fig.add_axes(rect)
    cb = fig.colorbar(im, cax=cax, orientation="horizontal" if horizontal else "vertical")
    length_in = (rect[2] * fig.get_figwidth()) if horizontal else (rect[3] * fig.get_figheight())
    cb.set_ticks(_colorbar_ticks(meter, im.norm, length_in, SMALL_PT))
    cb.ax.tick_params(labelsize=SMALL_PT, length=2, width=0.5, pad=1)
    cb.ax.minorticks_off()
    cb.outline.set_linewidth(0.5)
    cb.set_label(_wrap(meter, label, FONT_PT, label_w)[0], fontsize=FONT_PT, labelpad=1.5)
    return cb


def _bar_block_height(meter: _Meter, labels: Sequence[str], label_w: float) -> float:
    """Height under the grid taken by horizontal colour bars: gap, bar, ticks, label."""
    if not labels:
        return 0.0
    lab = max(meter.size(_wrap(meter, s, FONT_PT, label_w)[0], FONT_PT)[1] for s in labels)
    return 1.8 * MM + 2.0 * MM + (2 + 1) / 72 + meter.size("0.5", SMALL_PT)[1] + 1.5 / 72 + lab


def _place_bars(spans, grid_x0, grid_x1, gap, min_w, max_w):
    """Centres and widths of colour bars under their column spans, not overlapping."""
    total = grid_x1 - grid_x0
    n = len(spans)
    widths = [max(3 * MM, min(max_w, max(min_w, 0.8 * (b - a)), (total - (n - 1) * gap) / n))
              for a, b in spans]
    centres = [(a + b) / 2 for a, b in spans]
    order = np.argsort(centres)
    cs = [centres[i] for i in order]
    ws = [widths[i] for i in order]
    for _ in range(3):
        for k in range(1, n):  # push apart
            need = (ws[k - 1] + ws[k]) / 2 + gap - (cs[k] - cs[k - 1])
            if need > 0:
                cs[k - 1] -= need / 2
                cs[k] += need / 2
        if n:  # back inside the grid's width
            lo = grid_x0 - (cs[0] - ws[0] / 2)
            if lo > 0:
                cs = [c + lo for c in cs]
            hi = (cs[-1] + ws[-1] / 2) - grid_x1
            if hi > 0:
                cs = [c - hi for c in cs]
    out = [None] * n
    for k, i in enumerate(order):
        out[i] = (cs[k], ws[k])
    return out


# ----------------------------------------------------------------------------------------------
# the comparison panel
# ----------------------------------------------------------------------------------------------
