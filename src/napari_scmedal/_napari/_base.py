"""The base of the plugin's dock widgets: the viewer, the status line, notifications and the one way to run
work in a worker thread.

Every worker of the plugin (the explorer's comparisons and all-cells stacks, its gene and pixel-test panels,
the model widget's training, loading, latents and metrics, the export widget's figure) starts through
:meth:`DockWidget.launch`, so they all behave alike: errors become a napari notification and the widget's
``last_error`` (never an unhandled traceback), the widget's buttons are disabled while it runs, and the
worker counts as plugin work (:func:`._common.worker_started`: shorter GIL switch interval, frozen garbage
collector) until it ends.
"""

from __future__ import annotations

from napari.qt.threading import create_worker
from qtpy.QtWidgets import QLabel, QWidget

from ._common import notify_error, worker_finished, worker_started


class DockWidget(QWidget):
    """A dock widget of the plugin: ``viewer``, ``status_label``, ``last_error`` / ``last_info`` (the last
    notification it showed), ``workers`` (its running workers) and :meth:`launch`."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.last_error = None
        self.last_info = None
        self.workers = []
        self.status_label = None

    def add_status_label(self, layout, text: str) -> QLabel:
        """Add the widget's status line (word-wrapped) to ``layout``, showing ``text``."""
        self.status_label = QLabel(text)
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        return self.status_label

    @property
    def busy(self) -> bool:
        """True while one of the widget's workers runs."""
        return bool(self.workers)

    def report_failure(self, exc) -> None:
        """Say in the status line and in a napari notification that something failed (``last_error``)."""
        if self.status_label is not None:
            self.status_label.setText(f"Failed: {exc}")
        notify_error(exc, self)

    def launch(self, work, on_result, pool: list | None = None, buttons=(), then=None, on_error=None):
        """Run ``work()`` in a napari thread worker and return the (started) worker.

        Parameters
        ----------
        work : callable
            Runs in the worker thread; its return value goes to ``on_result``.
        on_result : callable
            ``on_result(value)`` on the GUI thread when ``work`` returned.
        pool : list, optional
            The list that holds the worker while it runs (default: ``self.workers``, which ``busy`` reads).
        buttons : sequence of QWidget
            Disabled while the worker runs, enabled again when it has finished.
        then : callable, optional
            ``then()`` after the worker finished (returned or failed), once it left ``pool``.
        on_error : callable, optional
            ``on_error(exc)`` when ``work`` raised; default :meth:`report_failure`.
        """
        pool = self.workers if pool is None else pool
        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        pool.append(worker)

        def _finish():
            worker_finished()
            if worker in pool:
                pool.remove(worker)
            for button in buttons:
                button.setEnabled(True)
            if then is not None:
                then()

        worker.returned.connect(on_result)
        worker.errored.connect(on_error if on_error is not None else self.report_failure)
        worker.finished.connect(_finish)
        for button in buttons:
            button.setEnabled(False)
        worker_started()
        worker.start()
        return worker
