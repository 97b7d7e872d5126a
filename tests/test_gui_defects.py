"""The plugin as a biologist meets it (issue 12): each defect driven through the real widgets in a real
viewer under Xvfb, failing without its fix."""

import numpy as np
import pytest

pytest.importorskip("napari")


pytestmark = pytest.mark.gui
PLUGIN = "napari-scmedal"
N_GENES = 256
TIMEOUT_MS = 180_000


@pytest.fixture
def trained(sample_model):
    """The session's briefly trained sample model (tests/conftest.py) and its AnnData."""
    return sample_model


def _explorer(make_napari_viewer, trained):
    model, _ = trained
    viewer = make_napari_viewer(show=True)  # drawn: the crash came from the canvas's text update
    (cells,) = viewer.open_sample(PLUGIN, "cellbench")
    cells.metadata["scmedal_model"] = model
    _, ex = viewer.window.add_plugin_dock_widget(PLUGIN, "Genomap explorer")
    return viewer, cells, ex


def _compute_cells(ex, qtbot, indices):
    """Compute the comparison of the cells at ``indices`` (text as typed) and wait until its layers are shown."""
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText(indices)
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy and ex.comparison is not None, timeout=TIMEOUT_MS)


def test_single_cells_then_an_averaged_box_selection_does_not_crash(make_napari_viewer, qtbot, trained):
    """Item 1: 3 single cells, then an averaged selection: fewer row titles than before."""
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("selected points")
    ex.cells_combo.setCurrentText("CellBench sample")
    cells.selected_data = {3, 7, 9}
    qtbot.waitUntil(lambda: ex.comparison is not None and not ex.busy, timeout=TIMEOUT_MS)
    assert ex.comparison.n_rows == 3 and ex.last_error is None
    ex.average_check.setChecked(True)
    cells.selected_data = set(range(20, 40))  # what a box drag selects
    qtbot.waitUntil(lambda: ex.comparison.meta["cells"] == list(range(20, 40)) and not ex.busy,
                    timeout=TIMEOUT_MS)
    assert ex.comparison.n_rows == 1 and ex.last_error is None
    rows = viewer.layers["genomap | row titles"]
    assert len(rows.features) == len(rows.data) == len(rows.text.values)
    assert "Computing" not in ex.status_label.text()
    # and back to three rows
    ex.average_check.setChecked(False)
    cells.selected_data = {5, 6, 8}
    qtbot.waitUntil(lambda: ex.comparison.meta["cells"] == [5, 6, 8] and not ex.busy, timeout=TIMEOUT_MS)
    assert ex.comparison.n_rows == 3 and ex.last_error is None


def _notifications():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def test_worker_failures_reach_the_user_as_notifications(make_napari_viewer, qtbot, trained):
    """Item 2: a failure inside a worker raises a napari notification carrying the core's message."""
    import copy

    from napari.utils.notifications import NotificationSeverity

    model, _ = trained
    broken = copy.copy(model)
    broken._trained = ["fe", "fec"]  # the RE network untrained
    viewer, cells, ex = _explorer(make_napari_viewer, (broken, None))
    before = len(_notifications())
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("0, 1")
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy, timeout=TIMEOUT_MS)
    new = _notifications()[before:]
    errors = [n for n in new if n.severity == NotificationSeverity.ERROR]
    assert errors and "the RE network is not trained yet" in str(errors[-1].message)
    assert ex.last_error and "not trained" in ex.last_error


def _model_widget(viewer, epochs):
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")
    w.apply_settings({"batch_key": "batch", "label_key": "cell_line", "n_genes": N_GENES, "preset": "quick",
                      "max_epochs": epochs, "threads": 1, "metrics": False})
    return w


def test_cancelling_a_retrain_keeps_the_previous_model_and_its_layers(make_napari_viewer, qtbot, tmp_path):
    """Item 3: retrain + Cancel keeps the fully trained model, its FEC/RE layers and what the explorer offers;
    the activity dock's cancel works too; a later load does not claim to be cancelled."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cellbench")
    w = _model_widget(viewer, epochs=2)
    w.train_btn.click()
    qtbot.waitUntil(lambda: not w.busy and w.model is not None, timeout=TIMEOUT_MS)
    first = w.model
    assert first.trained_kinds == ["fe", "fec", "re"]
    latents = {ly.name for ly in viewer.layers if ly.metadata.get("latent")}
    assert latents == {f"CellBench sample | {k} latent" for k in ("FE", "FEC", "RE")}
    path = tmp_path / "m.safetensors"
    w.save_model(str(path))
    # retrain for long, cancel from the activity dock's progress bar (napari's cancelable_progress)
    w.epochs_spin.setValue(500)
    w.train_btn.click()
    qtbot.waitUntil(lambda: w._bars.bar is not None and w._bars.bar.n >= 1, timeout=TIMEOUT_MS)
    w._bars.bar.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.model is first and w.last_error is None
    assert {ly.name for ly in viewer.layers if ly.metadata.get("latent")} == latents
    assert all(ly.metadata["scmedal_model"] is first for ly in viewer.layers if ly.metadata.get("latent"))
    assert "previous model" in w.status_label.text()
    _, ex = viewer.window.add_plugin_dock_widget(PLUGIN, "Genomap explorer")
    assert ex.model() is first
    # and the widget's own Cancel button: the same
    w.train_btn.click()
    qtbot.waitUntil(lambda: len(w.loss_canvas.curves.get("fe", {}).get("val/total", [])) >= 1, timeout=TIMEOUT_MS)
    w.cancel_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.model is first
    # loading after a cancel does not report a cancellation
    w.load_model(str(path))
    qtbot.waitUntil(lambda: not w.busy and w.model is not first, timeout=TIMEOUT_MS)
    assert "cancelled" not in w.status_label.text()


def test_the_writer_claims_only_genomaps_and_takes_the_explorers_mixed_layers(make_napari_viewer, qtbot, trained,
                                                                               tmp_path):
    """Item 5: an ordinary image saved as .tif goes to napari's own writer (no sidecar, no stack); the explorer's
    whole set of layers (images, points, vectors) saved as NAME.genomap.tif writes the genomap stack."""
    import tifffile

    from napari_scmedal._napari._writer import sidecar_path

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    photo = viewer.add_image(np.arange(64, dtype=np.uint16).reshape(8, 8), name="microscopy")
    viewer.layers.selection = {photo}
    out = tmp_path / "photo.tif"
    written = viewer.layers.save(str(out), selected=True)
    assert written and np.array_equal(tifffile.imread(out), photo.data)
    assert not sidecar_path(out).exists()
    _compute_cells(ex, qtbot, "3, 9")
    mine = [ly for ly in viewer.layers if ly.metadata.get("scmedal_genomap")]
    assert {ly._type_string for ly in mine} >= {"image", "points", "vectors"}
    viewer.layers.selection = set(mine)
    path = tmp_path / "comparison.genomap.tif"
    written = viewer.layers.save(str(path), selected=True)
    assert written, "No data written"
    images = [ly for ly in mine if ly._type_string == "image"]
    stack = tifffile.imread(path)
    assert stack.shape[0] == len(images) and sidecar_path(path).exists()


def test_widgets_are_in_napari_menus(make_napari_viewer):
    """napari conventions: the three widgets are contributed to napari's own menus (npe2 ``menus``) as well as
    Plugins."""
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    found = {}
    for mid in ("napari/layers/visualize", "napari/layers/data", "napari/file/io_utilities"):
        found[mid] = [i.command.id for i in app.menus.get_menu(mid) if hasattr(i, "command")]
    assert "napari-scmedal.explorer_widget" in found["napari/layers/visualize"]
    assert "napari-scmedal.model_widget" in found["napari/layers/data"]
    assert "napari-scmedal.export_widget" in found["napari/file/io_utilities"]


def test_status_bar_names_the_gene_under_the_cursor(make_napari_viewer, qtbot, trained):
    """Item 6: napari's status bar (built from the active layer's status hook) shows the gene and its value."""
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    _compute_cells(ex, qtbot, "3, 9")
    comp = ex.comparison
    tile = viewer.layers["Original | genomap"]
    gene = comp.layout.genes[5]
    r, c = comp.layout.pixel_of(gene)
    R = comp.shape[0]
    y, x = tile.data_to_world((R + 2 + r, c))[-2:]  # second row (gap of 2 pixels)
    viewer.layers.selection.active = tile
    viewer.mouse_over_canvas = True
    viewer.cursor.position = (y, x)
    status, _ = viewer._calc_status_from_cursor()
    assert gene in status["coordinates"] and comp.row_titles[1] in status["coordinates"]
    assert f"{comp.images['Original'][1, r, c]:.3g}"[:4] in status["coordinates"]
    assert ex.lookup((y, x))["gene"] == gene


def test_loss_plot_renders_off_the_gui_thread_with_three_series_by_default(make_napari_viewer, qtbot):
    """Item 4 and 'loss plots': the loss figure is drawn in a helper process (not even a thread of the GUI
    process, whose GIL it would share; the GUI thread only swaps a pixmap), three series by default, every loss
    behind a toggle."""
    import os

    from napari_scmedal._napari._loss_canvas import MAIN_SERIES, LossCanvas, render_curves

    canvas = LossCanvas()
    qtbot.addWidget(canvas)
    for ep in range(1, 40):
        canvas.add({"model": "fe", "epoch": ep, "train": {"total": 10 / ep, "recon": 1 / ep, "adv": 1.6},
                    "val": {"total": 11 / ep, "recon": 1.1 / ep, "adv": 1.6, "adv_acc": 0.3}})
    canvas.redraw(force=True)
    assert canvas.wait_idle(timeout=120)  # the first render starts the helper process
    assert canvas.render_pid is not None and canvas.render_pid != os.getpid()
    assert canvas.renders < 10  # coalesced: not one render per epoch
    assert canvas.renders >= 1 and not canvas.view.pixmap().isNull()
    img_main = render_curves(canvas.curves, 400, 190, show_all=False)
    img_all = render_curves(canvas.curves, 400, 190, show_all=True)
    assert img_main.shape == (190, 400, 4) and not np.array_equal(img_main, img_all)
    assert set(MAIN_SERIES) == {"train/total", "val/total", "val/recon"}


def test_progress_counts_to_the_expected_stop_and_shows_one_eta(make_napari_viewer):
    """Item 4: the ETA follows early stopping (not max epochs) and is shown once."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cellbench")
    w = _model_widget(viewer, epochs=500)
    from napari_scmedal.models.trainer import expected_last_epoch

    def info_at(epoch, wait):  # what models.trainer.fit reports (patience 15, min 19, max 500)
        return {"model": "fe", "epoch": epoch, "max_epochs": 500, "patience_left": 15 - wait, "min_epochs": 19,
                "eta_s": 42.0, "last_epoch": expected_last_epoch(epoch, 500, 19, 15, wait),
                "train": {"total": 1.0}, "val": {"total": 1.2}}

    info = info_at(12, 6)
    w._on_progress(info)
    assert w._bars.bar.total == 21 and w._bars.bar.n == 12  # 12 + 9 epochs of patience left, past min 19
    assert "ETA" not in w._bars.bar.desc and w.status_label.text().count("ETA") == 1
    assert "of ~21" in w.status_label.text() and "at most 500" in w.status_label.text()
    w._on_progress(info_at(13, 5))  # a new best epoch pushes the end back
    assert w._bars.bar.total == 23
    # the next network restarts the same bar (a new napari bar is a new activity-dock widget: a GUI freeze)
    bar = w._bars.bar
    w._on_progress(dict(info_at(1, 0), model="re"))
    assert w._bars.bar is bar and w._bars.bar.n == 1 and "RE" in w._bars.bar.desc
    w._close_pbar()


def test_explorer_applies_layers_incrementally_and_workers_shorten_the_gil_interval(make_napari_viewer, qtbot,
                                                                                     trained):
    """Item 4: the first compute's two dozen layers are applied a few per event-loop turn (the widget stays
    busy until the last); while a worker runs or layers are applied the GIL switch interval is short and the
    garbage collector's older objects are frozen (no full collection mid-way), both restored afterwards."""
    import gc
    import sys

    from napari_scmedal._napari._common import WORKER_SWITCH_INTERVAL

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    before = sys.getswitchinterval()
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("3, 300, 900")
    assert gc.get_freeze_count() == 0
    ex.compute()
    assert sys.getswitchinterval() == pytest.approx(min(WORKER_SWITCH_INTERVAL, before))
    assert gc.get_freeze_count() > 0
    qtbot.waitUntil(lambda: ex._runner.active or ex.comparison is not None, timeout=TIMEOUT_MS)
    turns, frozen = [], []
    ex._runner.timer.timeout.connect(lambda: (turns.append(1), frozen.append(gc.get_freeze_count())))
    qtbot.waitUntil(lambda: not ex.busy, timeout=TIMEOUT_MS)
    assert len(turns) >= 3  # spread over several event-loop turns, not one long block
    # frozen while the layers were applied, after the worker had ended (the last turn unfreezes before the
    # recording slot runs)
    assert all(f > 0 for f in frozen[:-1])
    assert "Original | genomap" in viewer.layers and "Updated in" in ex.status_label.text()
    assert sys.getswitchinterval() == pytest.approx(before)
    assert gc.get_freeze_count() == 0  # nothing stays out of the collector's sight


def test_all_three_docks_fit_a_1080p_screen(make_napari_viewer, qtbot):
    """Layout: with the model, explorer and export widgets docked, the docks need far less than a 1080-px
    screen (they scroll); the explorer's hover readout has a fixed height and never squashes the form."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "cellbench")
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name)
             for name in ("scMEDAL model", "Genomap explorer", "Export figure")]
    qtbot.wait(50)
    need = sum(dw.minimumSizeHint().height() for dw, _ in docks)
    assert need < 1080 - 200, need  # was 2,017 px (model + explorer alone 1,576 px)
    for _, w in docks:
        assert w.scroll_area.widget().sizeHint().height() > w.minimumSizeHint().height()  # the form scrolls
    ex = docks[1][1]
    h = ex.hover_label.height()
    ex.hover_label.setText("\n".join(["GENE at pixel (1, 2), row\nexpression: " + "x " * 80] * 5))
    qtbot.wait(20)
    assert ex.hover_label.height() == h


def test_latent_clouds_have_titles_a_legend_and_colour_blind_safe_distinct_palettes(make_napari_viewer, qtbot,
                                                                                  trained):
    """Canvases: each latent cloud is titled, a legend names every colour, batch colours (Okabe-Ito) differ from
    cell-line colours (Tol muted); recolouring updates the legend."""
    from napari_scmedal._napari._layers import OKABE_ITO, TOL_MUTED

    model, _ = trained
    viewer = make_napari_viewer()
    (cells,) = viewer.open_sample(PLUGIN, "cellbench")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")
    w.metrics_check.setChecked(False)
    w.set_model(model, "CellBench sample")
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    legend = viewer.layers["CellBench sample | latent legend"]
    labels = list(legend.features["label"])
    assert labels[0] == "colour: batch" and {f"  {b}" for b in model.batches} <= set(labels)
    assert {"FE latent (PCA)", "FEC latent (PCA)", "RE latent (PCA)"} <= set(labels)
    fe = viewer.layers["CellBench sample | FE latent"]
    to_hex = lambda c: "#%02X%02X%02X" % tuple(int(round(v * 255)) for v in c[:3])  # noqa: E731
    batch_cols = {to_hex(c) for c in fe.face_color}
    assert batch_cols <= set(OKABE_ITO)
    w.color_combo.setCurrentText("label")
    qtbot.wait(50)
    label_cols = {to_hex(c) for c in fe.face_color}
    assert label_cols <= set(TOL_MUTED) and not label_cols & batch_cols
    legend = viewer.layers["CellBench sample | latent legend"]
    assert list(legend.features["label"])[0] == "colour: cell_line"


def test_top_gene_names_are_one_per_tile_quadrant_and_listed_in_full(make_napari_viewer, qtbot, trained):
    """Canvases: top-gene names never pile up: at most one per quadrant of each row's Original tile; every top
    gene is still marked on the tiles and listed in the widget."""
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    _compute_cells(ex, qtbot, "3, 300")
    comp = ex.comparison
    tg = comp.top_genes
    R, C = comp.shape
    top = viewer.layers["genomap | top genes"]
    names = [g for g in top.features["gene"] if g]
    assert 0 < len(names) <= 4 * comp.n_rows < len(tg)
    from napari_scmedal._napari._tiles import label_quadrants

    named = label_quadrants(tg, (R, C))
    assert sorted(names) == sorted(str(tg.iloc[i]["gene"]) for i in named)
    regions = [(int(tg.iloc[i]["row"]), tg.iloc[i]["row_px"] >= R / 2, tg.iloc[i]["col_px"] >= C / 2) for i in named]
    assert len(regions) == len(set(regions))  # one name per quadrant of each row's tile
    assert ex.top_list.count() == len(comp.top_genes_overall)


def test_expression_and_difference_tiles_have_colour_bars(make_napari_viewer, qtbot, trained):
    """Canvases: one colour bar for the shared expression scale and one for the centred difference scale."""
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    _compute_cells(ex, qtbot, "3")
    shown = [ly for ly in viewer.layers if ly.metadata.get("scmedal_genomap") and ly._type_string == "image"
             and ly.colorbar.visible]
    assert sorted(ly.metadata["kind"] for ly in shown) == ["difference", "expression"]
    exp = next(ly for ly in shown if ly.metadata["kind"] == "expression")
    assert exp.colormap.name == "viridis" and str(exp.colorbar.position) != str(
        next(ly for ly in shown if ly.metadata["kind"] == "difference").colorbar.position)
