"""The Genomap explorer's all-cells stack: one version (Original, FE, RE or a counterfactual) of every cell of
the cells layer as ONE image layer over a lazy dask stack (:func:`napari_scmedal.genomap.genomap_stack`), with
a slider over cells.

Memory stays bounded while scrolling: the layer opts out of napari's global dask cache (``cache=False``; by
default that cache may grow to 25% of the machine's memory, shared by all layers, see
``napari.utils.resize_dask_cache`` and the "dask" application setting, which we leave to the user) and the
stack itself keeps only its last few computed chunks (``STACK_CACHE_CHUNKS`` chunks of ``STACK_CHUNK_CELLS``
cells).
"""

from __future__ import annotations

from napari.layers import Image
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import notify_error
from ._genomap_layer import GenomapImage, gene_under
from ._layers import ADATA_KEY
from ._tiles import EXPRESSION_CMAP, STACK_KEY, stack_layer_name, stack_versions

STACK_CHUNK_CELLS = 64  # cells per chunk (one model call) of an all-cells stack
STACK_CACHE_CHUNKS = 4  # chunks an all-cells stack keeps: 4 x 64 x 54 x 54 x 4 B = 3 MB at most
STACK_GAP = 10  # world units between the other layers and an all-cells stack


class StackPanel(QWidget):
    """Choose a version, add its all-cells stack (``explorer``: the GenomapExplorer it belongs to)."""

    def __init__(self, explorer):
        super().__init__()
        self.ex = explorer
        self.viewer = explorer.viewer
        self.workers = []
        self.layer = None  # the last stack added
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("All cells (one image stack, a slider over cells, computed on demand):"))
        row = QHBoxLayout()
        self.version_combo = QComboBox()
        self.add_btn = QPushButton("Add all-cells stack")
        row.addWidget(self.version_combo, 1)
        row.addWidget(self.add_btn)
        lay.addLayout(row)
        self.add_btn.clicked.connect(self.add_stack)

    @property
    def busy(self) -> bool:
        return bool(self.workers)

    def offer_versions(self, model, saved_label=None) -> None:
        """Offer the versions of ``model`` (none without one); choose ``saved_label`` when offered."""
        self.version_combo.clear()
        if model is None:
            return
        self.version_combo.addItems([label for label, _ in stack_versions(model.batches)])
        if self.version_combo.findText(str(saved_label or "")) >= 0:
            self.version_combo.setCurrentText(saved_label)

    def version(self):
        """``(label, core version)`` chosen (core version ``"original"``, ``"fe"``, ``"re"``, ``"cf:<b>"``)."""
        model = self.ex.model()
        label = self.version_combo.currentText()
        for lab, version in stack_versions(model.batches if model is not None else []):
            if lab == label:
                return lab, version
        return None

    def add_stack(self):
        """Build the lazy stack of the chosen version for every cell of the cells layer in a worker
        (the layout, and contrast limits from a few chunks), then add it as one image layer."""
        model, layer = self.ex._model_and_layer()
        if model is None or self.busy:
            return None
        choice = self.version()
        if choice is None:
            notify_error(ValueError("No version chosen: pick Original, a reconstruction or a counterfactual."),
                         self.ex)
            return None
        label, version = choice
        self.ex.save_choices(stack_version=label)
        adata = layer.metadata[ADATA_KEY]
        self.ex.status_label.setText(f"Preparing the all-cells stack ({label}) ...")

        def _work():
            from napari_scmedal.genomap import genomap_stack, stack_limits, stack_source

            stack = genomap_stack(model, adata, version, chunk_cells=STACK_CHUNK_CELLS,
                                  cache_chunks=STACK_CACHE_CHUNKS)
            limits = stack_limits(stack, n_chunks=3)
            return stack, limits, stack_source(stack).layout

        def _show(result):
            stack, limits, layout = result
            self.show_stack(stack, label, version, limits, layout, adata)

        return self.ex.launch(_work, _show, self.workers, [self.add_btn])

    def show_stack(self, stack, label, version, limits, layout, adata=None):
        """Add (or update) the image layer of an all-cells stack: ``stack`` is ``(n_cells, R, C)``."""
        name = stack_layer_name(label)
        meta = {STACK_KEY: True, "version": version, "layout": layout, "units": "log1p",
                "colormap_name": EXPRESSION_CMAP, "cells_adata": adata}
        limits = tuple(float(v) for v in limits)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Image):
            ly = self.viewer.layers[name]
            ly.metadata.update(meta)
            ly.contrast_limits_range = limits
            ly.data = stack
            ly.contrast_limits = limits
        else:
            others = [o for o in self.viewer.layers if o.visible and not o.metadata.get(STACK_KEY)]
            top, right = 0.0, 0.0
            if others:
                top = min(o.extent.world[0][-2] for o in others)
                right = max(o.extent.world[1][-1] for o in others) + STACK_GAP
            # cache=False: napari's global dask cache would keep every visited slice (see module doc)
            ly = self.viewer.add_layer(GenomapImage(stack, name=name, colormap=EXPRESSION_CMAP,
                                                    contrast_limits=limits, interpolation2d="nearest",
                                                    metadata=meta, cache=False, translate=(0.0, top, right)))
        self.layer = ly
        n = stack.shape[0]
        self.ex.status_label.setText(f"{name}: {n} cells as {stack.shape[1]} x {stack.shape[2]} genomaps, computed "
                                     f"{STACK_CHUNK_CELLS} cells at a time as you move the cell slider (log1p).")
        return ly

    def lookup(self, world_pos):
        """Under ``world_pos`` on an all-cells stack: ``{"layer", "cell", "obs_name", "pixel", "gene",
        "value"}`` or None."""
        for ly in self.viewer.layers:
            if not (isinstance(ly, Image) and ly.metadata.get(STACK_KEY) and ly.visible):
                continue
            info = gene_under(ly, tuple(world_pos))
            if info is None:
                continue
            adata = ly.metadata.get("cells_adata")
            value = ly.get_value(tuple(world_pos), world=True)
            return {"layer": ly.name, "cell": info["cell"], "pixel": info["pixel"], "gene": info["gene"],
                    "obs_name": str(adata.obs_names[info["cell"]]) if adata is not None else None,
                    "value": None if value is None else float(value)}
        return None
