"""Dock widget: train, save and load an scMEDAL model; show its latents and metrics.

The widget only gathers parameters and calls the core (:class:`napari_scmedal.ScMEDAL`,
:mod:`napari_scmedal.metrics`) in worker threads -- training runs in a separate process
(:mod:`napari_scmedal.train_process`), so it never holds this process's GIL; results become layers (one per
event-loop turn) and a table.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_scmedal.metrics import LATENT_NAMES as SHORT_NAMES
from napari_scmedal.metrics import metric_goal, metrics_rows

from ._common import (MODEL_KEY, Bridge, StepRunner, cells_layers, notify_error, notify_info, obs_columns,
                      worker_finished, worker_started, scroll_root)
from ._health_view import TrainingReport
from ._layers import ADATA_KEY, cells_layer_data, legend_layer_data, pca_2d
from ._loss_canvas import LossCanvas
from ._settings import load_settings, save_settings

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
LATENT_NAMES = {"fe": "FE latent", "fec": "FEC latent", "re": "RE latent"}


def grid_text(n_genes: int) -> str:
    """Text describing the genomap grid that ``n_genes`` genes fill (the layout the core will compute)."""
    try:
        from napari_scmedal.compare import default_shape  # the shape ensure_layout uses

        rows, cols = default_shape(int(n_genes))
    except ImportError:  # pragma: no cover
        rows = cols = max(1, math.ceil(math.sqrt(n_genes)))
    empty = rows * cols - n_genes
    extra = f", {empty} empty pixels" if empty else ", every pixel a gene"
    return f"genomap {rows} x {cols}{extra}"


def _fmt_eta(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ModelWidget(QWidget):
    """Train (auto, quick or paper preset; optional time cap), cancel, save and load scMEDAL; the settings
    used and the training health; FE/RE latent layers; metrics."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self.model_layer = None  # the cells layer the model belongs to
        self.metrics = None
        self.last_error = None
        self.last_info = None
        self.last_warning = None
        self.workers = []
        self._cancel = threading.Event()
        self._pbar = None
        self._pbar_model = None
        self._bridge = Bridge()
        self._bridge.message.connect(self._on_progress)
        # a new model's report, latent layers and legend: one per event-loop turn (each layer takes 0.1-0.2 s)
        self._layer_steps = StepRunner(self, budget_s=0, on_error=self._steps_failed)

        root = scroll_root(self)
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

        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.train_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save model...")
        self.load_btn = QPushButton("Load model...")
        self.save_btn.setEnabled(False)
        row.addWidget(self.save_btn)
        row.addWidget(self.load_btn)
        root.addLayout(row)
        self.status_label = QLabel("No model yet: train one or load a saved model.")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)
        self.report = TrainingReport()  # settings used and training health of the current model
        root.addWidget(self.report)
        self.loss_canvas = LossCanvas()
        root.addWidget(self.loss_canvas)

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
        root.addStretch(1)

        self._wanted_keys = (None, None)  # batch/label keys to pick once a cells layer offers them
        self._restore()
        self.genes_spin.valueChanged.connect(self._update_grid)
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        self.train_btn.clicked.connect(self.start_training)
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(self._save_dialog)
        self.load_btn.clicked.connect(self._load_dialog)
        self.color_combo.currentTextChanged.connect(self._recolor_latents)
        self.baselines_check.toggled.connect(self._baselines_toggled)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self._update_grid()

    # ------------------------------------------------------------------ settings and choices
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

    # ------------------------------------------------------------------ training
    def start_training(self):
        layer = self.cells_layer()
        if layer is None:
            notify_error(ValueError("No cells layer: open an .h5ad file or the CellBench sample first "
                                    "(File > Open Sample > scMEDAL > CellBench sample)."), self)
            return
        if self.busy:
            notify_info("The model widget is busy: wait for it or press Cancel.", self)
            return
        s = self.settings()
        save_settings(SECTION, s)
        adata = layer.metadata[ADATA_KEY]
        label_key = None if s["label_key"] in ("", NONE_LABEL) else s["label_key"]
        ctor = dict(
            batch_key=s["batch_key"],
            label_key=label_key,
            n_genes=s["n_genes"],
            preset=s["preset"],
            device=None if s["device"] == "auto" else s["device"],
            threads=s["threads"] or None,
        )
        fit = dict(
            max_epochs=s["max_epochs"] or None,
            patience=s["patience"] or None,
            batch_size=s["batch_size"] or None,
            max_time=s["max_time"] or None,
        )
        self._cancel = threading.Event()
        self.loss_canvas.reset()
        self.report.clear()
        self.status_label.setText("Starting the training process and preparing data...")
        bridge, cancel = self._bridge, self._cancel

        def _cancelled():  # the widget's Cancel, or the cancel button of the activity dock's progress bar
            pbar = self._pbar
            if pbar is not None and getattr(pbar, "is_canceled", False):
                cancel.set()
            return cancel.is_set()

        def _train():
            from napari_scmedal.train_process import train_in_subprocess

            # in a separate process (this one's GIL stays with the window); this thread only relays progress,
            # cancel and the result. Health problems are shown once, from model.health, when the model is ready
            # (show_training_report). The child also computes the latents shown as layers and their 2-D PCA.
            latents = {}
            model = train_in_subprocess(adata, ctor, dict(fit, health_warnings=False), progress=bridge.message.emit,
                                        cancel=_cancelled, latents_out=latents)
            return model, latents

        self._run(_train, lambda out: self._on_trained(out[0], layer, cancel, latents=out[1]), training=True)

    def _on_trained(self, model, layer, cancel, latents=None):
        """A training run ended. A cancelled run never replaces a model the user already has (its layers and
        file state stay as they were); without one, the cancelled run's best weights are used, as promised."""
        if cancel.is_set() and self.model is not None:
            self.status_label.setText("Training cancelled: the previous model, its latent layers and metrics are "
                                      "kept (nothing was replaced).")
            notify_info("Training cancelled: the previous model is kept.", self)
            return
        self._on_model_ready(model, layer, "trained", cancelled=cancel.is_set(), latents=latents)

    def cancel(self):
        """Stop training after the current epoch; the best weights so far are kept."""
        self._cancel.set()
        self.status_label.setText("Cancelling: finishing the current epoch, keeping the best weights...")

    def _on_progress(self, info):
        if not isinstance(info, dict):
            return
        self.loss_canvas.add(info)
        m = info.get("model", "?")
        ep = int(info.get("epoch", 0))
        eta = _fmt_eta(info.get("eta_s"))
        val = info.get("val") or {}
        vtxt = ", ".join(f"{k} {v:.4g}" for k, v in val.items()
                         if isinstance(v, (int, float)) and "acc" not in k)
        # the epoch early stopping is expected at (models.training.expected_last_epoch; moves with a new best)
        last = int(info.get("last_epoch") or info.get("max_epochs") or max(ep, 1))
        self.status_label.setText(
            f"{m.upper()} epoch {ep} of ~{last} (early stopping; at most {info.get('max_epochs', '?')}), ETA {eta}"
            + (f"; val {vtxt}" if vtxt else ""))
        if self._pbar is None:
            # cancelable: the activity dock's cancel button sets is_canceled, which the worker's cancel check
            # polls (napari calls cancel_callback only for iterated bars, so none is given)
            self._pbar = cancelable_progress(total=last, desc=f"scMEDAL {m.upper()}")
            self._pbar_model = m
        elif self._pbar_model != m:
            # one bar for the whole run, restarted for each network: napari builds a new activity-dock widget
            # on the GUI thread for every new bar (the longest event-loop gap while training)
            self._pbar.set_description(f"scMEDAL {m.upper()}")
            self._pbar.n = 0
            self._pbar_model = m
        pbar = self._pbar  # napari may process events below; keep a local handle
        # the bar counts to the epoch early stopping is expected at (it moves when a new best appears), so
        # napari's own time estimate agrees with the label's; the ETA is shown once, in the label
        pbar.total = last
        pbar.update(max(0, ep - pbar.n))

    def _close_pbar(self):
        if self._pbar is not None:
            self._pbar.close()
        self._pbar = None
        self._pbar_model = None

    @property
    def busy(self) -> bool:
        """True while a training, loading, latent or metrics worker runs, or a model's layers are being added."""
        return bool(self.workers) or self._layer_steps.active

    def _run(self, func, on_done, training=False):
        worker = create_worker(func, _start_thread=False, _ignore_errors=True)
        self.workers.append(worker)

        def _finish():
            worker_finished()
            if worker in self.workers:
                self.workers.remove(worker)
            if training:
                self._close_pbar()
                self.loss_canvas.redraw(force=True)
                self.cancel_btn.setEnabled(False)
            if not self.busy:
                self._enable_buttons()

        def _err(exc):
            self.status_label.setText(f"Failed: {exc}")
            notify_error(exc, self)

        worker.returned.connect(on_done)
        worker.errored.connect(_err)
        worker.finished.connect(_finish)
        self.train_btn.setEnabled(False)
        self.load_btn.setEnabled(False)
        if training:
            self.cancel_btn.setEnabled(True)
        worker_started()
        worker.start()
        return worker

    def _enable_buttons(self):
        self.train_btn.setEnabled(True)
        self.load_btn.setEnabled(True)

    # ------------------------------------------------------------------ save / load
    def _save_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save scMEDAL model", "scmedal_model.safetensors",
                                              "scMEDAL model (*.safetensors)")
        if path:
            self.save_model(path)

    def save_model(self, path):
        if self.model is None:
            notify_error(ValueError("No model to save: train or load one first."), self)
            return
        try:
            self.model.save(path)
        except Exception as exc:  # core errors carry the fix in their message
            notify_error(exc, self)
            return
        notify_info(f"Saved the model to {path}", self)

    def _load_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load scMEDAL model", "", "scMEDAL model (*.safetensors)")
        if path:
            self.load_model(path)

    def load_model(self, path):
        """Load a model in a worker and check it fits the chosen cells layer (genes, batches)."""
        layer = self.cells_layer()
        if layer is None:
            notify_error(ValueError("No cells layer: open the data the model was trained on first, "
                                    "then load the model."), self)
            return None
        adata = layer.metadata[ADATA_KEY]
        self.status_label.setText(f"Loading {path} ...")

        def _load():
            from napari_scmedal.model import ScMEDAL

            model = ScMEDAL.load(path)
            # raises RecipeMismatchError naming the missing genes / unknown batches and the fix; the values
            # are checked on the first cells only, so a large (backed) file is not read whole here
            model.recipe.align_adata(adata)
            model.recipe.transform(adata[: min(adata.n_obs, 256)])
            return model

        return self._run(_load, lambda model: self._on_model_ready(model, layer, f"loaded from {path}"))

    # ------------------------------------------------------------------ results
    def set_model(self, model, layer_name=None, how="provided"):
        """Use an already trained or loaded ``model`` with the cells layer ``layer_name`` (default: the
        chosen one): adds its latent layers and (if checked) computes its metrics."""
        if layer_name is not None:
            self._refresh_layers()
            self.layer_combo.setCurrentText(layer_name)
        layer = self.cells_layer()
        if layer is None:
            notify_error(ValueError("No cells layer to attach the model to: open the data first."), self)
            return
        self._on_model_ready(model, layer, how)

    def _on_model_ready(self, model, layer, how, cancelled: bool = False, latents=None):
        """Use ``model`` with ``layer``: its report, latent layers (``latents`` ``{kind: (Z, 2-D PCA)}`` as the
        training process computed them, else computed in a worker) and legend, added one per event-loop turn
        (``busy`` until the last), then its metrics when checked."""
        old = self.model
        self.model = model
        self.model_layer = layer
        layer.metadata[MODEL_KEY] = model
        self.save_btn.setEnabled(True)
        stopped = " (cancelled: best weights kept)" if cancelled else ""
        if how == "trained" and not stopped and any(
                (h or {}).get("stopped") == "max_time" for h in (getattr(model, "history", None) or {}).values()):
            stopped = " (time cap reached: best weights kept)"
        self.status_label.setText(f"Model {how}{stopped}. Adding latent layers...")
        adata = layer.metadata[ADATA_KEY]
        kinds = list(getattr(model, "trained_kinds", None) or ["fe", "re"])
        want_metrics = self.metrics_check.isChecked()

        def _latents():
            out = {}
            for kind in kinds:
                try:
                    Z = model.get_latent_representation(kind, adata=adata)
                except (KeyError, ValueError) as exc:
                    if kind == "fec":  # no FEC network in this model
                        continue
                    raise exc
                out[kind] = (np.asarray(Z), pca_2d(Z))
            return out

        def _steps(latents):
            yield self.show_training_report(model, how)  # its warning notification: a turn of its own
            yield from self._remove_latent_layers(old, steps=True)
            yield from self._latent_layer_steps(layer, model, latents)

        def _added():
            self.status_label.setText(f"Model {how}{stopped}. All latent layers added.")
            if not self.workers:
                self._enable_buttons()
            if want_metrics:
                self.compute_metrics()

        def _done(latents):
            self._layer_steps.start(_steps(latents), _added)

        if latents is None:
            self._run(_latents, _done)
        else:
            _done(latents)

    def _steps_failed(self, exc):
        self.status_label.setText(f"Failed: {exc}")
        notify_error(exc, self)
        if not self.busy:
            self._enable_buttons()

    def show_training_report(self, model, how="provided"):
        """Show the model's training settings and health (read from ``model.derived`` / ``model.health``);
        health problems also become a napari warning notification."""
        problems = self.report.show_model(model)
        if problems:
            self.last_warning = f"scMEDAL model {how} with training-health problems:\n" + "\n".join(problems)
            show_warning(self.last_warning)

    def _color_key(self, model):
        recipe = model.recipe
        if self.color_combo.currentText() == "label" and recipe.label_key:
            return recipe.label_key
        return recipe.batch_key

    def _remove_latent_layers(self, model, steps: bool = False):
        """Remove the latent layers of a replaced model (e.g. its FEC/RE layers when the new model has only FE),
        so that no layer offers a stale model to the explorer. ``steps=True``: a generator removing one layer
        per step (see :class:`._common.StepRunner`)."""
        def _gen():
            if model is None:
                return
            for ly in list(self.viewer.layers):
                if ly.metadata.get(MODEL_KEY) is model and (ly.metadata.get("latent") is not None
                                                            or ly.metadata.get("scmedal_legend")):
                    if ly in self.viewer.layers:
                        self.viewer.layers.remove(ly)
                    yield
            self.latent_layers = [ly for ly in getattr(self, "latent_layers", []) if ly in self.viewer.layers]

        if steps:
            return _gen()
        for _ in _gen():
            pass
        return None

    def _latent_layer_steps(self, layer, model, latents):
        """Generator adding one latent layer per step, side by side right of the cells layer, then the legend."""
        adata = layer.metadata[ADATA_KEY]
        color = self._color_key(model)
        self.latent_layers = []
        x = layer.extent.world[1][1]
        for kind, (Z, Y) in latents.items():
            name = f"{layer.name} | {LATENT_NAMES[kind]}"
            data, kwargs, _ = cells_layer_data(
                adata, name=name, coords=Y, color_by=color, source=f"PCA of the {kind.upper()} latent",
                extra_metadata={"latent": kind, "latent_values": Z, MODEL_KEY: model},
                batch_key=model.recipe.batch_key,
            )
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            new = self.viewer.add_points(data, **kwargs)
            self.latent_layers.append(new)
            (y0, x0), (y1, x1) = new.extent.world
            new.translate = (layer.extent.world[0][0] - y0, x + 0.1 * (x1 - x0) - x0)
            x = new.extent.world[1][1]
            yield
        self._show_legend(layer, model)

    def _show_legend(self, layer, model):
        """Titles over the latent clouds and a colour legend beside them (one points layer)."""
        lats = [ly for ly in getattr(self, "latent_layers", []) if ly in self.viewer.layers]
        key = self._color_key(model)
        name = f"{layer.name} | latent legend"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if not lats or key not in lats[0].features.columns:
            return
        titles = [f"{LATENT_NAMES[ly.metadata['latent']]} (PCA)" for ly in lats]
        data, kwargs, _ = legend_layer_data(lats, key, name, titles)
        kwargs["metadata"][MODEL_KEY] = model
        self.viewer.add_points(data, **kwargs)

    def _recolor_latents(self, *_):
        if self.model is None:
            return
        from ._layers import color_cycle

        key = self._color_key(self.model)
        for ly in getattr(self, "latent_layers", []):
            if ly in self.viewer.layers and key in ly.features.columns:
                ly.face_color_cycle = color_cycle(ly.features, key, self.model.recipe.batch_key)
                ly.face_color = key
        if self.model_layer is not None:
            self._show_legend(self.model_layer, self.model)

    def compute_metrics(self):
        """Compute the METHOD section-4 table (test split) for the current model in a worker."""
        if self.model is None or self.model_layer is None:
            return None
        model, adata = self.model, self.model_layer.metadata[ADATA_KEY]
        target = self.target_combo.currentText()
        target = None if target in ("", NONE_LABEL) else target
        baselines = self._baselines()
        self.status_label.setText(self.status_label.text() + " Computing metrics...")

        def _metrics():
            from napari_scmedal.metrics import evaluate_model

            return evaluate_model(model, "test", adata=adata, target=target, baselines=baselines)

        def _show(result):
            self.metrics = result
            self._fill_table(table_rows(metrics_rows(result)))
            self.status_label.setText(self.status_label.text().replace(" Computing metrics...", " Metrics ready."))

        return self._run(_metrics, _show)

    def _baselines(self) -> tuple:
        """The baselines to score: none unless checked; PCA alone (with a warning naming the extra to install)
        when harmonypy is missing."""
        if not self.baselines_check.isChecked():
            return ()
        from napari_scmedal.errors import DataError
        from napari_scmedal.metrics import check_baselines

        try:
            return check_baselines(("pca", "harmony"))
        except DataError as exc:
            self.last_warning = str(exc)
            show_warning(f"{exc} Showing PCA only.")
            return ("pca",)

    def _baselines_toggled(self, _checked=False):
        if self.model is not None and self.model_layer is not None and self.metrics_check.isChecked() \
                and not self.busy:
            self.compute_metrics()

    def _fill_table(self, rows):
        header = [c for c in TABLE_COLUMNS if c in ("latent", "by", "better", "1/DB", "CH", "ASW")
                  or any(c in r for r in rows)]
        self.metrics_table.setRowCount(len(rows))
        self.metrics_table.setColumnCount(len(header))
        self.metrics_table.setHorizontalHeaderLabels(header)
        for i, row in enumerate(rows):
            for j, key in enumerate(header):
                v = row.get(key, "")
                text = f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
                item = QTableWidgetItem(text)
                if key == "better" and row.get("better_tip"):
                    item.setToolTip(row["better_tip"].rstrip())
                self.metrics_table.setItem(i, j, item)
        for j, key in enumerate(header):
            tip = METRIC_TIPS.get(key)
            if tip:
                self.metrics_table.horizontalHeaderItem(j).setToolTip(tip)
        self.metrics_table.resizeColumnsToContents()


#: What each metric column means (header tooltips).
METRIC_TIPS = {
    "better": "Which direction is good for this row's 1/DB, CH and ASW: batch scores should be LOW for FE/FEC and the "
              "PCA/Harmony baselines (batch removed) and HIGH for RE (batch captured); cell-type scores HIGH (types "
              "kept apart). iLISI runs the other way (hover a cell for each metric).",
    "1/DB": "Inverse Davies-Bouldin index: higher = groups more separated.",
    "CH": "Calinski-Harabasz index: higher = groups more separated.",
    "ASW": "Average silhouette width (-1..1): higher = groups more separated; near 0 = mixed.",
    "iLISI": "Scaled integration LISI by batch (0..1): 1 = every cell's 90 nearest neighbours mix all batches evenly, "
             "0 = they come from its own batch. HIGHER = batches mixed (wanted for FE, FEC, PCA, Harmony; RE should "
             "stay low).",
    "cLISI": "Scaled cell-type LISI (0..1): 1 = every cell's neighbours share its label, 0 = labels fully mixed. "
             "Higher = types kept apart.",
    "NMI": "Normalised mutual information between the labels and k-means clusters (one per label): 1 = the "
           "clusters are the labels.",
    "ARI": "Adjusted Rand index between the labels and the same k-means clusters: 1 = identical, ~0 = unrelated.",
    "accuracy": "Random-forest accuracy predicting the target from the latent: mean over stratified k folds of the "
                "test cells (or over held-out batches).",
    "95% CI": "95% t-interval of the mean accuracy over the folds.",
    "chance": "Accuracy of a majority-class dummy classifier on the same folds: the level to beat.",
}
#: Table columns in display order (metric columns appear when present).
TABLE_COLUMNS = ["latent", "by", "better", "1/DB", "CH", "ASW", "iLISI", "cLISI", "NMI", "ARI", "accuracy",
                 "95% CI", "chance"]
_COLUMN_OF = {"inv_db": "1/DB", "ch": "CH", "asw": "ASW", "ilisi": "iLISI", "clisi": "cLISI", "nmi": "NMI",
              "ari": "ARI"}


def table_rows(rows) -> list[dict]:
    """Arrange :func:`napari_scmedal.metrics.metrics_rows` (one row per metric) as the widget's table: one row
    per latent and grouping, one column per metric (:data:`TABLE_COLUMNS`)."""
    out: dict = {}
    for r in rows:
        kind, grouping = r["latent"], str(r["grouping"])
        name = SHORT_NAMES.get(kind, str(kind).upper())
        if grouping.startswith("classify:"):
            by = f"RF accuracy, {grouping.split(':', 1)[1]}"
            row = out.setdefault((kind, by), {"latent": name, "by": by, "better": "higher"})
            row["accuracy"] = float(r["value"])
            lo, hi = r.get("ci_low", float("nan")), r.get("ci_high", float("nan"))
            if lo == lo and hi == hi:
                row["95% CI"] = f"{lo:.3f}-{hi:.3f}"
            row["chance"] = float(r.get("chance", float("nan")))
        elif r["metric"] in _COLUMN_OF:
            row = out.setdefault((kind, grouping), {"latent": name, "by": grouping,
                                                    "better": metric_goal(kind, grouping), "better_tip": ""})
            col = _COLUMN_OF[r["metric"]]
            row[col] = r["value"]
            row["better_tip"] += f"{col}: {r.get('better') or metric_goal(kind, grouping, r['metric'])}\n"
    return list(out.values())
