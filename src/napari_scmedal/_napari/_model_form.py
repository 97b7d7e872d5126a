"""The model widget's form: the cells layer and keys, genes, training preset and limits, device and threads,
and the latent/metrics options; restored from and saved to the plugin settings, filled by scripts through
:meth:`TrainingForm.apply_settings`.

:class:`TrainingForm` is a mixin of :class:`._model_widget.ModelWidget` (it uses the widget's ``viewer``).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QSpinBox,
    QTableWidget,
)

from ._common import cells_layers, obs_columns
from ._layers import ADATA_KEY
from ._settings import load_settings

SECTION = "model_widget"
NONE_LABEL = "(none)"
#: Presets offered (the first is the default) and their tooltips.
PRESETS = {
    "auto": "Default: batch size, learning rate, epochs, patience and the minimum number of epochs are derived "
            "from the number of training cells (shown after training).",
    "quick": "Fixed laptop settings: batch 64, lr 1e-3, up to 150 epochs, patience 10.",
    "paper": "The reference settings, meant for tens of thousands of cells: batch 512, lr 1e-4, up to 500 "
             "epochs, patience 30.",
}


def grid_text(n_genes: int) -> str:
    """Text describing the genomap grid that ``n_genes`` genes fill (the layout the core will compute)."""
    from napari_scmedal.genomap import (
        grid_shape,  # the one grid rule (ensure_layout's default)
    )

    rows, cols = grid_shape(max(1, int(n_genes)))
    empty = rows * cols - n_genes
    extra = f", {empty} empty pixels" if empty else ", every pixel a gene"
    return f"genomap {rows} x {cols}{extra}"


class TrainingForm:
    """The model widget's parameters and what they select."""

    def _build_form(self, root) -> None:
        """Add the training form to ``root``."""
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.batch_combo = QComboBox()
        self.label_combo = QComboBox()
        self.genes_spin = QSpinBox()
        self.genes_spin.setRange(4, 100000)
        self.genes_spin.setValue(2916)
        self.grid_label = QLabel()
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))  # "auto" first: the default
        for i, tip in enumerate(PRESETS.values()):
            self.preset_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.setToolTip("\n".join(f"{k}: {v}" for k, v in PRESETS.items()))
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 10000)
        self.epochs_spin.setSpecialValueText("preset default")
        self.patience_spin = QSpinBox()
        self.patience_spin.setRange(0, 10000)
        self.patience_spin.setSpecialValueText("preset default")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 1_000_000)
        self.batch_spin.setSpecialValueText("preset default")
        self.time_spin = QSpinBox()
        self.time_spin.setRange(0, 10_000_000)
        self.time_spin.setSuffix(" s")
        self.time_spin.setSpecialValueText("no limit")
        self.time_spin.setToolTip("Cap the whole training at about this many seconds: each network stops at the "
                                  "end of the epoch that crosses its share and keeps its best weights. 0 = no limit.")
        self.device_combo = QComboBox()
        self.device_combo.addItems(self._devices())
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 256)
        self.threads_spin.setSpecialValueText("auto")
        form.addRow("cells layer", self.layer_combo)
        form.addRow("batch key", self.batch_combo)
        form.addRow("label key", self.label_combo)
        form.addRow("genes", self.genes_spin)
        form.addRow("", self.grid_label)
        form.addRow("preset", self.preset_combo)
        form.addRow("max epochs", self.epochs_spin)
        form.addRow("patience", self.patience_spin)
        form.addRow("batch size", self.batch_spin)
        form.addRow("time cap", self.time_spin)
        form.addRow("device", self.device_combo)
        form.addRow("threads", self.threads_spin)
        root.addLayout(form)

    def _build_latent_box(self, root) -> None:
        """Add the latent layers and metrics options (and the metrics table) to ``root``."""
        box = QGroupBox("Latent layers and metrics")
        bl = QFormLayout(box)
        self.color_combo = QComboBox()
        self.color_combo.addItems(["batch", "label"])
        self.metrics_check = QCheckBox("compute metrics (METHOD section 4)")
        self.metrics_check.setChecked(True)
        self.baselines_check = QCheckBox("compare with PCA / Harmony")
        self.baselines_check.setToolTip("Also score PCA of the model's log-normalised genes and Harmony on that PCA "
                                        "(batch = the model's batch key) on the same test cells, to judge the "
                                        "correction. Harmony needs: pip install \"napari-scmedal[harmony]\".")
        self.target_combo = QComboBox()
        bl.addRow("colour latents by", self.color_combo)
        bl.addRow("RF target (batch-level)", self.target_combo)
        bl.addRow(self.metrics_check)
        bl.addRow(self.baselines_check)
        self.metrics_table = QTableWidget(0, 0)
        self.metrics_table.setMinimumHeight(140)
        bl.addRow(self.metrics_table)
        root.addWidget(box)

    @staticmethod
    def _devices():
        out = ["auto", "cpu"]
        try:
            import torch

            if torch.cuda.is_available():
                out.append("cuda")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                out.append("mps")
        except Exception:  # pragma: no cover - torch is a hard dependency
            pass
        return out

    def settings(self) -> dict:
        return {
            "batch_key": self.batch_combo.currentText(),
            "label_key": self.label_combo.currentText(),
            "n_genes": self.genes_spin.value(),
            "preset": self.preset_combo.currentText(),
            "max_epochs": self.epochs_spin.value(),
            "patience": self.patience_spin.value(),
            "batch_size": self.batch_spin.value(),
            "max_time": self.time_spin.value(),
            "device": self.device_combo.currentText(),
            "threads": self.threads_spin.value(),
            "color_by": self.color_combo.currentText(),
            "metrics": self.metrics_check.isChecked(),
            "baselines": self.baselines_check.isChecked(),
        }

    def _restore(self):
        self.apply_settings(load_settings(SECTION))

    def apply_settings(self, s: dict) -> None:
        """Set the form from a dict of :meth:`settings` keys (missing keys are left as they are): how saved
        settings are restored, and how scripts, benchmarks and tests fill the form. A batch or label key not
        offered yet (no cells layer) is applied when the layer's columns arrive."""
        if s.get("batch_key") or s.get("label_key"):
            self._wanted_keys = (s.get("batch_key"), s.get("label_key"))
        for combo, key in ((self.batch_combo, "batch_key"), (self.label_combo, "label_key")):
            if s.get(key) and combo.findText(s[key]) >= 0:
                combo.setCurrentText(s[key])
        for spin, key in ((self.genes_spin, "n_genes"), (self.epochs_spin, "max_epochs"),
                          (self.patience_spin, "patience"), (self.batch_spin, "batch_size"),
                          (self.time_spin, "max_time"), (self.threads_spin, "threads")):
            if isinstance(s.get(key), int) and not isinstance(s.get(key), bool):
                spin.setValue(s[key])
        for combo, key in ((self.preset_combo, "preset"), (self.device_combo, "device"),
                           (self.color_combo, "color_by")):
            if s.get(key) and combo.findText(s[key]) >= 0:
                combo.setCurrentText(s[key])
        if "metrics" in s:
            self.metrics_check.setChecked(bool(s["metrics"]))
        if "baselines" in s:
            self.baselines_check.setChecked(bool(s["baselines"]))

    def _update_grid(self):
        self.grid_label.setText(grid_text(self.genes_spin.value()))

    def _refresh_layers(self, event=None):
        current = self.layer_combo.currentText()
        names = [ly.name for ly in cells_layers(self.viewer) if "latent" not in ly.metadata]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        self._on_layer_changed()

    def cells_layer(self):
        name = self.layer_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        return None

    def _on_layer_changed(self, *_):
        layer = self.cells_layer()
        batch_prev = self.batch_combo.currentText() or self._wanted_keys[0]
        label_prev = self.label_combo.currentText() or self._wanted_keys[1]
        self.batch_combo.clear()
        self.label_combo.clear()
        self.target_combo.clear()
        if layer is None:
            return
        adata = layer.metadata[ADATA_KEY]
        cols = obs_columns(adata, categorical_only=True)
        self.batch_combo.addItems(cols)
        self.label_combo.addItems([NONE_LABEL] + cols)
        self.target_combo.addItems([NONE_LABEL] + cols)
        for combo, prev, guesses in (
            (self.batch_combo, batch_prev, ("batch", "sample", "donor")),
            (self.label_combo, label_prev, ("cell_type", "celltype", "cell_line", "label")),
        ):
            if prev and combo.findText(prev) >= 0:
                combo.setCurrentText(prev)
                continue
            for g in guesses:
                if combo.findText(g) >= 0:
                    combo.setCurrentText(g)
                    break
        self.genes_spin.setMaximum(max(4, adata.n_vars))
        if self.genes_spin.value() > adata.n_vars:
            self.genes_spin.setValue(adata.n_vars)
