"""Live loss curves of the model widget, drawn off the GUI thread and out of the GUI process.

Rebuilding a matplotlib figure with its whole history on the GUI thread took 0.2-0.5 s per epoch and
froze the window during training; drawn in a background thread it still froze it, because matplotlib is
mostly pure Python and that thread then shares the GIL with the GUI thread (a render of 0.2-0.5 s made the
GUI thread wait for the GIL at each of its many Qt calls). So each render runs in one helper process (a
``spawn`` process pool of one, shared by all canvases, started on the first render; matplotlib's Agg canvas,
no Qt); a background thread of this process only waits for it and hands the RGBA image to the GUI thread
through a queued signal, where showing it is a pixmap swap (about a millisecond). If the helper process
cannot run, the thread draws itself. Renders are coalesced: at most one runs at a time and at most one is
pending, at most every ``MIN_INTERVAL_S``.

By default each network's panel shows the three series a user needs -- training total, validation total
and validation reconstruction -- the others (adversary, class, KL, ...) behind the "all losses" box.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QCheckBox, QLabel, QSizePolicy, QVBoxLayout, QWidget

#: The series shown by default (the rest with "all losses").
MAIN_SERIES = ("train/total", "val/total", "val/recon")
#: Shortest time between two renders while training.
MIN_INTERVAL_S = 0.5
HEIGHT_PX = 190


def render_curves(curves: dict, width_px: int, height_px: int, show_all: bool = False, dpi: int = 80):
    """RGBA ``(h, w, 4)`` uint8 image of ``curves`` (``{model: {"split/name": [(epoch, value)]}}``): one panel
    per network, log-like y axis. Pure matplotlib (Agg), safe in any one thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    w, h = max(width_px, 50), max(height_px, 50)
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    models = list(curves) or ["training"]
    # fixed margins in pixels (room for the tick labels, title and "epoch"): constrained layout measured
    # every text twice and took half of each render
    fig.subplots_adjust(left=min(34 / w, 0.3), right=1 - 6 / w, bottom=min(30 / h, 0.4), top=1 - min(16 / h, 0.2),
                        wspace=min(40 * len(models) / w, 0.9))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, m in zip(axes, models):
        series = curves.get(m, {})
        keys = sorted(series) if show_all else [k for k in MAIN_SERIES if k in series]
        for key in keys:
            pts = series.get(key) or []
            if not pts:
                continue
            e, v = zip(*pts)
            ax.plot(e, v, "-" if key.startswith("train") else "--", label=key, lw=1)
        ax.set_title(m.upper(), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-2)
        # plain numbers: the log scale's default labels ($10^{-2}$) go through mathtext, whose pyparsing
        # parser is slow pure Python (a render then held the GIL for tenths of a second beside the GUI thread)
        ax.yaxis.set_major_formatter(FuncFormatter(_tick_text))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        if keys:
            ax.legend(fontsize=6, loc="upper right")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def _tick_text(value, _pos=None) -> str:
    """A tick label without mathtext: 0.01, 0.1, 1, 10, 100, 1e+03, ..."""
    return f"{value:g}"


def _render_remote(curves, width_px, height_px, show_all):
    """In the helper process: ``(render_curves(...), pid)``."""
    return render_curves(curves, width_px, height_px, show_all), os.getpid()


_PROCESS = {"pool": None}
_PROCESS_LOCK = threading.Lock()


def render_in_process(curves, width_px, height_px, show_all=False):
    """``(image, pid)`` rendered in the shared helper process (started on first use, without re-running the
    caller's main script); raises when that process cannot run (the caller then draws itself)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from napari_scmedal.train_process import without_main_module

    with _PROCESS_LOCK:
        if _PROCESS["pool"] is None:
            _PROCESS["pool"] = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        pool = _PROCESS["pool"]
        with without_main_module():  # the pool starts its process on the first submit
            fut = pool.submit(_render_remote, curves, width_px, height_px, show_all)
    try:
        return fut.result(timeout=120)
    except Exception:
        with _PROCESS_LOCK:  # a broken pool (its process died): start a new one next time
            if _PROCESS["pool"] is pool:
                _PROCESS["pool"] = None
        pool.shutdown(wait=False, cancel_futures=True)
        raise


class _Relay(QObject):
    image = Signal(object)


class LossCanvas(QWidget):
    """Loss curves per network (``curves``: ``{model: {"train/name" | "val/name": [(epoch, value)]}}``)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.view = QLabel()
        self.view.setMinimumHeight(120)
        self.view.setFixedHeight(HEIGHT_PX)
        self.view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.all_check = QCheckBox("all losses (adversary, class, KL, ...)")
        self.all_check.setToolTip("Show every loss the networks record, not only the training and validation "
                                  "totals and the validation reconstruction.")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view)
        lay.addWidget(self.all_check)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scmedal-loss-plot")
        # _running/_dirty are read and written on the GUI thread only (the render thread only emits the image)
        self._running = False
        self._dirty = False
        self._last_start = 0.0
        self._relay = _Relay()
        self._relay.image.connect(self._show)
        self.renders = 0  # images shown (for tests and the event-loop benchmark)
        self.render_pid = None  # the process that drew the last image (for tests)
        self.all_check.toggled.connect(lambda _: self.redraw(force=True))
        self.reset()

    # ------------------------------------------------------------------ data
    def reset(self):
        self.curves = {}
        self.redraw(force=True)

    def add(self, info):
        d = self.curves.setdefault(info.get("model", "?"), {})
        ep = info.get("epoch", 0)
        for split in ("train", "val"):
            for name, value in (info.get(split) or {}).items():
                if "acc" in name:  # accuracies are not losses
                    continue
                if isinstance(value, (int, float)) and np.isfinite(value):
                    d.setdefault(f"{split}/{name}", []).append((ep, float(value)))
        self.redraw()

    # ------------------------------------------------------------------ drawing
    def redraw(self, force: bool = False):
        """Schedule a render in the background (coalesced; ``force`` ignores the minimum interval)."""
        if self._running:
            self._dirty = True
            return
        wait = MIN_INTERVAL_S - (time.monotonic() - self._last_start)
        if not force and wait > 0:
            if not self._dirty:  # render the latest data once the interval has passed
                QTimer.singleShot(int(wait * 1000) + 1, lambda: self.redraw(force=True))
            self._dirty = True
            return
        self._running, self._dirty = True, False
        self._last_start = time.monotonic()
        snapshot = {m: {k: list(v) for k, v in s.items()} for m, s in self.curves.items()}
        w = max(self.view.width(), 320)
        try:
            self._pool.submit(self._render, snapshot, w, HEIGHT_PX, self.all_check.isChecked())
        except RuntimeError:  # the pool is shut down (widget closing)
            self._running = False

    def _render(self, curves, w, h, show_all):
        try:
            try:
                img, self.render_pid = render_in_process(curves, w, h, show_all)
            except Exception:  # no helper process: draw here (off the GUI thread, sharing its GIL)
                img, self.render_pid = render_curves(curves, w, h, show_all), os.getpid()
        except Exception:  # a plot must never take the training down
            img = None
        self._relay.image.emit(img)

    def _show(self, img):
        if img is not None:
            h, w = img.shape[:2]
            qimg = QImage(img.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
            self.view.setPixmap(QPixmap.fromImage(qimg))
            self.renders += 1
        self._running = False
        if self._dirty:
            self.redraw(force=True)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and scripts: True once no render is running or pending (Qt events must be processed)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self._running and not self._dirty:
                return True
            from qtpy.QtWidgets import QApplication

            QApplication.processEvents()
            time.sleep(0.01)
        return False

    def closeEvent(self, event):
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().closeEvent(event)
