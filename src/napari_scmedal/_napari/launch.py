"""Open napari with results made in Python or by ``scmedal demo`` (used by the CLI's viewer step).

``open_viewer(adata, model, comparison)`` shows the cells as a cells layer, docks the scMEDAL
model widget (with the model's latent layers and metrics) and the genomap explorer showing the
given comparison, then runs the napari event loop (``block=True``).
"""

from __future__ import annotations

from ._common import MODEL_KEY
from ._layers import cells_layer_data

PLUGIN = "napari-scmedal"


def open_viewer(adata, model=None, comparison=None, block=True, show=True, name="cells"):
    """Open a napari viewer on ``adata`` (+ ``model`` and a ``Comparison``); return the viewer."""
    import napari

    viewer = napari.Viewer(title="napari-scmedal", show=show)
    data, kwargs, _ = cells_layer_data(adata, name=name)
    layer = viewer.add_points(data, **kwargs)
    _, model_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")
    if model is not None:
        layer.metadata[MODEL_KEY] = model
        model_widget.set_model(model, name, how="from the command line")
    _, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Genomap explorer")
    if comparison is not None:
        explorer.show_comparison(comparison)
    if block:
        napari.run()
    return viewer
