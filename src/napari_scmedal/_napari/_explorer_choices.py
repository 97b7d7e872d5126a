"""The Genomap explorer's choices: which model, which cells (a label x batch group, indices or the selected
points) and which target batches, restored from and saved to the plugin settings.

:class:`CellChoices` is a mixin of :class:`._explorer_widget.GenomapExplorer` (it uses the explorer's
``viewer``, ``_saved`` settings and ``stack_panel``); it builds the form and turns it into the arguments of
:func:`napari_scmedal.compare.compare_cells`.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
)

from ._common import MODEL_KEY, cells_layers, model_layers, notify_error
from ._layers import ADATA_KEY
from ._settings import load_settings, save_settings

SECTION = "explorer_widget"
MODES = ("group (label x batch)", "cell indices", "selected points")
ANY = "(any)"
SCALES = ("log1p", "zscore")


class CellChoices:
    """The explorer's form (model, cells, target batches, scale) and what it selects."""

    def _build_choices(self, root) -> None:
        """Add the form and the Compute / All batches buttons to ``root``."""
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
        self.indices_edit.setPlaceholderText("e.g. 0, 12, 40 (positions or obs names)")
        self.targets_list = QListWidget()
        self.targets_list.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.targets_list.setMaximumHeight(110)
        self.average_check = QCheckBox("average the selected cells (one row)")
        self.scale_combo = QComboBox()
        self.scale_combo.addItems(list(SCALES))
        self.auto_check = QCheckBox("update when the selection changes")
        self.auto_check.setChecked(True)
        for text, w in (("model", self.model_combo), ("cells from layer", self.cells_combo),
                        ("choose cells by", self.mode_combo), ("label", self.label_combo),
                        ("batch", self.batch_combo), ("cells shown", self.max_cells_spin),
                        ("indices", self.indices_edit), ("target batches", self.targets_list),
                        ("scale", self.scale_combo)):
            form.addRow(text, w)
        form.addRow(self.average_check)
        form.addRow(self.auto_check)
        root.addLayout(form)
        row = QHBoxLayout()
        self.compute_btn = QPushButton("Compute")
        self.all_btn = QPushButton("All batches")
        row.addWidget(self.compute_btn)
        row.addWidget(self.all_btn)
        root.addLayout(row)

    def _restore(self):
        s = load_settings(SECTION)
        self._saved = s
        if s.get("mode") in MODES:
            self.mode_combo.setCurrentText(s["mode"])
        if isinstance(s.get("max_cells"), int):
            self.max_cells_spin.setValue(s["max_cells"])
        if s.get("scale") in SCALES:
            self.scale_combo.setCurrentText(s["scale"])
        self.average_check.setChecked(bool(s.get("average", False)))
        self.auto_check.setChecked(bool(s.get("auto_update", True)))
        self.indices_edit.setText(str(s.get("indices", "")))

    def settings(self):
        """The current choices, as saved in the plugin settings."""
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

    def save_choices(self, **remember) -> dict:
        """Save :meth:`settings` (``remember``: values to offer again when the model changes); returns them."""
        self._saved.update(remember)
        s = self.settings()
        save_settings(SECTION, s)
        return s

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
        """The chosen model, or None."""
        name = self.model_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name].metadata.get(MODEL_KEY)
        return None

    def cells_layer(self):
        """The chosen cells layer (default: the model's layer), or None."""
        name = self.cells_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        name = self.model_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _model_and_layer(self):
        """The model and its cells layer, or ``(None, None)`` after telling the user how to get a model."""
        model, layer = self.model(), self.cells_layer()
        if model is None or layer is None:
            notify_error(ValueError("No model: train or load one in the scMEDAL model widget first "
                                    "(Plugins > scMEDAL > scMEDAL model)."), self)
            return None, None
        return model, layer

    def _on_model_changed(self, *_):
        model = self.model()
        key = id(model) if model is not None else None
        if getattr(self, "_model_key", "unset") == key:
            return
        self._model_key = key
        self.targets_list.clear()
        self.label_combo.clear()
        self.batch_combo.clear()
        self.stack_panel.offer_versions(model, self._saved.get("stack_version"))
        if model is None:
            return
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
        """The target batches selected in the list."""
        return [self.targets_list.item(i).text() for i in range(self.targets_list.count())
                if self.targets_list.item(i).isSelected()]

    def chosen_cells(self, layer):
        """Integer indices (into the layer's AnnData) of the cells to compare."""
        mode = self.mode_combo.currentText()
        if mode == MODES[2]:
            return _selected_points(layer)
        from napari_scmedal.selection import (
            limit_cells,
            parse_indices,
            resolve_cells,
            select_cells,
        )

        if mode == MODES[1]:  # positions or obs names, as the CLI's --cells
            adata = layer.metadata[ADATA_KEY]
            return resolve_cells(parse_indices(self.indices_edit.text()), list(map(str, adata.obs_names)))

        model = self.model()
        group = {}
        if self.label_combo.currentText() not in ("", ANY) and model.recipe.label_key:
            group[model.recipe.label_key] = self.label_combo.currentText()
        if self.batch_combo.currentText() not in ("", ANY):
            group[model.recipe.batch_key] = self.batch_combo.currentText()
        idx = select_cells(layer.metadata[ADATA_KEY], group)
        if self.average_check.isChecked():
            return idx
        return limit_cells(idx, self.max_cells_spin.value(), seed=0)  # the CLI's --per-cell rule


def _selected_points(layer) -> np.ndarray:
    """Indices of the points selected in ``layer`` (a DataError naming the selection tool when none is)."""
    from napari_scmedal.errors import DataError

    idx = np.array(sorted(layer.selected_data), dtype=np.int64)
    if idx.size == 0:
        raise DataError(f"No points are selected in '{layer.name}': select cells with the "
                        "selection tool (press S) or choose cells by group or index.")
    return idx
