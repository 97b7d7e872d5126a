"""Dock widget: the Genomap explorer (Original, FE/RE reconstructions, counterfactuals, differences).

All science is in :func:`napari_scmedal.compare.compare_cells`; this widget picks the cells and target
batches (:mod:`._explorer_choices`), runs it in a worker and shows the returned
:class:`~napari_scmedal.compare.Comparison` as napari layers laid out as tiles (:mod:`._tiles` describes the
arrangement; :mod:`._annotations` draws the layers). The own batch of each row is framed, the top varying genes
are marked with labelled points, and hovering a pixel names its gene and every layer's value there.

Below the form sit the gene panel (:mod:`._gene_panel`), the pixel-test panel (:mod:`._test_panel`) and the
all-cells stack (:mod:`._stack_panel`); each gets this widget and runs its workers through :meth:`launch`.
"""

from __future__ import annotations

import time

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QListWidget

from ._annotations import annotation_steps, colorbar, fill_top_list, put_tile
from ._base import DockWidget
from ._common import StepRunner, notify_error, scroll_root
from ._explorer_choices import MODES, CellChoices
from ._gene_panel import GenePanel
from ._genomap_layer import gene_under
from ._layers import ADATA_KEY
from ._stack_panel import StackPanel
from ._test_panel import PixelTestPanel
from ._tiles import (
    ANNOTATION_LAYERS,
    DIFFERENCE_CMAP,
    EXPRESSION_CMAP,
    GENOMAP_KEY,
    ROW_GAP,
    STACK_KEY,
    TILE_GAP,
    TileGrid,
    hover_text,
    stack_hover_text,
    stack_rows,
    tile_layer_name,
)

HOVER_HINT = "Hover a genomap pixel to see its gene and values."


class GenomapExplorer(CellChoices, DockWidget):
    """Pick cells and target batches; show their genomaps in every version, with differences."""

    #: Time spent applying layer changes per event-loop turn (the window repaints and reacts in between).
    APPLY_BUDGET_S = 0.04

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.comparison = None
        self.layers = {}  # image name -> layer
        self.last_seconds = None  # wall time of the last compute, selection to layers
        self._pending = False
        # applies a comparison to the layers a few per event-loop turn; a failed layer update is reported (never
        # leaves "Computing..." behind)
        self._runner = StepRunner(self, budget_s=self.APPLY_BUDGET_S, on_error=self.report_failure)
        self._origin = None  # world (y, x) of the top-left tile, kept across recomputes
        self._watched = set()

        root = scroll_root(self)
        self._build_choices(root)
        self.add_status_label(root, "Train or load a model in the scMEDAL model widget, then Compute.")
        self.hover_label = QLabel(HOVER_HINT)
        self.hover_label.setWordWrap(True)
        self.hover_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hover_label.setFixedHeight(4 * self.hover_label.fontMetrics().lineSpacing() + 6)  # never squashes the form
        self.hover_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        root.addWidget(self.hover_label)
        root.addWidget(QLabel("Genes varying most across the target batches:"))
        self.top_list = QListWidget()
        self.top_list.setMaximumHeight(170)
        root.addWidget(self.top_list)
        self.gene_panel = GenePanel(self)
        root.addWidget(self.gene_panel)
        self.test_panel = PixelTestPanel(self)
        root.addWidget(self.test_panel)
        self.stack_panel = StackPanel(self)  # all cells: one lazy image stack with a slider over cells
        root.addWidget(self.stack_panel)
        self.stack_version_combo = self.stack_panel.version_combo
        self.stack_btn = self.stack_panel.add_btn
        root.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.compute)

        self._restore()
        self.compute_btn.clicked.connect(self.compute)
        self.all_btn.clicked.connect(self._select_all_targets)
        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.mode_combo.currentTextChanged.connect(self._update_mode)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._refresh_layers()
        self._update_mode()

    # ------------------------------------------------------------------ computing
    @property
    def busy(self):
        """True while a comparison is computed or its layers are still being applied."""
        return bool(self.workers) or self._runner.active

    def _on_selection_changed(self, layer):
        if (self.auto_check.isChecked() and self.mode_combo.currentText() == MODES[2]
                and self.model() is not None and layer.name == self.cells_combo.currentText()
                and len(layer.selected_data)):
            self._timer.start()

    def compute(self):
        """Compute the comparison for the current choices in a worker; replaces this widget's layers."""
        model, layer = self._model_and_layer()
        if model is None:
            return None
        if self.busy:
            self._pending = True
            return None
        try:
            cells = self.chosen_cells(layer)
            targets = self.target_batches()
            if not targets:
                raise ValueError("No target batch selected: select at least one in the list "
                                 "(or press All batches).")
        except Exception as exc:
            notify_error(exc, self)
            return None
        s = self.save_choices()
        adata = layer.metadata[ADATA_KEY]
        average, scale = s["average"], s["scale"]
        needs_layout = model.layout is None
        self.status_label.setText("Computing the genomap layout once for this model (Gromov-Wasserstein)..."
                                  if needs_layout else "Computing...")
        t0 = time.perf_counter()

        def _work():
            from napari_scmedal.compare import compare_cells

            return compare_cells(model, cells, target_batches=targets, adata=adata, average=average,
                                 scale=scale)

        def _show(comp):
            def _done():
                self.last_seconds = time.perf_counter() - t0
                self.status_label.setText(self.status_label.text() + f" Updated in {self.last_seconds:.2f} s.")
                if self._pending:
                    self._pending = False
                    self.compute()

            self.show_comparison(comp, incremental=True, on_done=_done)

        def _then():
            if self._pending and not self._runner.active:
                self._pending = False
                self.compute()

        return self.launch(_work, _show, self.workers, [self.compute_btn], _then)

    # ------------------------------------------------------------------ all cells (the stack panel)
    @property
    def stack_busy(self):
        return self.stack_panel.busy

    @property
    def stack_layer(self):
        """The all-cells stack layer added last (None before one is)."""
        return self.stack_panel.layer

    def add_all_cells_stack(self):
        """Add the all-cells stack of the chosen version (see :meth:`._stack_panel.StackPanel.add_stack`)."""
        return self.stack_panel.add_stack()

    def show_stack(self, stack, label, version, limits, layout, adata=None):
        """Add (or update) the image layer of an all-cells stack: ``stack`` is ``(n_cells, R, C)``."""
        return self.stack_panel.show_stack(stack, label, version, limits, layout, adata)

    def lookup_stack(self, world_pos):
        """What is under ``world_pos`` on an all-cells stack (see :meth:`._stack_panel.StackPanel.lookup`)."""
        return self.stack_panel.lookup(world_pos)

    # ------------------------------------------------------------------ layers
    def _block_origin(self, tile_width):
        if self._origin is not None and any(ly in self.viewer.layers for ly in self.layers.values()):
            return self._origin
        right, top = 0.0, 0.0
        others = [ly for ly in self.viewer.layers if not ly.metadata.get(GENOMAP_KEY) and ly.visible]
        if others:
            right = max(ly.extent.world[1][-1] for ly in others)
            top = min(ly.extent.world[0][-2] for ly in others)
            right += 3 * (tile_width + TILE_GAP)  # room for the row titles
        self._origin = (top + 20, right)
        return self._origin

    def tile_origin(self, name):
        """World (y, x) of the top-left pixel of image ``name``'s tile."""
        return tuple(self.layers[name].translate[-2:])

    def show_comparison(self, comp, incremental: bool = False, on_done=None):
        """Turn a Comparison into (re)named layers; existing layers of this widget are updated, not duplicated.
        ``incremental=True`` applies the changes a few layers per event-loop turn (``APPLY_BUDGET_S``), so the
        window never freezes while two dozen layers are created; ``busy`` stays true until the last one."""
        steps = self._comparison_steps(comp)
        if not incremental:
            for _ in steps:
                pass
            if on_done is not None:
                on_done()
            return
        self._runner.start(steps, on_done)  # a newer comparison replaces one still being applied

    def _comparison_steps(self, comp):
        """Generator of the layer changes that show ``comp`` (one layer per step)."""
        self.comparison = comp
        self.hover_label.setText(HOVER_HINT)
        R, C = comp.shape
        grid = TileGrid(comp, self._block_origin(C))
        first = not any(ly in self.viewer.layers for ly in self.layers.values())
        wanted = set()
        for name in comp.names:
            kind = comp.kinds[name]
            cmap = EXPRESSION_CMAP if kind == "expression" else DIFFERENCE_CMAP
            meta = {GENOMAP_KEY: True, "kind": kind, "image": name, "layout": comp.layout, "tile_shape": (R, C),
                    "gap": ROW_GAP, "row_labels": list(comp.row_titles), "comparison": comp,
                    "colormap_name": cmap, "units": comp.units}
            lname = tile_layer_name(name)
            wanted.add(lname)
            ly = put_tile(self.viewer, lname, stack_rows(comp.images[name]), cmap,
                          tuple(float(v) for v in comp.limits_for(name)), grid.origin(name), meta)
            colorbar(ly, name, comp)
            self.layers[name] = ly
            yield
        for ly in list(self.viewer.layers):
            if ly.metadata.get(GENOMAP_KEY) and ly.name not in wanted and ly.name not in ANNOTATION_LAYERS:
                self.viewer.layers.remove(ly)
        self.layers = {k: v for k, v in self.layers.items() if v in self.viewer.layers}
        yield
        yield from annotation_steps(self.viewer, comp, grid)
        fill_top_list(self.top_list, comp)
        if first:
            self.focus()
        self.status_label.setText(
            f"{comp.n_rows} row(s) x {len(comp.names)} images of {R} x {C} pixels ({comp.units}); "
            f"expression range {comp.expression_limits[0]:.2f} to {comp.expression_limits[1]:.2f}, "
            f"differences +/-{comp.difference_limits[1]:.2f}.")
        yield from self.gene_panel.comparison_steps(comp)  # marked genes and gene set follow the comparison
        self.test_panel.comparison_shown(comp)  # offers the new target batches; an old test result is hidden

    def focus(self):
        """Fit the camera to the genomap tiles (and their titles)."""
        layers = [ly for ly in self.viewer.layers if ly.metadata.get(GENOMAP_KEY)]
        if layers and max(ly.ndim for ly in layers) < self.viewer.dims.ndim:
            # napari cannot fit a subset of layers with fewer dimensions than the viewer (an all-cells
            # stack adds the cell axis): fit the stacks too
            layers += [ly for ly in self.viewer.layers if ly.metadata.get(STACK_KEY) and ly.visible]
            if max(ly.ndim for ly in layers) < self.viewer.dims.ndim:
                self.viewer.reset_view()
                return
        if layers:
            self.viewer.fit_to_view(layers=layers, margin=0.02)

    # ------------------------------------------------------------------ hover
    def lookup(self, world_pos):
        """What is under ``world_pos`` (y, x): ``None`` off the tiles, else a dict with the tile's image
        name, the comparison row, the pixel (r, c), the gene there and every image's value there."""
        comp = self.comparison
        if comp is None or not self.layers:
            return None
        for name, ly in self.layers.items():
            if ly not in self.viewer.layers:
                continue
            info = gene_under(ly, tuple(world_pos)[-2:])
            if info is None:
                continue
            row, (r, c) = info["row"], info["pixel"]
            values = {nm: float(comp.images[nm][row, r, c]) for nm in comp.names}
            return {"image": name, "row": row, "row_title": comp.row_titles[row], "pixel": (r, c),
                    "gene": info["gene"], "values": values}
        return None

    def _on_mouse_move(self, viewer, event):
        info = self.lookup(event.position)
        if info is not None:
            self.hover_label.setText(hover_text(info, self.comparison))
            return
        st = self.lookup_stack(event.position)
        if st is not None:
            self.hover_label.setText(stack_hover_text(st))
