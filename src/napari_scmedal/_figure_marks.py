"""Marks on the tiles of :func:`napari_scmedal.figures.comparison_figure`: highlighted genes (a ring on
every tile, named in the gene-label column beside the row), a gene set (the outline of its pixels,
along pixel edges, on every tile) and the set's score under each tile.

Line widths follow the size of one genomap pixel at the panel's physical size: the set outline is a
thin magenta line along pixel edges (absent from viridis and RdBu; with a white halo once pixels are
large enough), so a member pixel keeps its colour inside its outline down to the ~0.2 mm pixels of a
54 x 54 genomap in a 180 mm panel; rings are black on a white halo, visible on every colour.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection

from ._figure_text import MM, SMALL_PT
from .errors import DataError
from .genesets import gene_pixels, gene_set_mask, outline_segments, parse_gene_list, resolve_genes
from .genesets import set_scores as _set_scores

HIGHLIGHT_COLOR = "black"
SET_COLOR = "#ff00ff"  # magenta: absent from viridis and RdBu
HALO = "white"


class TileMarks:
    """Highlighted genes, a gene-set outline and set scores, resolved once for a comparison."""

    def __init__(self, comparison, highlight=None, gene_set=None, gene_set_name=None, set_scores=None) -> None:
        layout = comparison.layout
        self.genes: list[str] = []
        self.pix = np.zeros((0, 2), dtype=np.int64)
        if parse_gene_list(highlight):
            self.genes = resolve_genes(highlight, layout, strict=True).found
            self.pix = gene_pixels(layout, self.genes)
        self.segments = np.zeros((0, 2, 2))
        self.set_genes: list[str] = []
        self.set_name = gene_set_name
        self.scores: pd.DataFrame | None = None
        self.n_set = 0
        if gene_set is not None:
            m = resolve_genes(gene_set, layout)
            self.n_set = len(m.queries)
            if not m.found:
                raise DataError(f"None of the gene set's {len(m.queries)} genes is among the genomap's genes "
                                f"({m.message()}). Resolve other identifiers first with "
                                "genesets.resolve_genes(genes, model, var=adata.var).")
            self.set_genes = m.found
            self.segments = outline_segments(gene_set_mask(layout, self.set_genes))
            if set_scores is None and comparison.scale == "zscore":
                set_scores = _set_scores(comparison, self.set_genes)
        self._decimals: int | None = None
        if set_scores is not None:
            self.scores = set_scores.set_index("row")

    @property
    def score_height(self) -> float:
        """Room (inches) under each row of tiles for the set-score numbers."""
        return (SMALL_PT * 1.25 / 72 + 0.4 * MM) if self.scores is not None else 0.0

    def notes(self) -> list[str]:
        out = []
        if self.genes:
            out.append(f"Black rings: {', '.join(self.genes)} (named in black beside each row).")
        if self.set_genes:
            name = f" {self.set_name}" if self.set_name else ""
            of = f"{len(self.set_genes)} of its {self.n_set} genes" if self.n_set > len(self.set_genes) else \
                f"its {len(self.set_genes)} genes"
            out.append(f"Magenta outline: gene set{name} ({of} in the model).")
        if self.scores is not None:
            out.append("Under each tile: the set's mean z-score (difference tiles: its change).")
        return out

    def label_rows(self, sel: dict, row_ids) -> dict:
        """The rows' gene-label tables (``gene, row_px, col_px``, from the top genes) with a ``mark``
        column: the highlighted genes first (``"highlight"``), then the top genes (``"top"``)."""
        out = {}
        hl = pd.DataFrame({"gene": self.genes, "row_px": self.pix[:, 0], "col_px": self.pix[:, 1],
                           "mark": "highlight"})
        for r in row_ids:
            top = sel.get(r)
            if top is not None:
                top = top[~top["gene"].astype(str).isin(self.genes)][["gene", "row_px", "col_px"]].assign(mark="top")
            parts = [t for t in (hl, top) if t is not None and len(t)]
            if parts:
                out[r] = pd.concat(parts, ignore_index=True)
        return out

    @staticmethod
    def _format(v: float, kind: str, decimals: int) -> str:
        if not np.isfinite(v):
            return "n/a"
        v = round(v, decimals) + 0.0  # no "-0.0"
        return f"{v:+.{decimals}f}" if kind == "difference" else f"{v:.{decimals}f}"

    def _widest(self, fig, decimals: int) -> float:
        """Width (inches) of the widest score text with ``decimals`` decimals."""
        scores = self.scores
        assert scores is not None  # draw() measures only when there are scores
        cols = [c for c in scores.columns if c not in ("title", "n_genes", "set")]
        texts = {self._format(float(v), "difference", decimals) for v in scores[cols].to_numpy().ravel()}
        t = fig.text(0, 0, max(texts, key=len), fontsize=SMALL_PT)
        width = t.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
        t.remove()
        return width

    @staticmethod
    def ring_diameter(px_pt: float) -> float:
        """Diameter (points) of a highlight ring: a few pixels, 4 to 9 pt."""
        return float(np.clip(2.4 * px_pt, 4.0, 9.0))

    def draw(self, fig, ax, row: int, name: str, kind: str, px_pt: float, tile_box) -> list:
        """Draw on one tile; returns the artists added.  ``px_pt``: one genomap pixel in points;
        ``tile_box``: the tile's (x0, y0, width, height) in inches."""
        arts = []
        if len(self.segments):
            # thin enough to leave a pixel's colour visible inside its outline; a halo only where
            # pixels are large enough for it
            core = float(np.clip(0.25 * px_pt, 0.25, 0.7))
            layers = ((HALO, core + 0.5), (SET_COLOR, core)) if px_pt >= 2.0 else ((SET_COLOR, core),)
            xy = self.segments[:, :, ::-1]  # (row, col) -> (x, y) in the image's data coordinates
            for color, lw in layers:
                # matplotlib's stub asks for a Sequence; an (n, 2, 2) array of segments is documented too
                lc = LineCollection(xy, colors=color, linewidths=lw,  # type: ignore[arg-type]
                                    capstyle="projecting", clip_on=False, zorder=3)
                ax.add_collection(lc)
                arts.append(lc)
        if len(self.genes):
            d = self.ring_diameter(px_pt)
            for color, lw in ((HALO, 1.4), (HIGHLIGHT_COLOR, 0.6)):
                arts.append(ax.scatter(self.pix[:, 1], self.pix[:, 0], s=d ** 2, facecolors="none",
                                       edgecolors=color, linewidths=lw, clip_on=False, zorder=4))
        if self.scores is not None and row in self.scores.index and name in self.scores.columns:
            x0, y0, w, _ = tile_box
            if self._decimals is None:  # as many decimals as fit under the narrowest tile (2 to 0)
                self._decimals = next((d for d in (2, 1) if self._widest(fig, d) <= w + 0.9 * MM), 0)
            text = self._format(float(self.scores.at[row, name]), kind, self._decimals)
            W, H = fig.get_size_inches()
            arts.append(fig.text((x0 + w / 2) / W, (y0 - 0.3 * MM) / H, text, ha="center", va="top",
                                 fontsize=SMALL_PT, color="0.15"))
        return arts
