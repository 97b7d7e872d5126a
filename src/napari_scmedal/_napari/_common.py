"""Small helpers shared by the dock widgets: finding layers, running workers, notifications."""

from __future__ import annotations

from napari.layers import Points
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

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


def worker_started() -> None:
    """A plugin worker starts: shorten the GIL switch interval (see WORKER_SWITCH_INTERVAL)."""
    import sys

    if _switch["active"] == 0:
        _switch["saved"] = sys.getswitchinterval()
        sys.setswitchinterval(min(WORKER_SWITCH_INTERVAL, _switch["saved"]))
    _switch["active"] += 1


def worker_finished() -> None:
    """A plugin worker ended: restore the interval once none runs."""
    import sys

    _switch["active"] = max(0, _switch["active"] - 1)
    if _switch["active"] == 0 and _switch["saved"] is not None:
        sys.setswitchinterval(_switch["saved"])
        _switch["saved"] = None


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
