"""The Genomap explorer's layers on the canvas: its tile images, and what is drawn over them (tile titles,
row titles, own-batch frames, top-gene marks, colour bars) and the ranked top-gene list.

Layers are updated in place when they exist (removing a napari layer is slow: it triggers a full garbage
collection); geometry and names come from :mod:`._tiles`. The gene panel and the tile overlays use
:func:`replace_layer` / :func:`hide_layer` for their layers too.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Points, Vectors

from ._genomap_layer import GenomapImage
from ._tiles import (
    BAND_LABELS,
    GENOMAP_KEY,
    OWN_LAYER,
    ROWS_LAYER,
    TILE_GAP,
    TITLES_LAYER,
    TOP_LAYER,
    frame_segments,
    label_quadrants,
    row_title,
    short_title,
)


def replace_layer(viewer, name, adder, data, **kwargs):
    """Update the explorer's annotation layer ``name`` in place, or add it with ``adder`` (``viewer.add_points``
    or ``viewer.add_vectors``) when missing; it carries the explorer's metadata key. Returns the layer."""
    kwargs.setdefault("metadata", {})[GENOMAP_KEY] = True
    ly = viewer.layers[name] if name in viewer.layers else None
    if isinstance(ly, Points) and adder == viewer.add_points:
        features = kwargs.get("features")
        ly.selected_data = set()
        ly.data = data
        if features is not None:
            import pandas as pd

            ly.features = pd.DataFrame(features)
        if "text" in kwargs:
            ly.text = kwargs["text"]
        ly.metadata.update(kwargs["metadata"])
        ly.visible = True
        return ly
    if isinstance(ly, Vectors) and adder == viewer.add_vectors:
        ly.data = data
        ly.metadata.update(kwargs["metadata"])
        ly.visible = True
        return ly
    if ly is not None:
        viewer.layers.remove(ly)
    return adder(data, name=name, **kwargs)


def hide_layer(viewer, name) -> None:
    """Hide the layer ``name`` when it exists (cheaper than removing it)."""
    if name in viewer.layers:
        viewer.layers[name].visible = False


def put_tile(viewer, name, data, cmap, limits, translate, meta):
    """Update the tile image layer ``name`` in place (only what changed: every property change costs napari
    events and a redraw), or add it as a :class:`GenomapImage`. Returns the layer."""
    if name in viewer.layers and isinstance(viewer.layers[name], Image):
        ly = viewer.layers[name]
        if ly.colormap.name != cmap:
            ly.colormap = cmap
        if not np.allclose(ly.translate[-2:], translate):
            ly.translate = translate
        ly.metadata.update(meta)
        lo, hi = ly.contrast_limits_range
        if (lo, hi) != limits:
            ly.contrast_limits_range = (min(lo, limits[0]), max(hi, limits[1]))
        ly.data = data
        ly.contrast_limits_range = limits
        ly.contrast_limits = limits
        return ly
    return viewer.add_layer(GenomapImage(data, name=name, colormap=cmap, contrast_limits=limits,
                                         translate=translate, interpolation2d="nearest", metadata=meta))


def colorbar(ly, name, comp) -> None:
    """One colour bar per scale on the canvas: the first expression tile's (shared viridis scale, top right)
    and the first difference tile's (centred diverging scale, bottom right); the units are in the status
    line and the layer metadata."""
    first = {kind: next(n for n in comp.names if comp.kinds[n] == kind)
             for kind in ("expression", "difference") if kind in comp.kinds.values()}
    cb = ly.colorbar
    cb.visible = name in first.values()
    if cb.visible:
        cb.position = "top_right" if comp.kinds[name] == "expression" else "bottom_right"


def _text_points(viewer, name, pts, texts, anchor):
    """A points layer of invisible points carrying white text (titles)."""
    replace_layer(viewer, name, viewer.add_points, np.array(pts, dtype=float),
                  size=0.01, face_color="transparent", border_width=0, features={"title": texts},
                  text={"string": "{title}", "size": 7, "color": "white", "anchor": anchor})


def _tile_titles(viewer, comp, grid):
    """Titles above the tiles of band 1 (and FE - Original)."""
    pts, texts = [], []
    for name in comp.names:
        band, col = grid.pos[name]
        if band == 0 or col < 3:
            title = short_title(name, comp)
            # long titles (batch names) of neighbouring tiles are staggered so they do not overlap
            lift = 5 if (band == 0 and col >= 3 and col % 2 == 0 and len(title) * 5 > grid.C + TILE_GAP) else 0
            pts.append((grid.band_top(band) - 3 - lift, grid.column_left(col) + grid.C / 2))
            texts.append(title)
    _text_points(viewer, TITLES_LAYER, pts, texts, "center")


def _row_titles(viewer, comp, grid):
    """Row titles left of the tiles, and the labels of the difference bands."""
    R, C = grid.R, grid.C
    pts = [(grid.row_top(0, r) + R / 2, grid.x0 - 3) for r in range(comp.n_rows)]
    texts = [row_title(comp, r) for r in range(comp.n_rows)]
    n_bands = 1 + max(b for b, _ in grid.pos.values())
    for band in range(1, n_bands):
        if band in BAND_LABELS and len(comp.batches):
            pts.append((grid.band_top(band) + grid.band_h / 2, grid.column_left(3) - 3))
            texts.append(BAND_LABELS[band])
    pts.append((grid.y0, grid.x0 - 2.5 * C))  # keeps the row titles inside "fit to view"
    texts.append("")
    _text_points(viewer, ROWS_LAYER, pts, texts, "lower_right")


def _own_frames(viewer, comp, grid):
    """A frame around each row's own-batch counterfactual: four edge segments per row in one Vectors layer (a
    Shapes layer costs a one-time triangulation compile of ~1 s the first time one is created)."""
    frames = []
    for r in range(comp.n_rows):
        own = comp.own_batch_column(r)
        if own is None or own not in grid.pos:
            continue
        band, col = grid.pos[own]
        frames.append(frame_segments(grid.row_top(band, r) - 0.5, grid.column_left(col) - 0.5, grid.R, grid.C))
    if frames:
        replace_layer(viewer, OWN_LAYER, viewer.add_vectors, np.concatenate(frames), edge_color="yellow",
                      edge_width=1.0, vector_style="line", opacity=1.0)
    else:
        hide_layer(viewer, OWN_LAYER)


def _top_genes(viewer, comp, grid):
    """Top varying genes, marked on every expression tile of their row; on the Original tile at most one name
    per quadrant of the tile (the best-ranked gene there), so names never pile up at fit-to-view zoom; the
    full ranked list is in the widget."""
    tg = comp.top_genes
    if tg is None or not len(tg):
        hide_layer(viewer, TOP_LAYER)
        return
    pts, labels = [], []
    exp_names = [nm for nm in comp.names if comp.kinds[nm] == "expression"]
    named = label_quadrants(tg, (grid.R, grid.C))
    for i, (_, t) in enumerate(tg.iterrows()):
        r = int(t["row"])
        for nm in exp_names:
            band, col = grid.pos[nm]
            pts.append((grid.row_top(band, r) + float(t["row_px"]), grid.column_left(col) + float(t["col_px"])))
            labels.append(str(t["gene"]) if col == 0 and i in named else "")
    replace_layer(viewer, TOP_LAYER, viewer.add_points, np.array(pts, dtype=float), size=2.2,
                  face_color="transparent", border_color="white", border_width=0.15, features={"gene": labels},
                  text={"string": "{gene}", "size": 6, "color": "white", "anchor": "upper_left",
                        "translation": [-1.5, 1.5]})


def annotation_steps(viewer, comp, grid):
    """Generator: titles, row titles, own-batch frames, top-gene marks of ``comp`` laid out on ``grid``
    (a :class:`._tiles.TileGrid`), one layer per step."""
    for draw in (_tile_titles, _row_titles, _own_frames, _top_genes):
        draw(viewer, comp, grid)
        yield


def fill_top_list(list_widget, comp) -> None:
    """The ranked genes varying most across the target batches, one line each, in ``list_widget``."""
    list_widget.clear()
    t = comp.top_genes_overall
    if t is None or not len(t):
        list_widget.addItem("(needs at least 2 target batches)")
        return
    for _, row in t.iterrows():
        list_widget.addItem(f"{int(row['rank']):2d}. {row['gene']}  (pixel {int(row['row_px'])},"
                            f"{int(row['col_px'])}; spread {float(row['spread']):.3f})")
