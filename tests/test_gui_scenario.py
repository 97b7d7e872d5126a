"""A biologist's first session, start to finish, through the real widgets (issue 12, "Done when"): open the
sample -> train with the defaults (auto preset, an epoch cap) -> retrain and cancel (the old model is kept) ->
compute 3 cells -> box-select -> average -> export PNG/SVG/PDF -> save the genomap layers."""

import numpy as np
import pytest

pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-scmedal"
TIMEOUT_MS = 300_000


def test_first_session_start_to_finish(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    from napari_scmedal._napari._writer import sidecar_path

    viewer = make_napari_viewer(show=True)
    (cells,) = viewer.open_sample(PLUGIN, "cellbench")
    _, mw = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")
    assert mw.preset_combo.currentText() == "auto"  # the defaults
    mw.batch_combo.setCurrentText("batch")
    mw.label_combo.setCurrentText("cell_line")
    mw.genes_spin.setValue(256)
    mw.epochs_spin.setValue(3)  # an epoch cap keeps the test short
    mw.threads_spin.setValue(1)
    mw.metrics_check.setChecked(False)
    mw.train_btn.click()
    qtbot.waitUntil(lambda: not mw.busy and mw.model is not None, timeout=TIMEOUT_MS)
    first = mw.model
    assert mw.last_error is None and first.trained_kinds == ["fe", "fec", "re"]
    # retrain, cancel: the first model stays
    mw.epochs_spin.setValue(400)
    mw.train_btn.click()
    qtbot.waitUntil(lambda: len(mw.loss_canvas.curves.get("fe", {}).get("val/total", [])) >= 1, timeout=TIMEOUT_MS)
    mw.cancel_btn.click()
    qtbot.waitUntil(lambda: not mw.busy, timeout=TIMEOUT_MS)
    assert mw.model is first
    # three cells
    _, ex = viewer.window.add_plugin_dock_widget(PLUGIN, "Genomap explorer")
    assert ex.model() is first
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("3, 300, 900")
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy and ex.comparison is not None, timeout=TIMEOUT_MS)
    assert ex.comparison.n_rows == 3 and ex.last_error is None
    # box-select in the cells layer, averaged
    ex.mode_combo.setCurrentText("selected points")
    ex.cells_combo.setCurrentText(cells.name)
    ex.average_check.setChecked(True)
    y0, x0 = np.percentile(cells.data, 40, axis=0)
    y1, x1 = np.percentile(cells.data, 60, axis=0)
    box = np.flatnonzero((cells.data[:, 0] >= y0) & (cells.data[:, 0] <= y1)
                         & (cells.data[:, 1] >= x0) & (cells.data[:, 1] <= x1))
    assert box.size >= 2
    cells.selected_data = set(box.tolist())
    qtbot.waitUntil(lambda: ex.comparison.averaged and not ex.busy, timeout=TIMEOUT_MS)
    assert ex.comparison.n_rows == 1 and ex.last_error is None
    # export the panel in three formats
    _, xw = viewer.window.add_plugin_dock_widget(PLUGIN, "Export figure")
    for ext in (".png", ".svg", ".pdf"):
        path = tmp_path / f"panel{ext}"
        xw.export(str(path))
        qtbot.waitUntil(lambda: not xw.busy, timeout=TIMEOUT_MS)
        assert xw.last_error is None and path.stat().st_size > 1000
    assert "<text" in (tmp_path / "panel.svg").read_text()
    # save the genomap layers (the whole mixed set of the comparison)
    mine = [ly for ly in viewer.layers if ly.metadata.get("scmedal_genomap")]
    viewer.layers.selection = set(mine)
    out = tmp_path / "comparison.genomap.tif"
    assert viewer.layers.save(str(out), selected=True)
    stack = tifffile.imread(out)
    assert stack.shape[0] == sum(ly._type_string == "image" for ly in mine) and sidecar_path(out).exists()
