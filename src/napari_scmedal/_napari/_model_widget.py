"""Dock widget: train, save and load an scMEDAL model; show its latents and metrics.

The widget only gathers parameters (:mod:`._model_form`) and calls the core (:class:`napari_scmedal.ScMEDAL`,
:mod:`napari_scmedal.metrics`) in worker threads -- training runs in a separate process
(:mod:`napari_scmedal.train_process`), so it never holds this process's GIL; results become layers (one per
event-loop turn, :mod:`._embedding`) and a table (:mod:`._metrics_table`).
"""

from __future__ import annotations

import threading

import numpy as np
from napari.utils import cancelable_progress
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton

from napari_scmedal.embedding import latents_2d
from napari_scmedal.metrics import metrics_rows
from napari_scmedal.progress import ProgressBars

from ._base import DockWidget
from ._common import (
    MODEL_KEY,
    Bridge,
    StepRunner,
    notify_error,
    notify_info,
    scroll_root,
)
from ._embedding import LatentLayers, color_key
from ._health_view import TrainingReport
from ._layers import ADATA_KEY
from ._loss_canvas import LossCanvas
from ._metrics_table import fill_metrics_table, table_rows
from ._model_form import NONE_LABEL, SECTION, TrainingForm
from ._settings import save_settings


def _fmt_eta(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ModelWidget(TrainingForm, DockWidget):
    """Train (auto, quick or paper preset; optional time cap), cancel, save and load scMEDAL; the settings
    used and the training health; FE/RE latent layers; metrics."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.model = None
        self.model_layer = None  # the cells layer the model belongs to
        self.metrics = None
        self.last_warning = None
        self._cancel = threading.Event()
        # cancelable: the activity dock's cancel button sets is_canceled, which the worker's cancel check polls
        # (napari calls cancel_callback only for iterated bars). One bar per run: napari builds a new
        # activity-dock widget on the GUI thread for every new bar. The bar counts to the epoch early stopping
        # is expected at, so napari's time estimate agrees with the label's (the ETA is shown once, there).
        self._bars = ProgressBars(cancelable_progress, desc="scMEDAL {model}", total_key="last_epoch", postfix=False)
        self._bridge = Bridge()
        self._bridge.message.connect(self._on_progress)
        # a new model's report, latent layers and legend: one per event-loop turn (each layer takes 0.1-0.2 s)
        self._layer_steps = StepRunner(self, budget_s=0, on_error=self._steps_failed)
        self._latents = LatentLayers(self.viewer)

        root = scroll_root(self)
        self._build_form(root)
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
        self.add_status_label(root, "No model yet: train one or load a saved model.")
        self.report = TrainingReport()  # settings used and training health of the current model
        root.addWidget(self.report)
        self.loss_canvas = LossCanvas()
        root.addWidget(self.loss_canvas)
        self._build_latent_box(root)
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

    @property
    def latent_layers(self) -> list:
        """The latent layers of the current model."""
        return self._latents.layers

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
            pbar = self._bars.bar
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
        # the epoch early stopping is expected at (models.trainer.expected_last_epoch; moves with a new best)
        last = int(info.get("last_epoch") or info.get("max_epochs") or max(ep, 1))
        self.status_label.setText(
            f"{m.upper()} epoch {ep} of ~{last} (early stopping; at most {info.get('max_epochs', '?')}), ETA {eta}"
            + (f"; val {vtxt}" if vtxt else ""))
        self._bars(info)  # one bar for the whole run, restarted for each network (progress.ProgressBars)

    def _close_pbar(self):
        self._bars.close()

    @property
    def busy(self) -> bool:
        """True while a training, loading, latent or metrics worker runs, or a model's layers are being added."""
        return bool(self.workers) or self._layer_steps.active

    def _run(self, func, on_done, training=False):
        """:meth:`launch` ``func`` with Train and Load disabled until no worker runs (``training``: Cancel is
        enabled meanwhile, and the progress bar closed and the loss curves redrawn at the end)."""
        def _then():
            if training:
                self._close_pbar()
                self.loss_canvas.redraw(force=True)
                self.cancel_btn.setEnabled(False)
            if not self.busy:
                self._enable_buttons()

        self.train_btn.setEnabled(False)
        self.load_btn.setEnabled(False)
        if training:
            self.cancel_btn.setEnabled(True)
        return self.launch(func, on_done, then=_then)

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
                (h or {}).get("stopped") == "max_time" for h in model.history.values()):
            stopped = " (time cap reached: best weights kept)"
        self.status_label.setText(f"Model {how}{stopped}. Adding latent layers...")
        adata = layer.metadata[ADATA_KEY]
        kinds = list(model.trained_kinds)
        want_metrics = self.metrics_check.isChecked()

        def _steps(latents):
            yield self.show_training_report(model, how)  # its warning notification: a turn of its own
            yield from self._latents.remove_steps(old)
            yield from self._latents.add_steps(layer, model, latents, self._color_key(model))

        def _added():
            self.status_label.setText(f"Model {how}{stopped}. All latent layers added.")
            if not self.workers:
                self._enable_buttons()
            if want_metrics:
                self.compute_metrics()

        def _done(latents):
            self._layer_steps.start(_steps(latents), _added)

        if latents is None:
            self._run(lambda: latents_2d(model, adata, kinds), _done)
        else:
            _done(latents)

    def _steps_failed(self, exc):
        self.report_failure(exc)
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
        return color_key(model, self.color_combo.currentText())

    def _recolor_latents(self, *_):
        if self.model is None:
            return
        self._latents.recolor(self.model_layer, self.model, self._color_key(self.model))

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
            fill_metrics_table(self.metrics_table, table_rows(metrics_rows(result)))
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
