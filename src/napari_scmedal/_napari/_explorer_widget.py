"""Dock widget: genomap explorer (Original, FE/RE reconstructions, counterfactuals, differences).

All science is in :func:`napari_scmedal.compare.compare_cells`; this widget picks the cells and
target batches, runs it in a worker and shows the returned :class:`~napari_scmedal.compare.Comparison`
as napari layers laid out as tiles:

* band 1 (expression, one shared colormap and contrast range): Original, FE reconstruction,
  RE reconstruction, Counterfactual -> b for each target batch b;
* band 2 (differences, diverging colormap with symmetric limits centred on 0): FE - Original
  under FE, Counterfactual -> b - Original under Counterfactual -> b;
* band 3: Counterfactual -> b - Counterfactual -> own batch under Counterfactual -> b.

Each image layer stacks the comparison's rows (cells, or one averaged group) top to bottom with
a small NaN gap. The own batch of each row is framed, the top varying genes are marked with
labelled points, and hovering a pixel names its gene and every layer's value there.

"All cells": one version (Original, FE, RE or a counterfactual) of every cell of the cells layer as
ONE image layer over a lazy dask stack (:func:`napari_scmedal.genomap.genomap_stack`), with a slider
over cells. Memory stays bounded while scrolling: the layer opts out of napari's global dask cache
(``cache=False``; by default that cache may grow to 25% of the machine's memory, shared by all
layers, see ``napari.utils.resize_dask_cache`` and the "dask" application setting, which we leave
to the user) and the stack itself keeps only its last few computed chunks (``STACK_CACHE_CHUNKS``
chunks of ``STACK_CHUNK_CELLS`` cells).
"""

from __future__ import annotations

import time

import numpy as np
from napari.layers import Image, Points, Vectors
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ._common import (MODEL_KEY, StepRunner, cells_layers, model_layers, notify_error, scroll_root, worker_finished,
                      worker_started)
from ._genomap_layer import GenomapImage, gene_under
from ._layers import ADATA_KEY
from ._settings import load_settings, save_settings

SECTION = "explorer_widget"
PREFIX = "genomap | "
GENOMAP_KEY = "scmedal_genomap"
EXPRESSION_CMAP = "viridis"
DIFFERENCE_CMAP = "RdBu_r"
MODES = ("group (label x batch)", "cell indices", "selected points")
ANY = "(any)"
ROW_GAP = 2  # NaN pixels between the rows of one tile
TILE_GAP = 8  # world units between tiles
BAND_GAP = 14  # world units between bands (room for titles)
TITLES_LAYER = PREFIX + "titles"
ROWS_LAYER = PREFIX + "row titles"
OWN_LAYER = PREFIX + "own batch"
TOP_LAYER = PREFIX + "top genes"
MARKS_LAYER = PREFIX + "marked genes"  # the gene panel's layers (_gene_panel.py)
SET_LAYER = PREFIX + "gene set"
STACK_KEY = "scmedal_genomap_stack"
STACK_CHUNK_CELLS = 64  # cells per chunk (one model call) of an all-cells stack
STACK_CACHE_CHUNKS = 4  # chunks an all-cells stack keeps: 4 x 64 x 54 x 54 x 4 B = 3 MB at most
STACK_GAP = 10  # world units between the other layers and an all-cells stack


def stack_versions(batches):
    """``[(label, core version)]`` offered for an all-cells stack."""
    from napari_scmedal.compare import FE_RECON, ORIGINAL, RE_RECON, counterfactual_name

    out = [(ORIGINAL, "original"), (FE_RECON, "fe"), (RE_RECON, "re")]
    return out + [(counterfactual_name(b), f"cf:{b}") for b in batches]


def stack_layer_name(label):
    return f"genomaps: {label} (all cells)"


def tile_positions(comp):
    """``{image name: (band, column)}`` for the readable tile arrangement described above."""
    from napari_scmedal.compare import (
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
    from napari_scmedal.compare import FE_MINUS_ORIGINAL

    t = dict(_short_fixed(), **{FE_MINUS_ORIGINAL: "FE - Orig."})
    if name in t:
        return t[name]
    return name.replace("Counterfactual -> ", "\u2192 ").replace(" - Original", " - Orig.").replace(
        " - \u2192 own batch", " - own")


#: Tile layers are named "<compact version> | genomap" so that names differ within their first 20 characters
#: (napari's layer list shows about that many): batch names longer than BATCH_CHARS keep their head and tail.
LAYER_SUFFIX = " | genomap"
BATCH_CHARS = 11


def _abbrev(batch: str) -> str:
    b = str(batch)
    return b if len(b) <= BATCH_CHARS else b[:3] + "\u2026" + b[-(BATCH_CHARS - 4):]


def _short_fixed() -> dict:
    """Short names of the versions every comparison has (tile titles and layer names share them)."""
    from napari_scmedal.compare import FE_RECON, ORIGINAL, RE_RECON

    return {ORIGINAL: "Original", FE_RECON: "FE recon.", RE_RECON: "RE recon."}


def tile_layer_name(name: str) -> str:
    """The napari layer name of the comparison image ``name``: ``Original | genomap``, ``CF <batch> | genomap``,
    ``dOrig CF <batch> | genomap`` (counterfactual minus original), ``dOwn CF <batch> | genomap``, ..."""
    from napari_scmedal.compare import FE_MINUS_ORIGINAL

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


class GenomapExplorer(QWidget):
    """Pick cells and target batches; show their genomaps in every version, with differences."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.comparison = None
        self.layers = {}  # image name -> layer
        self.last_error = None
        self.last_info = None
        self.last_seconds = None  # wall time of the last compute, selection to layers
        self.workers = []
        self._pending = False
        # applies a comparison to the layers a few per event-loop turn
        self._runner = StepRunner(self, budget_s=self.APPLY_BUDGET_S, on_error=self._apply_failed)
        self._origin = None  # world (y, x) of the top-left tile, kept across recomputes
        self._watched = set()

        root = scroll_root(self)
        form = QFormLayout()
        self.model_combo = QComboBox()
        self.cells_combo = QComboBox()
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.label_combo = QComboBox()
        self.batch_combo = QComboBox()
        self.max_cells_spin = QSpinBox()
        self.max_cells_spin.setRange(1, 50)
        self.max_cells_spin.setValue(3)
        self.indices_edit = QLineEdit()
        self.indices_edit.setPlaceholderText("e.g. 0, 12, 40")
        self.targets_list = QListWidget()
        self.targets_list.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.targets_list.setMaximumHeight(110)
        self.average_check = QCheckBox("average the selected cells (one row)")
        self.scale_combo = QComboBox()
        self.scale_combo.addItems(["log1p", "zscore"])
        self.auto_check = QCheckBox("update when the selection changes")
        self.auto_check.setChecked(True)
        form.addRow("model", self.model_combo)
        form.addRow("cells from layer", self.cells_combo)
        form.addRow("choose cells by", self.mode_combo)
        form.addRow("label", self.label_combo)
        form.addRow("batch", self.batch_combo)
        form.addRow("cells shown", self.max_cells_spin)
        form.addRow("indices", self.indices_edit)
        form.addRow("target batches", self.targets_list)
        form.addRow("scale", self.scale_combo)
        form.addRow(self.average_check)
        form.addRow(self.auto_check)
        root.addLayout(form)
        row = QHBoxLayout()
        self.compute_btn = QPushButton("Compute")
        self.all_btn = QPushButton("All batches")
        row.addWidget(self.compute_btn)
        row.addWidget(self.all_btn)
        root.addLayout(row)
        self.status_label = QLabel("Train or load a model in the scMEDAL model widget, then Compute.")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)
        self.hover_label = QLabel("Hover a genomap pixel to see its gene and values.")
        self.hover_label.setWordWrap(True)
        self.hover_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hover_label.setFixedHeight(4 * self.hover_label.fontMetrics().lineSpacing() + 6)  # never squashes the form
        self.hover_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        root.addWidget(self.hover_label)
        root.addWidget(QLabel("Genes varying most across the target batches:"))
        self.top_list = QListWidget()
        self.top_list.setMaximumHeight(170)
        root.addWidget(self.top_list)
        from ._gene_panel import GenePanel  # imports this module's names

        self.gene_panel = GenePanel(self)
        root.addWidget(self.gene_panel)
        from ._test_panel import PixelTestPanel

        self.test_panel = PixelTestPanel(self)
        root.addWidget(self.test_panel)
        # all cells: one lazy image stack with a slider over cells
        root.addWidget(QLabel("All cells (one image stack, a slider over cells, computed on demand):"))
        srow = QHBoxLayout()
        self.stack_version_combo = QComboBox()
        self.stack_btn = QPushButton("Add all-cells stack")
        srow.addWidget(self.stack_version_combo, 1)
        srow.addWidget(self.stack_btn)
        root.addLayout(srow)
        self.stack_workers = []
        self.stack_layer = None
        root.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.compute)

        self._restore()
        self.compute_btn.clicked.connect(self.compute)
        self.all_btn.clicked.connect(self._select_all_targets)
        self.stack_btn.clicked.connect(self.add_all_cells_stack)
        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.mode_combo.currentTextChanged.connect(self._update_mode)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._refresh_layers()
        self._update_mode()

    # ------------------------------------------------------------------ choices
    def _restore(self):
        s = load_settings(SECTION)
        self._saved = s
        if s.get("mode") in MODES:
            self.mode_combo.setCurrentText(s["mode"])
        if isinstance(s.get("max_cells"), int):
            self.max_cells_spin.setValue(s["max_cells"])
        if s.get("scale") in ("log1p", "zscore"):
            self.scale_combo.setCurrentText(s["scale"])
        self.average_check.setChecked(bool(s.get("average", False)))
        self.auto_check.setChecked(bool(s.get("auto_update", True)))
        self.indices_edit.setText(str(s.get("indices", "")))

    def settings(self):
        return {
            "mode": self.mode_combo.currentText(),
            "label": self.label_combo.currentText(),
            "batch": self.batch_combo.currentText(),
            "max_cells": self.max_cells_spin.value(),
            "indices": self.indices_edit.text(),
            "targets": self.target_batches(),
            "scale": self.scale_combo.currentText(),
            "average": self.average_check.isChecked(),
            "auto_update": self.auto_check.isChecked(),
            "stack_version": self.stack_version_combo.currentText(),
        }

    def _update_mode(self, *_):
        mode = self.mode_combo.currentText()
        self.label_combo.setEnabled(mode == MODES[0])
        self.batch_combo.setEnabled(mode == MODES[0])
        self.max_cells_spin.setEnabled(mode == MODES[0])
        self.indices_edit.setEnabled(mode == MODES[1])

    def _refresh_layers(self, event=None):
        for combo, layers in ((self.model_combo, model_layers(self.viewer)),
                              (self.cells_combo, cells_layers(self.viewer))):
            cur = combo.currentText()
            names = [ly.name for ly in layers]
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if cur in names:
                combo.setCurrentText(cur)
            combo.blockSignals(False)
        for ly in cells_layers(self.viewer):
            key = getattr(ly, "unique_id", None) or id(ly)
            if key not in self._watched:
                self._watched.add(key)
                ly.selected_data.events.items_changed.connect(
                    lambda *a, _ly=ly: self._on_selection_changed(_ly))
        self._on_model_changed()

    def model(self):
        name = self.model_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name].metadata.get(MODEL_KEY)
        return None

    def cells_layer(self):
        name = self.cells_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        name = self.model_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_model_changed(self, *_):
        model = self.model()
        key = id(model) if model is not None else None
        if getattr(self, "_model_key", "unset") == key:
            return
        self._model_key = key
        self.targets_list.clear()
        self.label_combo.clear()
        self.batch_combo.clear()
        self.stack_version_combo.clear()
        if model is None:
            return
        self.stack_version_combo.addItems([label for label, _ in stack_versions(model.batches)])
        if self.stack_version_combo.findText(str(self._saved.get("stack_version", ""))) >= 0:
            self.stack_version_combo.setCurrentText(self._saved["stack_version"])
        saved_targets = self._saved.get("targets") or []
        batches = [str(b) for b in model.batches]
        self.targets_list.addItems(batches)
        keep = [b for b in saved_targets if b in batches] or batches
        for i in range(self.targets_list.count()):
            it = self.targets_list.item(i)
            it.setSelected(it.text() in keep)
        labels = [str(x) for x in (model.labels or [])]
        self.label_combo.addItems([ANY] + labels)
        self.batch_combo.addItems([ANY] + batches)
        for combo, key in ((self.label_combo, "label"), (self.batch_combo, "batch")):
            v = self._saved.get(key)
            if v and combo.findText(v) >= 0:
                combo.setCurrentText(v)
        if self.label_combo.currentText() == ANY and labels:
            self.label_combo.setCurrentText(labels[0])

    def _select_all_targets(self):
        for i in range(self.targets_list.count()):
            self.targets_list.item(i).setSelected(True)

    def target_batches(self):
        return [self.targets_list.item(i).text() for i in range(self.targets_list.count())
                if self.targets_list.item(i).isSelected()]

    def chosen_cells(self, layer):
        """Integer indices (into the layer's AnnData) of the cells to compare."""
        from napari_scmedal.compare import select_cells
        from napari_scmedal.errors import DataError

        adata = layer.metadata[ADATA_KEY]
        mode = self.mode_combo.currentText()
        if mode == MODES[2]:
            idx = np.array(sorted(layer.selected_data), dtype=np.int64)
            if idx.size == 0:
                raise DataError(f"No points are selected in '{layer.name}': select cells with the "
                                "selection tool (press S) or choose cells by group or index.")
            return idx
        if mode == MODES[1]:
            text = self.indices_edit.text().replace(";", ",")
            try:
                idx = [int(t) for t in text.replace(" ", ",").split(",") if t.strip()]
            except ValueError:
                raise DataError(f"Cannot read cell indices {text!r}: write integers separated by commas, "
                                "e.g. 0, 12, 40.") from None
            if not idx:
                raise DataError("No cell index given: type one or more, e.g. 0, 12, 40.")
            return np.array(idx, dtype=np.int64)
        model = self.model()
        group = {}
        if self.label_combo.currentText() not in ("", ANY) and model.recipe.label_key:
            group[model.recipe.label_key] = self.label_combo.currentText()
        if self.batch_combo.currentText() not in ("", ANY):
            group[model.recipe.batch_key] = self.batch_combo.currentText()
        idx = select_cells(adata, group)
        if not self.average_check.isChecked() and idx.size > self.max_cells_spin.value():
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(idx, self.max_cells_spin.value(), replace=False))
        return idx

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

    def _model_and_layer(self):
        """The model and its cells layer, or ``(None, None)`` after telling the user how to get a model."""
        model, layer = self.model(), self.cells_layer()
        if model is None or layer is None:
            notify_error(ValueError("No model: train or load one in the scMEDAL model widget first "
                                    "(Plugins > scMEDAL > scMEDAL model)."), self)
            return None, None
        return model, layer

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
        s = self.settings()
        save_settings(SECTION, s)
        adata = layer.metadata[ADATA_KEY]
        average = s["average"]
        scale = s["scale"]
        needs_layout = getattr(model, "layout", None) is None
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

        return self._launch(_work, _show, self.workers, self.compute_btn, _then)

    def _launch(self, work, on_result, pool: list, button, then=None, on_error=None):
        """Run ``work`` in a thread_worker: ``on_result`` gets its result, errors become a notification and
        the status line (or go to ``on_error(exc)``), ``button`` is disabled meanwhile, ``then()`` runs when it
        has finished."""
        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        pool.append(worker)

        def _err(exc):
            if on_error is not None:
                return on_error(exc)
            self.status_label.setText(f"Failed: {exc}")
            notify_error(exc, self)

        def _finish():
            worker_finished()
            if worker in pool:
                pool.remove(worker)
            button.setEnabled(True)
            if then is not None:
                then()

        worker.returned.connect(on_result)
        worker.errored.connect(_err)
        worker.finished.connect(_finish)
        button.setEnabled(False)
        worker_started()
        worker.start()
        return worker

    # ------------------------------------------------------------------ all cells
    @property
    def stack_busy(self):
        return bool(self.stack_workers)

    def stack_version(self):
        """Core version string (``"original"``, ``"fe"``, ``"re"``, ``"cf:<b>"``) chosen for the stack."""
        model = self.model()
        label = self.stack_version_combo.currentText()
        for lab, version in stack_versions(model.batches if model is not None else []):
            if lab == label:
                return lab, version
        return None

    def add_all_cells_stack(self):
        """Build the lazy stack of the chosen version for every cell of the cells layer in a worker
        (the layout, and contrast limits from a few chunks), then add it as one image layer."""
        model, layer = self._model_and_layer()
        if model is None:
            return None
        if self.stack_busy:
            return None
        choice = self.stack_version()
        if choice is None:
            notify_error(ValueError("No version chosen: pick Original, a reconstruction or a counterfactual."), self)
            return None
        label, version = choice
        self._saved["stack_version"] = label
        save_settings(SECTION, self.settings())
        adata = layer.metadata[ADATA_KEY]
        self.status_label.setText(f"Preparing the all-cells stack ({label}) ...")

        def _work():
            from napari_scmedal.genomap import genomap_stack, stack_limits, stack_source

            stack = genomap_stack(model, adata, version, chunk_cells=STACK_CHUNK_CELLS,
                                  cache_chunks=STACK_CACHE_CHUNKS)
            limits = stack_limits(stack, n_chunks=3)
            return stack, limits, stack_source(stack).layout

        def _show(result):
            stack, limits, layout = result
            self.show_stack(stack, label, version, limits, layout, adata)

        return self._launch(_work, _show, self.stack_workers, self.stack_btn)

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
        self.stack_layer = ly
        n = stack.shape[0]
        self.status_label.setText(f"{name}: {n} cells as {stack.shape[1]} x {stack.shape[2]} genomaps, computed "
                                  f"{STACK_CHUNK_CELLS} cells at a time as you move the cell slider (log1p).")
        return ly

    def lookup_stack(self, world_pos):
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

    #: Time spent applying layer changes per event-loop turn (the window repaints and reacts in between).
    APPLY_BUDGET_S = 0.04

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

    def _apply_failed(self, exc):
        """A layer update failed: say so, never leave "Computing..." behind."""
        self.status_label.setText(f"Failed: {exc}")
        notify_error(exc, self)

    def _comparison_steps(self, comp):
        """Generator of the layer changes that show ``comp`` (one layer per step)."""
        self.comparison = comp
        self.hover_label.setText("Hover a genomap pixel to see its gene and values.")
        R, C = comp.shape
        n = comp.n_rows
        band_h = n * (R + ROW_GAP) - ROW_GAP
        y0, x0 = self._block_origin(C)
        pos = tile_positions(comp)
        layout = comp.layout
        first = not any(ly in self.viewer.layers for ly in self.layers.values())
        wanted = set()
        for name in comp.names:
            band, col = pos[name]
            data = stack_rows(comp.images[name])
            kind = comp.kinds[name]
            cmap = EXPRESSION_CMAP if kind == "expression" else DIFFERENCE_CMAP
            limits = tuple(float(v) for v in comp.limits_for(name))
            translate = (y0 + band * (band_h + BAND_GAP), x0 + col * (C + TILE_GAP))
            meta = {GENOMAP_KEY: True, "kind": kind, "image": name, "layout": layout, "tile_shape": (R, C),
                    "gap": ROW_GAP, "row_labels": list(comp.row_titles), "comparison": comp,
                    "colormap_name": cmap, "units": comp.units}
            lname = tile_layer_name(name)
            wanted.add(lname)
            if lname in self.viewer.layers and isinstance(self.viewer.layers[lname], Image):
                ly = self.viewer.layers[lname]
                # only touch what changed: every property change costs napari events and a redraw
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
            else:
                ly = self.viewer.add_layer(GenomapImage(data, name=lname, colormap=cmap, contrast_limits=limits,
                                                        translate=translate, interpolation2d="nearest",
                                                        metadata=meta))
            self._colorbar(ly, name, comp)
            self.layers[name] = ly
            yield
        for ly in list(self.viewer.layers):
            if ly.metadata.get(GENOMAP_KEY) and ly.name not in wanted and ly.name not in (
                    TITLES_LAYER, ROWS_LAYER, OWN_LAYER, TOP_LAYER, MARKS_LAYER, SET_LAYER):
                self.viewer.layers.remove(ly)
        self.layers = {k: v for k, v in self.layers.items() if v in self.viewer.layers}
        yield
        yield from self._add_annotations(comp, pos, band_h, y0, x0)
        self._fill_top_list(comp)
        if first:
            self.focus()
        self.status_label.setText(
            f"{n} row(s) x {len(comp.names)} images of {R} x {C} pixels ({comp.units}); "
            f"expression range {comp.expression_limits[0]:.2f} to {comp.expression_limits[1]:.2f}, "
            f"differences +/-{comp.difference_limits[1]:.2f}.")
        yield from self.gene_panel.comparison_steps(comp)  # marked genes and gene set follow the comparison
        self.test_panel.comparison_shown(comp)  # offers the new target batches; an old test result is hidden

    def _colorbar(self, ly, name, comp):
        """One colour bar per scale on the canvas: the first expression tile's (shared viridis scale, top right)
        and the first difference tile's (centred diverging scale, bottom right); the units are in the status
        line and the layer metadata."""
        first = {kind: next(n for n in comp.names if comp.kinds[n] == kind)
                 for kind in ("expression", "difference") if kind in comp.kinds.values()}
        cb = ly.colorbar
        cb.visible = name in first.values()
        if cb.visible:
            cb.position = "top_right" if comp.kinds[name] == "expression" else "bottom_right"

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

    def _replace_layer(self, name, adder, data, **kwargs):
        """Update this widget's annotation layer ``name`` in place (removing napari layers is slow:
        it triggers a full garbage collection), or add it when missing."""
        kwargs.setdefault("metadata", {})[GENOMAP_KEY] = True
        ly = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(ly, Points) and adder == self.viewer.add_points:
            features = kwargs.get("features")
            ly.selected_data = set()
            ly.data = data
            if features is not None:
                import pandas as pd

                ly.features = pd.DataFrame(features)
            if "text" in kwargs:
                ly.text = kwargs["text"]
            ly.visible = True
            return ly
        if isinstance(ly, Vectors) and adder == self.viewer.add_vectors:
            ly.data = data
            ly.metadata.update(kwargs["metadata"])
            ly.visible = True
            return ly
        if ly is not None:
            self.viewer.layers.remove(ly)
        return adder(data, name=name, **kwargs)

    def _hide_layer(self, name):
        if name in self.viewer.layers:
            self.viewer.layers[name].visible = False

    def _add_annotations(self, comp, pos, band_h, y0, x0):
        """Generator: titles, row titles, own-batch frames, top-gene marks (one layer per step)."""
        R, C = comp.shape
        # titles above the tiles of band 1 (and FE - Original); band labels and row titles on the left
        pts, texts = [], []
        for name in comp.names:
            band, col = pos[name]
            if band == 0 or col < 3:
                title = short_title(name, comp)
                # long titles (batch names) of neighbouring tiles are staggered so they do not overlap
                lift = 5 if (band == 0 and col >= 3 and col % 2 == 0 and len(title) * 5 > C + TILE_GAP) else 0
                pts.append((y0 + band * (band_h + BAND_GAP) - 3 - lift, x0 + col * (C + TILE_GAP) + C / 2))
                texts.append(title)
        self._replace_layer(
            TITLES_LAYER, self.viewer.add_points, np.array(pts, dtype=float),
            size=0.01, face_color="transparent", border_width=0, features={"title": texts},
            text={"string": "{title}", "size": 7, "color": "white", "anchor": "center"},
        )
        yield
        pts, texts = [], []
        for r in range(comp.n_rows):
            pts.append((y0 + r * (R + ROW_GAP) + R / 2, x0 - 3))
            texts.append(row_title(comp, r))
        n_bands = 1 + max(b for b, _ in pos.values())
        band_labels = {1: "CF - Original", 2: "CF - CF own batch"}
        for band in range(1, n_bands):
            if band in band_labels and len(comp.batches):
                pts.append((y0 + band * (band_h + BAND_GAP) + band_h / 2, x0 + 3 * (C + TILE_GAP) - 3))
                texts.append(band_labels[band])
        pts.append((y0, x0 - 2.5 * C))  # keeps the row titles inside "fit to view"
        texts.append("")
        self._replace_layer(
            ROWS_LAYER, self.viewer.add_points, np.array(pts, dtype=float),
            size=0.01, face_color="transparent", border_width=0, features={"title": texts},
            text={"string": "{title}", "size": 7, "color": "white", "anchor": "lower_right"},
        )
        yield
        # frame around each row's own-batch counterfactual: four edge segments per row in one Vectors layer (a
        # Shapes layer costs a one-time triangulation compile of ~1 s the first time one is created)
        frames = []
        for r in range(comp.n_rows):
            own = comp.own_batch_column(r)
            if own is None or own not in pos:
                continue
            band, col = pos[own]
            top = y0 + band * (band_h + BAND_GAP) + r * (R + ROW_GAP) - 0.5
            left = x0 + col * (C + TILE_GAP) - 0.5
            frames.append(frame_segments(top, left, R, C))
        if frames:
            self._replace_layer(OWN_LAYER, self.viewer.add_vectors, np.concatenate(frames), edge_color="yellow",
                                edge_width=1.0, vector_style="line", opacity=1.0)
            yield
        else:
            self._hide_layer(OWN_LAYER)
            yield
        # top varying genes: marked on every expression tile of their row; on the Original tile at most one
        # name per quadrant of the tile (the best-ranked gene there), so names never pile up at fit-to-view
        # zoom; the full ranked list is in the widget
        tg = comp.top_genes
        if tg is not None and len(tg):
            pts, labels = [], []
            exp_names = [nm for nm in comp.names if comp.kinds[nm] == "expression"]
            named = label_quadrants(tg, (R, C))
            for i, (_, t) in enumerate(tg.iterrows()):
                r = int(t["row"])
                for nm in exp_names:
                    band, col = pos[nm]
                    pts.append((y0 + band * (band_h + BAND_GAP) + r * (R + ROW_GAP) + float(t["row_px"]),
                                x0 + col * (C + TILE_GAP) + float(t["col_px"])))
                    labels.append(str(t["gene"]) if col == 0 and i in named else "")
            self._replace_layer(
                TOP_LAYER, self.viewer.add_points, np.array(pts, dtype=float), size=2.2,
                face_color="transparent", border_color="white", border_width=0.15,
                features={"gene": labels},
                text={"string": "{gene}", "size": 6, "color": "white", "anchor": "upper_left",
                      "translation": [-1.5, 1.5]},
            )
            yield
        else:
            self._hide_layer(TOP_LAYER)
            yield

    def _fill_top_list(self, comp):
        self.top_list.clear()
        t = comp.top_genes_overall
        if t is None or not len(t):
            self.top_list.addItem("(needs at least 2 target batches)")
            return
        for _, row in t.iterrows():
            self.top_list.addItem(f"{int(row['rank']):2d}. {row['gene']}  (pixel {int(row['row_px'])},"
                                  f"{int(row['col_px'])}; spread {float(row['spread']):.3f})")

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
        if info is None:
            st = self.lookup_stack(event.position)
            if st is not None:
                gene = st["gene"] or "(empty pixel)"
                val = "" if st["value"] is None or not np.isfinite(st["value"]) else f": {st['value']:.3f}"
                self.hover_label.setText(f"{gene} at pixel {st['pixel']}, cell {st['cell']} ({st['obs_name']}) "
                                         f"in {st['layer']}{val}")
            return
        gene = info["gene"] or "(empty pixel)"
        comp = self.comparison
        lines = [f"{gene} at pixel {info['pixel']}, {info['row_title']}"]
        for kind in ("expression", "difference"):
            vals = ", ".join(f"{short_title(k, comp)} {v:.2f}" for k, v in info["values"].items()
                             if comp.kinds[k] == kind and np.isfinite(v))
            if vals:
                lines.append(f"{kind}: {vals}")
        text = "\n".join(lines)
        self.hover_label.setText(text)
