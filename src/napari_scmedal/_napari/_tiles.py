"""Where the Genomap explorer puts things, and what it calls them: pure geometry and names, no Qt.

The explorer shows a :class:`~napari_scmedal.compare.Comparison` as napari layers laid out as tiles:

* band 1 (expression, one shared colormap and contrast range): Original, FE reconstruction,
  RE reconstruction, Counterfactual -> b for each target batch b;
* band 2 (differences, diverging colormap with symmetric limits centred on 0): FE - Original
  under FE, Counterfactual -> b - Original under Counterfactual -> b;
* band 3: Counterfactual -> b - Counterfactual -> own batch under Counterfactual -> b.

Each tile stacks the comparison's rows (cells, or one averaged group) top to bottom with a small NaN gap.
This module holds the layer names and metadata keys the explorer and its panels share, the tile arrangement,
the row/tile titles and layer names, and the shapes of the frames and labels drawn over the tiles.
"""

from __future__ import annotations

import numpy as np

PREFIX = "genomap | "
GENOMAP_KEY = "scmedal_genomap"  # metadata key of every explorer layer (tiles and annotations)
STACK_KEY = "scmedal_genomap_stack"  # metadata key of an all-cells stack
EXPRESSION_CMAP = "viridis"
DIFFERENCE_CMAP = "RdBu_r"
ROW_GAP = 2  # NaN pixels between the rows of one tile
TILE_GAP = 8  # world units between tiles
BAND_GAP = 14  # world units between bands (room for titles)
TITLES_LAYER = PREFIX + "titles"
ROWS_LAYER = PREFIX + "row titles"
OWN_LAYER = PREFIX + "own batch"
TOP_LAYER = PREFIX + "top genes"
MARKS_LAYER = PREFIX + "marked genes"  # the gene panel's layers (_gene_panel.py)
SET_LAYER = PREFIX + "gene set"
SIGNIFICANT_LAYER = PREFIX + "significant pixels"  # the pixel-test panel's outline (_test_panel.py)
#: Annotation layers: kept (updated in place or hidden) when a new comparison replaces the tiles; removing a
#: layer is slow (a full garbage collection).
ANNOTATION_LAYERS = (TITLES_LAYER, ROWS_LAYER, OWN_LAYER, TOP_LAYER, MARKS_LAYER, SET_LAYER, SIGNIFICANT_LAYER)
#: Tile layers are named "<compact version> | genomap" so that names differ within their first 20 characters
#: (napari's layer list shows about that many): batch names longer than BATCH_CHARS keep their head and tail.
LAYER_SUFFIX = " | genomap"
BATCH_CHARS = 11
BAND_LABELS = {1: "CF - Original", 2: "CF - CF own batch"}


def stack_versions(batches):
    """``[(label, core version)]`` offered for an all-cells stack."""
    from napari_scmedal.versions import FE_RECON, ORIGINAL, RE_RECON, counterfactual_name

    out = [(ORIGINAL, "original"), (FE_RECON, "fe"), (RE_RECON, "re")]
    return out + [(counterfactual_name(b), f"cf:{b}") for b in batches]


def stack_layer_name(label):
    """The napari layer name of the all-cells stack of version ``label``."""
    return f"genomaps: {label} (all cells)"


def tile_positions(comp):
    """``{image name: (band, column)}`` for the readable tile arrangement described above."""
    from napari_scmedal.versions import (
        FE_MINUS_ORIGINAL,
        FE_RECON,
        ORIGINAL,
        RE_RECON,
        cf_minus_original_name,
        cf_minus_own_name,
        counterfactual_name,
    )

    pos = {ORIGINAL: (0, 0), FE_RECON: (0, 1), RE_RECON: (0, 2), FE_MINUS_ORIGINAL: (1, 1)}
    for i, b in enumerate(comp.batches):
        pos[counterfactual_name(b)] = (0, 3 + i)
        pos[cf_minus_original_name(b)] = (1, 3 + i)
        pos[cf_minus_own_name(b)] = (2, 3 + i)
    # anything else the core adds goes at the end of its kind's band
    nxt = {0: 3 + len(comp.batches), 1: 3 + len(comp.batches)}
    for name in comp.names:
        if name not in pos:
            band = 0 if comp.kinds[name] == "expression" else 1
            pos[name] = (band, nxt[band])
            nxt[band] += 1
    return pos


class TileGrid:
    """World coordinates of the tiles of a comparison whose top-left tile starts at ``origin`` (y, x)."""

    def __init__(self, comp, origin):
        self.R, self.C = comp.shape
        self.band_h = comp.n_rows * (self.R + ROW_GAP) - ROW_GAP
        self.y0, self.x0 = origin
        self.pos = tile_positions(comp)

    def band_top(self, band) -> float:
        """World y of the top of ``band``."""
        return self.y0 + band * (self.band_h + BAND_GAP)

    def column_left(self, col) -> float:
        """World x of the left edge of column ``col``."""
        return self.x0 + col * (self.C + TILE_GAP)

    def origin(self, name) -> tuple:
        """World (y, x) of the top-left pixel of image ``name``'s tile."""
        band, col = self.pos[name]
        return self.band_top(band), self.column_left(col)

    def row_top(self, band, r) -> float:
        """World y of row ``r``'s top pixel in ``band``."""
        return self.band_top(band) + r * (self.R + ROW_GAP)


def stack_rows(images, gap=ROW_GAP):
    """``(n_rows, R, C)`` -> 2-D ``(n_rows * (R + gap) - gap, C)`` with NaN rows between cells."""
    n, R, C = images.shape
    out = np.full((n * (R + gap) - gap, C), np.nan, dtype=np.float32)
    for i in range(n):
        out[i * (R + gap) : i * (R + gap) + R] = images[i]
    return out


def row_title(comp, r):
    """Compact row title: label and batch of a cell, or the group title of an average."""
    if comp.averaged:
        return comp.row_titles[r].replace(" (mean of", "\n(mean of")
    parts = [p for p in (comp.row_labels[r], comp.row_batches[r]) if p]
    return " | ".join(parts) if parts else comp.row_titles[r]


def short_title(name, comp):
    """Compact tile title (napari text does not scale with zoom)."""
    from napari_scmedal.versions import FE_MINUS_ORIGINAL

    t = dict(_short_fixed(), **{FE_MINUS_ORIGINAL: "FE - Orig."})
    if name in t:
        return t[name]
    return name.replace("Counterfactual -> ", "\u2192 ").replace(" - Original", " - Orig.").replace(
        " - \u2192 own batch", " - own")


def _abbrev(batch: str) -> str:
    b = str(batch)
    return b if len(b) <= BATCH_CHARS else b[:3] + "\u2026" + b[-(BATCH_CHARS - 4):]


def _short_fixed() -> dict:
    """Short names of the versions every comparison has (tile titles and layer names share them)."""
    from napari_scmedal.versions import FE_RECON, ORIGINAL, RE_RECON

    return {ORIGINAL: "Original", FE_RECON: "FE recon.", RE_RECON: "RE recon."}


def tile_layer_name(name: str) -> str:
    """The napari layer name of the comparison image ``name``: ``Original | genomap``, ``CF <batch> | genomap``,
    ``dOrig CF <batch> | genomap`` (counterfactual minus original), ``dOwn CF <batch> | genomap``, ..."""
    from napari_scmedal.versions import FE_MINUS_ORIGINAL

    fixed = dict(_short_fixed(), **{FE_MINUS_ORIGINAL: "dOrig FE"})
    if name in fixed:
        return fixed[name] + LAYER_SUFFIX
    cf = "Counterfactual -> "
    for tail, tag in ((" - Original", "dOrig "), (" - " + cf + "own batch", "dOwn ")):
        if name.startswith(cf) and name.endswith(tail):
            return f"{tag}CF {_abbrev(name[len(cf):-len(tail)])}{LAYER_SUFFIX}"
    if name.startswith(cf):
        return f"CF {_abbrev(name[len(cf):])}{LAYER_SUFFIX}"
    return name + LAYER_SUFFIX


def frame_segments(top, left, height, width) -> np.ndarray:
    """The four edges of a rectangle as napari Vectors data ``(4, 2, 2)``: ``[start (y, x), direction]``."""
    return np.array([[[top, left], [0, width]], [[top + height, left], [0, width]],
                     [[top, left], [height, 0]], [[top, left + width], [height, 0]]], dtype=float)


def label_quadrants(top_genes, shape) -> set:
    """Positions (0-based, in table order) of the top genes named on the canvas: per row of the comparison,
    the best-ranked gene in each quadrant of the tile, so at most four names per tile, one per region."""
    R, C = shape
    taken, named = set(), set()
    ranked = sorted(range(len(top_genes)), key=lambda i: (int(top_genes.iloc[i]["row"]),
                                                            int(top_genes.iloc[i]["rank"])))
    for i in ranked:
        t = top_genes.iloc[i]
        q = (int(t["row"]), float(t["row_px"]) >= R / 2, float(t["col_px"]) >= C / 2)
        if q not in taken:
            taken.add(q)
            named.add(i)
    return named


def hover_text(info, comp) -> str:
    """The explorer's hover readout for :meth:`GenomapExplorer.lookup`'s ``info``: the gene and pixel, then
    every version's value there (expression, then differences)."""
    gene = info["gene"] or "(empty pixel)"
    lines = [f"{gene} at pixel {info['pixel']}, {info['row_title']}"]
    for kind in ("expression", "difference"):
        vals = ", ".join(f"{short_title(k, comp)} {v:.2f}" for k, v in info["values"].items()
                         if comp.kinds[k] == kind and np.isfinite(v))
        if vals:
            lines.append(f"{kind}: {vals}")
    return "\n".join(lines)


def stack_hover_text(st) -> str:
    """The hover readout on an all-cells stack (``st`` from the stack panel's ``lookup``)."""
    gene = st["gene"] or "(empty pixel)"
    val = "" if st["value"] is None or not np.isfinite(st["value"]) else f": {st['value']:.3f}"
    return f"{gene} at pixel {st['pixel']}, cell {st['cell']} ({st['obs_name']}) in {st['layer']}{val}"
