"""Small helpers shared by the dock widgets: finding layers, running workers, notifications."""

from __future__ import annotations

import time

from napari.layers import Points
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, Signal

from ._layers import ADATA_KEY

MODEL_KEY = "scmedal_model"


def cells_layers(viewer):
    """Points layers that carry an AnnData (cells layers, latent layers)."""
    return [ly for ly in viewer.layers if isinstance(ly, Points) and ly.metadata.get(ADATA_KEY) is not None]


def model_layers(viewer):
    """Layers that carry a trained or loaded scMEDAL model (one entry per distinct model)."""
    seen, out = set(), []
    for ly in viewer.layers:
        m = ly.metadata.get(MODEL_KEY)
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(ly)
    return out


def obs_columns(adata, categorical_only=False):
    cols = []
    for c in adata.obs.columns:
        s = adata.obs[c]
        if categorical_only and not (str(s.dtype) in ("category", "object", "bool") or s.nunique() <= 50):
            continue
        cols.append(str(c))
    return cols


def notify_error(exc, widget=None):
    """Show a core error as a napari error notification carrying the core's message (which already names
    the fix), and record it as the widget's ``last_error``. Used for every failure, worker errors included
    (the workers run with ``_ignore_errors=True``, so napari relays nothing by itself)."""
    msg = str(exc) or exc.__class__.__name__
    if widget is not None:
        widget.last_error = msg
    show_error(msg)


def notify_info(msg, widget=None):
    if widget is not None:
        widget.last_info = msg
    show_info(msg)


class Bridge(QObject):
    """Carries values from a worker thread to the GUI thread (queued Qt signal)."""

    message = Signal(object)


#: GIL switch interval while a plugin worker runs. The GUI thread takes the GIL back for every Python call
#: it makes (vispy's GL calls go through ctypes, which releases and retakes it); with CPython's default 5 ms a
#: CPU-bound worker makes each of those waits up to 5 ms and a repaint of hundreds of calls a visible freeze
#: (measured: 1.5-2.5 s longest event-loop gap while training; 0.6 s with 0.5 ms). Restored when the last
#: worker ends.
WORKER_SWITCH_INTERVAL = 0.0005
_switch = {"active": 0, "saved": None}


#: Full (oldest-generation) garbage collections are the other source of freezes: one scans every object of
#: the session (napari, Qt, torch, the user's data) and takes 0.4-1.4 s here, on whichever thread happens to
#: allocate -- mid-way through creating the explorer's layers, for example. While plugin work runs, the
#: objects that existed when it started are moved out of the collector's sight (``gc.freeze``), so a
#: collection only scans what the work created (milliseconds); ``gc.unfreeze`` puts them back when the last
#: piece of work ends, so nothing that becomes garbage meanwhile is kept for good.


def worker_started() -> None:
    """Plugin work starts (a worker thread, or layers being applied over several event-loop turns): shorten
    the GIL switch interval (WORKER_SWITCH_INTERVAL) and freeze the garbage collector's existing objects."""
    import gc
    import sys

    if _switch["active"] == 0:
        _switch["saved"] = sys.getswitchinterval()
        sys.setswitchinterval(min(WORKER_SWITCH_INTERVAL, _switch["saved"]))
        gc.freeze()
    _switch["active"] += 1


def worker_finished() -> None:
    """Plugin work ended: restore the interval and unfreeze the collector once none runs."""
    import gc
    import sys

    _switch["active"] = max(0, _switch["active"] - 1)
    if _switch["active"] == 0 and _switch["saved"] is not None:
        sys.setswitchinterval(_switch["saved"])
        _switch["saved"] = None
        gc.unfreeze()


class StepRunner(QObject):
    """Runs a generator of GUI steps (e.g. one napari layer created or updated per step) a few per event-loop
    turn, so the window repaints and reacts in between: each turn runs steps until ``budget_s`` has passed
    (``budget_s=0``: exactly one step per turn). ``active`` stays True until the last step; meanwhile the
    steps count as plugin work (:func:`worker_started`). Starting a new generator closes one still running."""

    def __init__(self, parent=None, budget_s: float = 0.04, on_error=None):
        super().__init__(parent)
        self.budget_s = float(budget_s)
        self.on_error = on_error  # on_error(exc) after a step raised (the run ends); default: re-raise
        self.current = None  # (steps, on_done) while running
        self.timer = QTimer(self)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self.run_some)

    @property
    def active(self) -> bool:
        return self.current is not None

    def start(self, steps, on_done=None) -> None:
        """Run the first turn now, the rest from the event loop; ``on_done()`` after the last step."""
        if self.current is not None:  # a newer run replaces one still going
            self.current[0].close()
        else:
            worker_started()
        self.current = (steps, on_done)
        self.run_some()
        if self.current is not None:
            self.timer.start()

    def run_some(self) -> None:
        if self.current is None:
            self.timer.stop()
            return
        steps, on_done = self.current
        t0 = time.perf_counter()
        try:
            next(steps)
            while time.perf_counter() - t0 < self.budget_s:
                next(steps)
        except StopIteration:
            self._end()
            if on_done is not None:
                on_done()
        except Exception as exc:  # a step failed: end the run and report
            self._end()
            if self.on_error is None:
                raise
            self.on_error(exc)

    def _end(self) -> None:
        self.current = None
        self.timer.stop()
        worker_finished()


def scroll_root(widget):
    """The widget's content layout inside a vertical scroll area, so a dock asks napari for little height
    (all three docks fit a 1920 x 1080 screen) and scrolls when it is short of room."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    content = QWidget()
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area
    return QVBoxLayout(content)
