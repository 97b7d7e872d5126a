"""npe2 writer: genomap image layers -> one image stack (.tif/.tiff/.npy) + a JSON gene-layout sidecar.

napari routes a save here only for file names ending in ``.genomap.tif``, ``.genomap.tiff`` or
``.genomap.npy`` (napari.yaml): an ordinary ``.tif`` of an ordinary image goes to napari's own writer.
The selection may mix the explorer's image, points, shapes and vectors layers: the annotation layers (titles,
frames, top-gene and marked-gene marks, gene-set outline) are skipped, and an image layer that is not a
genomap tile is refused by name.

The stack has shape ``(n_layers, height, width)`` (float32; empty pixels NaN) in the order the
layers were selected. The sidecar ``<file>.genomap.json`` records each layer's name and kind, the
tile geometry and, when the layers came from the genomap explorer, the gene layout
(``GenomapLayout.to_dict()``), so the gene at any pixel can be looked up again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_scmedal._utils import atomic_output
from napari_scmedal._utils import json_safe as _json_safe
from napari_scmedal.errors import ScMEDALError

SIDECAR_SUFFIX = ".genomap.json"


def sidecar_path(path) -> Path:
    """Path of the JSON sidecar written next to the image stack ``path``."""
    return Path(str(path) + SIDECAR_SUFFIX)


def _atomic_write(path: Path, write) -> None:
    with atomic_output(path) as tmp:
        write(tmp)


#: File-name endings napari routes to this writer (napari.yaml).
EXTENSIONS = (".genomap.tif", ".genomap.tiff", ".genomap.npy")
GENOMAP_KINDS = ("expression", "difference")


def is_genomap_layer_data(meta: dict) -> bool:
    """Whether an image layer's ``meta`` (napari layer-data attributes) describes a genomap tile: the
    explorer marks them with a ``kind`` (expression/difference) and the gene layout."""
    md = (meta or {}).get("metadata", {}) or {}
    return md.get("kind") in GENOMAP_KINDS


def write_genomaps(path: str, layer_data: list) -> list[str]:
    """Write genomap image layers (``(data, meta, layer_type)`` tuples; points, shapes and vectors annotation
    layers are skipped) as a stack plus sidecar; return the paths."""
    path = Path(path)
    layer_data = [t for t in layer_data if t[2] == "image"]
    if not layer_data:
        raise ScMEDALError("No image layer to save: select one or more genomap image layers, then save again.")
    foreign = [str(m.get("name")) for _, m, _ in layer_data if not is_genomap_layer_data(m)]
    if foreign:
        raise ScMEDALError(f"{foreign} {'is not a genomap layer' if len(foreign) == 1 else 'are not genomap layers'} "
                           "(no gene layout): this writer saves genomap tiles of the Genomap explorer. Save other "
                           "images with napari's own writer (a file name without '.genomap', e.g. image.tif).")
    arrays = [np.asarray(d, dtype=np.float32) for d, _, _ in layer_data]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ScMEDALError(
            f"The selected image layers have different shapes {sorted(shapes)}: select layers of one "
            "comparison (all genomap tiles of one Compute have the same shape) and save again."
        )
    stack = np.stack(arrays)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        _atomic_write(path, lambda tmp: tifffile.imwrite(tmp, stack, photometric="minisblack"))
    elif suffix == ".npy":
        def _save(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, stack)

        _atomic_write(path, _save)
    else:
        raise ScMEDALError(f"Cannot write genomaps to '{path.name}': use a .genomap.tif, .genomap.tiff or "
                           ".genomap.npy file name (.tif, .tiff or .npy from Python).")

    layers = []
    layout = tile = gap = None
    for (_, meta, _), arr in zip(layer_data, arrays):
        md = meta.get("metadata", {}) or {}
        layers.append({
            "name": meta.get("name"),
            "kind": md.get("kind"),
            "contrast_limits": meta.get("contrast_limits"),
            "colormap": md.get("colormap_name"),
            "translate": meta.get("translate"),
            "row_labels": md.get("row_labels"),
        })
        if layout is None and md.get("layout") is not None:
            layout = md["layout"]
            if hasattr(layout, "to_dict"):
                layout = layout.to_dict()
        tile = tile if tile is not None else md.get("tile_shape")
        gap = gap if gap is not None else md.get("gap")
    side = {
        "format": "napari-scmedal genomap stack",
        "image_file": path.name,
        "stack_shape": list(stack.shape),
        "layers": layers,
        "tile_shape": tile,
        "gap": gap,
        "layout": layout,
    }
    sp = sidecar_path(path)
    text = json.dumps(_json_safe(side), indent=1)
    _atomic_write(sp, lambda tmp: Path(tmp).write_text(text))
    return [str(path), str(sp)]
