"""The genomap image layer: a napari ``Image`` whose status bar names the gene under the cursor.

napari 0.9 builds the status bar from the active layer's ``get_status`` (it overwrites any
``viewer.status`` set from a mouse callback), so the gene is provided the napari way: through the
layer's status hook. Tiles of the Genomap explorer (2-D: rows of genomaps stacked with a gap) and
all-cells stacks (3-D: cell, row, column) both carry their gene layout in ``metadata["layout"]``.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image


def gene_under(layer, position, world: bool = True) -> dict | None:
    """``{"gene", "pixel", "row"/"cell", "title"}`` of the genomap pixel at ``position`` (``gene`` None on an
    empty pixel), or None off the tiles or in the gap between rows. Pure lookup on the layer's metadata (no
    Qt); the status bar and the explorer's hover readout both use it."""
    md = layer.metadata
    layout = md.get("layout")
    if layout is None or position is None:
        return None
    data_pos = np.asarray(layer.world_to_data(position) if world else position, dtype=float)
    idx = np.floor(data_pos[-layer.ndim:] + 0.5).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.asarray(layer.data.shape)):
        return None
    R, C = tuple(md.get("tile_shape") or layout.shape)
    gap = int(md.get("gap") or 0)
    y, x = int(idx[-2]), int(idx[-1])
    out = {}
    if layer.ndim >= 3:  # all-cells stack: (cell, row, column)
        if len(np.ravel(position)) < 3:
            return None
        out["cell"] = int(idx[-3])
        adata = md.get("cells_adata")
        out["title"] = (f"cell {out['cell']} ({adata.obs_names[out['cell']]})" if adata is not None
                        else f"cell {out['cell']}")
        r = y
    else:  # explorer tiles: rows of genomaps separated by gap pixels
        row, r = divmod(y, R + gap)
        if r >= R:
            return None
        out["row"] = int(row)
        titles = md.get("row_labels") or []
        out["title"] = titles[row] if row < len(titles) else f"row {row}"
    if not (0 <= r < R and 0 <= x < C):
        return None
    out.update(gene=layout.gene_at(r, x), pixel=(int(r), int(x)))
    return out


class GenomapImage(Image):
    """Genomap tiles or an all-cells genomap stack; the status bar reads ``GENE, <row or cell>: value``."""

    def get_status(self, position=None, *, view_direction=None, dims_displayed=None, world=False, value=None):
        status = super().get_status(position, view_direction=view_direction, dims_displayed=dims_displayed,
                                    world=world, value=value)
        try:
            info = gene_under(self, position, world=world)
        except Exception:  # never break napari's status bar
            info = None
        if info is not None and info["gene"] is not None:
            where = f"{info['gene']}, {info['title']}, pixel {info['pixel']}"
            status["coordinates"] = f"{where}: {status.get('value', '')}"
            status["coords"] = where
        return status

    @property
    def _type_string(self) -> str:  # an image to napari (writers, layer actions, menus), not a new layer type
        return "image"
