"""Overlays drawn on every tile and row of the Genomap explorer's comparison (gene-set outlines, significant
pixels): where each tile's rows are, and one fast Vectors layer of pixel-edge segments."""

from __future__ import annotations

from ._annotations import hide_layer, replace_layer


def tile_row_origins(explorer, comp) -> list:
    """``[(image name, world (y, x) of row r's top-left pixel)]`` for every tile and row the explorer shows."""
    out = []
    for name in comp.names:
        ly = explorer.layers.get(name)
        if ly is None or ly not in explorer.viewer.layers:
            continue
        y, x = explorer.tile_origin(name)
        step = comp.shape[0] + int(ly.metadata.get("gap", 2))
        out.extend((name, (y + r * step, x)) for r in range(comp.n_rows))
    return out


def outline_on_tiles(explorer, mask, layer_name: str, color: str, edge_width: float = 0.25, meta=None):
    """Outline the pixels of ``mask`` (a boolean genomap-shaped array) on every tile and row of the explorer's
    comparison, as ONE napari Vectors layer of pixel-edge segments (thousands of segments stay one fast layer);
    updated in place when it exists. Returns the layer (None when nothing is shown)."""
    import numpy as np

    from napari_scmedal.genesets import outline_segments

    comp, viewer = explorer.comparison, explorer.viewer
    segs = outline_segments(np.asarray(mask, dtype=bool)) if comp is not None else np.zeros((0, 2, 2))
    origins = np.asarray([o for _, o in tile_row_origins(explorer, comp)] if comp is not None else [],
                         dtype=float).reshape(-1, 2)
    if not len(segs) or not len(origins):
        hide_layer(viewer, layer_name)
        return None
    one = np.stack([segs[:, 0], segs[:, 1] - segs[:, 0]], axis=1)  # napari vectors: start, direction
    data = np.tile(one, (len(origins), 1, 1))
    data[:, 0] += np.repeat(origins, len(one), axis=0)
    return replace_layer(viewer, layer_name, viewer.add_vectors, data, edge_color=color, edge_width=edge_width,
                         vector_style="line", opacity=1.0, metadata=dict(meta or {}))
