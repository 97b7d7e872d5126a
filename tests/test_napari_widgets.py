"""napari dock widgets on real data in a real viewer (Xvfb): training through the worker, cancel,
save/load with the fit check, the genomap explorer's layers, hover lookup, selection updates and
figure export."""

import numpy as np
import pytest

pytest.importorskip("napari")


pytestmark = pytest.mark.gui
PLUGIN = "napari-scmedal"
N_GENES = 256  # a 16 x 16 genomap keeps the tests fast
TIMEOUT_MS = 180_000


@pytest.fixture
def trained(sample_model):
    """The session's briefly trained sample model (tests/conftest.py) and its AnnData."""
    return sample_model


def _viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample(PLUGIN, "cellbench")
    return viewer, layer


def _model_widget(viewer, genes=N_GENES, epochs=3, preset=None):
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")
    w.apply_settings({"batch_key": "batch", "label_key": "cell_line", "n_genes": genes, "preset": preset,
                      "max_epochs": epochs, "threads": 1})
    return w


def _assert_report_shows(w, model):
    """The widget shows the settings (model.derived) and training health (model.health) the core recorded."""
    from napari_scmedal._training_report import health_lines, health_problems, health_state, settings_lines

    r, d = w.report, model.derived
    assert r.settings_label.isVisibleTo(w)
    text = r.settings_label.text()
    assert f"{d['preset']} preset, {d['n_train']} training cells" in text
    assert f"batch {d['settings']['batch_size']}" in text and f"epochs <= {d['settings']['max_epochs']}" in text
    tip = r.settings_label.toolTip().splitlines()
    assert tip[:len(settings_lines(d))] == settings_lines(d)
    assert any(line.startswith("max_epochs = ") and line.endswith("(given)") for line in tip)
    assert any(line.startswith("batch_size = ") and "(derived: " in line for line in tip) == (
        d["reasons"]["batch_size"] != "given")
    state = health_state(model.health)
    assert state in ("ok", "problem") and r.state == state
    assert r.health_label.isVisibleTo(w)
    assert r.health_label.toolTip().splitlines() == health_lines(model.health)
    if state == "problem":
        problems = health_problems(model.health)
        assert r.health_label.text().startswith("Training health: PROBLEMS")
        assert all(p in r.health_label.text() for p in problems)
        assert "#ff7a1a" in r.health_label.styleSheet()
        assert w.last_warning and all(p in w.last_warning for p in problems)
    else:
        assert r.health_label.text().startswith("Training health: ok (FE")


# ---------------------------------------------------------------------------------------------- model
def test_train_in_worker_adds_latent_layers_and_metrics(make_napari_viewer, qtbot):
    from napari_scmedal.embedding import pca_2d
    from napari_scmedal._napari._model_widget import ModelWidget

    viewer, cells = _viewer_with_sample(make_napari_viewer)
    w = _model_widget(viewer)
    assert w.grid_label.text() == "genomap 16 x 16, every pixel a gene"
    # the data-derived "auto" preset is listed first and selected by default, with an explanation
    presets = [w.preset_combo.itemText(i) for i in range(w.preset_combo.count())]
    assert presets[0] == "auto" and set(presets) == {"auto", "quick", "paper"}
    assert w.preset_combo.currentText() == "auto" and "derived" in w.preset_combo.toolTip()
    assert w.time_spin.value() == 0 and w.time_spin.text() == "no limit"
    assert not w.report.health_label.isVisibleTo(w)
    w.time_spin.setValue(3600)  # a cap that does not bind: the run is the same as without one
    w.train_btn.click()
    assert w.busy and not w.train_btn.isEnabled()  # the work runs in a worker, the UI is free
    qtbot.waitUntil(lambda: not w.busy and w.metrics is not None, timeout=TIMEOUT_MS)
    assert w.last_error is None
    model = w.model
    assert model.trained_kinds == ["fe", "fec", "re"]
    assert model.preset == "auto" and model.derived["settings"]["max_epochs"] == 3
    assert all(model.history[k]["stopped"] == "max_epochs" for k in ("fe", "fec", "re"))
    _assert_report_shows(w, model)
    # live progress reached the loss canvas for every network, one point per epoch
    for kind in ("fe", "fec", "re"):
        assert len(w.loss_canvas.curves[kind]["val/total"]) == 3
    # latent layers: one point per cell at the first two PCs of the model's latent, coloured by batch
    for kind, name in (("fe", "FE latent"), ("fec", "FEC latent"), ("re", "RE latent")):
        layer = viewer.layers[f"CellBench sample | {name}"]
        assert layer.data.shape == (1408, 2)
        Z = model.get_latent_representation(kind, adata=cells.metadata["adata"])
        Y = pca_2d(Z)
        np.testing.assert_allclose(layer.data[:, 1], Y[:, 0], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(layer.data[:, 0], -Y[:, 1], rtol=1e-3, atol=1e-3)
        fc = np.asarray(layer.face_color)
        b = layer.features["batch"].astype(str).to_numpy()
        assert len({tuple(np.round(fc[b == x][0], 3)) for x in np.unique(b)}) == 5
    # the metrics table shows evaluate_model's numbers (3 latents x batch/label)
    from napari_scmedal.metrics import evaluate_model

    ref = evaluate_model(model, "test", adata=cells.metadata["adata"])
    assert w.metrics_table.rowCount() == 6
    rows = {(w.metrics_table.item(i, 0).text(), w.metrics_table.item(i, 1).text()): i
            for i in range(w.metrics_table.rowCount())}
    i = rows[("RE", "batch")]
    assert float(w.metrics_table.item(i, 5).text()) == pytest.approx(ref["latents"]["re"]["batch"]["asw"], abs=1e-3)
    # the table says which direction is better for each row
    assert w.metrics_table.horizontalHeaderItem(2).text() == "better"
    assert w.metrics_table.item(i, 2).text() == "higher (batch captured)"
    j = rows[("FE", "batch")]
    assert w.metrics_table.item(j, 2).text() == "lower (batch removed)"
    # colouring the latents by label switches their face colours to the cell line
    w.color_combo.setCurrentText("label")
    layer = viewer.layers["CellBench sample | FE latent"]
    lines = layer.features["cell_line"].astype(str).to_numpy()
    fc = np.asarray(layer.face_color)
    assert all(np.allclose(fc[lines == x], fc[lines == x][0]) for x in np.unique(lines))
    # settings are remembered by a new widget
    w2 = ModelWidget(viewer)
    assert w2.genes_spin.value() == N_GENES and w2.preset_combo.currentText() == "auto"
    assert w2.epochs_spin.value() == 3 and w2.time_spin.value() == 3600


def test_cancel_keeps_the_best_model(make_napari_viewer, qtbot):
    viewer, _ = _viewer_with_sample(make_napari_viewer)
    w = _model_widget(viewer, epochs=500)
    w.metrics_check.setChecked(False)
    w.train_btn.click()
    qtbot.waitUntil(lambda: len(w.loss_canvas.curves.get("fe", {}).get("val/total", [])) >= 2, timeout=TIMEOUT_MS)
    assert w.cancel_btn.isEnabled()
    w.cancel_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.last_error is None
    model = w.model
    hist = model.history["fe"]
    assert hist["stopped"] == "cancelled"
    assert hist["best_epoch"] is not None
    assert len(w.loss_canvas.curves["fe"]["val/total"]) < 500
    assert model.trained_kinds == ["fe"]  # later networks are not trained after a cancel
    assert "cancelled" in w.status_label.text()
    assert "CellBench sample | FE latent" in viewer.layers
    assert "CellBench sample | RE latent" not in viewer.layers


def test_time_cap_stops_every_network_with_its_best_weights(make_napari_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, _ = _viewer_with_sample(make_napari_viewer)
    w = _model_widget(viewer, genes=64, epochs=500)
    w.metrics_check.setChecked(False)
    w.time_spin.setValue(1)  # one second for FE, FEC and RE together
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        w.train_btn.click()
        qtbot.waitUntil(lambda: not w.busy and w.model is not None, timeout=TIMEOUT_MS)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    # the core's TrainingHealthWarnings (raised in the worker thread) become one notification, from model.health
    health_notes = [n.message for n in seen if "training health" in n.message or "training-health" in n.message]
    assert health_notes == ([w.last_warning] if w.model.health and any(
        h["problems"] for h in w.model.health.values()) else [])
    assert w.last_error is None
    model = w.model
    assert model.trained_kinds == ["fe", "fec", "re"]
    for kind in ("fe", "fec", "re"):  # auto waits >= 20 epochs before early stopping: the cap binds first
        h = model.history[kind]
        assert h["stopped"] == "max_time" and h["best_epoch"] is not None and len(h["epochs"]) < 500
    assert "time cap reached" in w.status_label.text()
    assert "stopped: time cap reached" in w.report.settings_label.toolTip()
    _assert_report_shows(w, model)


def test_health_problems_show_a_warning_label_and_a_notification(make_napari_viewer, qtbot, trained):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from napari_scmedal.models.health import NOT_CHECKED

    model, _ = trained
    viewer, _ = _viewer_with_sample(make_napari_viewer)
    w = _model_widget(viewer)
    w.metrics_check.setChecked(False)
    seen = []
    notification_manager.notification_ready.connect(seen.append)

    def health_warnings():
        return [n for n in seen if n.severity == NotificationSeverity.WARNING and "training-health" in n.message]

    old = model.health
    problem = "RE reconstructs the per-gene means poorly (R^2 0.12 < 0.9): it is undertrained; train longer."
    try:
        model.health = {"fe": {"ok": True, "problems": [], "status": "checked", "gene_mean_r2": 0.97},
                        "re": {"ok": False, "problems": [problem], "status": "checked", "gene_mean_r2": 0.12}}
        w.set_model(model, "CellBench sample")
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
        label = w.report.health_label
        assert label.isVisibleTo(w) and w.report.state == "problem"
        assert label.text() == f"Training health: PROBLEMS\n\u2022 RE: {problem}"
        assert "#ff7a1a" in label.styleSheet()
        assert label.toolTip().splitlines()[0].startswith("FE ok: gene-mean R^2 0.97")
        (note,) = health_warnings()
        assert f"RE: {problem}" in note.message and note.message == w.last_warning
        # a model file saved before the health checks: said so, in grey, without a notification
        model.health = {k: dict(NOT_CHECKED) for k in model.trained_kinds}
        w.set_model(model, "CellBench sample")
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
        assert w.report.state == "not checked" and "not checked" in label.text()
        assert "#ff7a1a" not in label.styleSheet()
        assert len(health_warnings()) == 1
    finally:
        model.health = old
        notification_manager.notification_ready.disconnect(seen.append)


def test_save_then_load_checks_the_model_fits_the_data(make_napari_viewer, qtbot, trained, tmp_path):
    import anndata as ad

    from napari_scmedal._napari._layers import cells_layer_data

    model, adata = trained
    viewer, cells = _viewer_with_sample(make_napari_viewer)
    w = _model_widget(viewer)
    w.metrics_check.setChecked(False)
    w.model = model
    path = tmp_path / "m.safetensors"
    w.save_model(str(path))
    assert path.exists() and w.last_error is None
    # data lacking most of the model's genes: loading says which genes are missing
    few = ad.AnnData(adata[:, adata.var_names[-200:]].X.copy(), obs=adata.obs.copy(),
                     var=adata.var.iloc[-200:].copy())
    few = few[:, [g for g in few.var_names if g not in set(model.genes)]].copy()
    data, kw, _ = cells_layer_data(few, "other genes", coords=np.zeros((few.n_obs, 2)))
    viewer.add_points(data, **kw)
    w.layer_combo.setCurrentText("other genes")
    w.load_model(str(path))
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.last_error is not None and "gene" in w.last_error.lower()
    assert "other genes | FE latent" not in viewer.layers
    # the right data: the model loads and its latents appear
    w.last_error = None
    w.layer_combo.setCurrentText("CellBench sample")
    w.load_model(str(path))
    qtbot.waitUntil(lambda: not w.busy and "CellBench sample | RE latent" in viewer.layers, timeout=TIMEOUT_MS)
    assert w.last_error is None
    assert w.model is not model and w.model.genes == model.genes
    from napari_scmedal._training_report import health_problems

    assert health_problems(w.model.health) == health_problems(model.health) and w.model.derived["preset"] == "quick"
    _assert_report_shows(w, w.model)  # settings and health come back from the file
    np.testing.assert_allclose(w.model.get_latent_representation("fe", adata=adata),
                               model.get_latent_representation("fe", adata=adata), atol=1e-5)


# ---------------------------------------------------------------------------------------------- explorer
def _explorer(make_napari_viewer, trained):
    model, _ = trained
    viewer, cells = _viewer_with_sample(make_napari_viewer)
    cells.metadata["scmedal_model"] = model
    _, ex = viewer.window.add_plugin_dock_widget(PLUGIN, "Genomap explorer")
    assert ex.model_combo.currentText() == "CellBench sample"
    assert ex.target_batches() == list(model.batches)  # default: every batch
    return viewer, cells, ex


def _compute(ex, qtbot):
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy, timeout=TIMEOUT_MS)
    assert ex.last_error is None, ex.last_error


def test_explorer_layers_shapes_colormaps_limits(make_napari_viewer, qtbot, trained):
    from napari_scmedal.compare import counterfactual_name

    model, adata = trained
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("group (label x batch)")
    ex.label_combo.setCurrentText("H1975")
    ex.batch_combo.setCurrentText("(any)")
    ex.max_cells_spin.setValue(2)
    _compute(ex, qtbot)
    comp = ex.comparison
    assert comp.n_rows == 2 and comp.shape == (16, 16)
    assert set(comp.row_labels) == {"H1975"}
    from napari.layers import Image

    from napari_scmedal._napari._tiles import tile_layer_name

    names = [ly.name for ly in viewer.layers if ly.name.endswith(" | genomap") and isinstance(ly, Image)]
    expected = ["Original", "FE reconstruction", "RE reconstruction"] + [counterfactual_name(b) for b in model.batches]
    expected += ["FE - Original"] + [f"Counterfactual -> {b} - Original" for b in model.batches]
    expected += [f"Counterfactual -> {b} - Counterfactual -> own batch" for b in model.batches]
    assert sorted(names) == sorted(tile_layer_name(n) for n in expected)
    assert len({n[:20] for n in names}) == len(names)  # names differ within napari's visible 20 characters
    lo, hi = comp.expression_limits
    d = comp.difference_limits[1]
    assert d > 0
    for n in expected:
        ly = viewer.layers[tile_layer_name(n)]
        assert ly.data.shape == (2 * 16 + 2, 16)  # two rows of 16 x 16 with a 2-pixel NaN gap
        assert np.isnan(ly.data[16:18]).all()
        np.testing.assert_array_equal(ly.data[18:], comp.images[n][1])
        if comp.kinds[n] == "expression":
            assert ly.colormap.name == "viridis"
            assert tuple(ly.contrast_limits) == pytest.approx((lo, hi))
        else:
            assert ly.colormap.name == "RdBu_r"
            assert tuple(ly.contrast_limits) == pytest.approx((-d, d))
    # tiles do not overlap
    boxes = []
    for n in expected:
        ly = viewer.layers[tile_layer_name(n)]
        (y0, x0), (y1, x1) = ly.extent.world[0][-2:], ly.extent.world[1][-2:]
        boxes.append((y0, x0, y1, x1))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # own batch framed: one frame (four edge segments) per row, on the tile of that row's batch
    own = viewer.layers["genomap | own batch"]
    assert len(own.data) == 2 * 4
    for r in range(2):
        tile = viewer.layers[tile_layer_name(counterfactual_name(comp.row_batches[r]))]
        ty, tx = tile.translate[-2:]
        ends = np.concatenate([own.data[4 * r:4 * r + 4, 0], own.data[4 * r:4 * r + 4].sum(axis=1)])
        assert ends[:, 1].min() == pytest.approx(tx - 0.5)
        assert ends[:, 0].min() == pytest.approx(ty + r * 18 - 0.5)
        assert ends[:, 0].max() - ends[:, 0].min() == pytest.approx(16)  # the tile's height (16 x 16 genomaps)
    # top genes: marked points and the list
    assert ex.top_list.count() == 10
    assert comp.top_genes_overall["gene"].iloc[0] in ex.top_list.item(0).text()
    assert "genomap | top genes" in viewer.layers

    # recomputing replaces rather than duplicates; one cell -> one row
    n_layers = len(viewer.layers)
    ex.max_cells_spin.setValue(1)
    ex.scale_combo.setCurrentText("zscore")
    _compute(ex, qtbot)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["Original | genomap"].data.shape == (16, 16)
    assert ex.comparison.scale == "zscore"
    assert len(viewer.layers["genomap | own batch"].data) == 4  # one frame

    # fewer target batches: the counterfactual layers of the others are removed
    for i in range(ex.targets_list.count()):
        it = ex.targets_list.item(i)
        it.setSelected(i < 2)
    _compute(ex, qtbot)
    cf = [ly.name for ly in viewer.layers if ly.name.startswith("CF ") and ly.name.endswith(" | genomap")]
    assert sorted(cf) == sorted(tile_layer_name(counterfactual_name(b)) for b in model.batches[:2])


def test_hover_names_the_gene_and_every_value(make_napari_viewer, qtbot, trained):
    from types import SimpleNamespace

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("10, 500")
    _compute(ex, qtbot)
    comp = ex.comparison
    layout = comp.layout
    for gene in (layout.genes[0], layout.genes[77], layout.genes[-1]):
        r, c = layout.pixel_of(gene)
        for row in (0, 1):
            for tile in ("Original", "FE - Original"):
                ty, tx = ex.tile_origin(tile)
                info = ex.lookup((ty + row * 18 + r, tx + c))
                assert info["gene"] == gene
                assert info["image"] == tile and info["row"] == row
                assert info["values"]["Original"] == pytest.approx(float(comp.images["Original"][row, r, c]),
                                                                   nan_ok=True)
    # the gap between rows and the space between tiles name nothing
    ty, tx = ex.tile_origin("Original")
    assert ex.lookup((ty + 16.6, tx + 3)) is None
    assert ex.lookup((ty + 3, tx + 16 + 3)) is None
    # the mouse callback writes the gene into the widget (the status bar: tests/test_gui_defects.py)
    gene = layout.genes[5]
    r, c = layout.pixel_of(gene)
    ex._on_mouse_move(viewer, SimpleNamespace(position=np.array([ty + r, tx + c])))
    assert ex.hover_label.text().startswith(gene)


def test_selection_in_a_cells_layer_updates_the_comparison(make_napari_viewer, qtbot, trained):
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("selected points")
    ex.cells_combo.setCurrentText("CellBench sample")
    cells.selected_data = {3, 7}
    qtbot.waitUntil(lambda: ex.comparison is not None and not ex.busy, timeout=TIMEOUT_MS)
    assert ex.comparison.meta["cells"] == [3, 7]
    cells.selected_data = {42}
    qtbot.waitUntil(lambda: ex.comparison.meta["cells"] == [42] and not ex.busy, timeout=TIMEOUT_MS)
    assert viewer.layers["Original | genomap"].data.shape == (16, 16)
    # averaging a selected group gives one row
    ex.average_check.setChecked(True)
    cells.selected_data = {1, 2, 3, 4}
    qtbot.waitUntil(lambda: ex.comparison.meta["cells"] == [1, 2, 3, 4] and not ex.busy, timeout=TIMEOUT_MS)
    assert ex.comparison.averaged and ex.comparison.n_rows == 1


def test_core_errors_become_notifications(make_napari_viewer, qtbot, trained):
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("0, 99999")
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy, timeout=TIMEOUT_MS)
    assert "out of range" in ex.last_error and "1408 cells" in ex.last_error
    ex.indices_edit.setText("zero")  # positions or obs names, as the CLI's --cells
    ex.compute()
    assert "Unknown cell name(s) ['zero']" in ex.last_error
    ex.indices_edit.setText(" ; ")
    ex.compute()
    assert "No cell given" in ex.last_error
    ex.mode_combo.setCurrentText("selected points")
    cells.selected_data = set()
    ex.compute()
    assert "No points are selected" in ex.last_error


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_export_writes_the_requested_size(make_napari_viewer, qtbot, trained, tmp_path, ext):
    from PIL import Image

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("0")
    _compute(ex, qtbot)
    _, xw = viewer.window.add_plugin_dock_widget(PLUGIN, "Export figure")
    assert xw.columns_list.count() == len(ex.comparison.names)
    xw.width_spin.setValue(152.4)
    xw.height_spin.setValue(63.5)
    xw.dpi_spin.setValue(100)
    path = tmp_path / f"panel{ext}"
    xw.export(str(path))
    qtbot.waitUntil(lambda: not xw.busy, timeout=TIMEOUT_MS)
    assert xw.last_error is None
    with Image.open(path) as im:
        assert im.size == (600, 250)
    # a bad file name is reported with the fix
    xw.export(str(tmp_path / "panel.bmp"))
    qtbot.waitUntil(lambda: not xw.busy, timeout=TIMEOUT_MS)
    assert ".png" in xw.last_error


# ---------------------------------------------------------------------------------------------- launcher
def test_open_viewer_shows_model_latents_and_comparison(qtbot, trained):
    from napari_scmedal._napari.launch import open_viewer
    from napari_scmedal.compare import compare_cells

    model, adata = trained
    comp = compare_cells(model, [0, 1], adata=adata)
    viewer = open_viewer(adata, model, comp, block=False, show=False)
    try:
        assert viewer.layers["cells"].metadata["scmedal_model"] is model
        assert viewer.layers["Original | genomap"].data.shape == (34, 16)
        qtbot.waitUntil(lambda: "cells | RE latent" in viewer.layers, timeout=TIMEOUT_MS)
        _, mw = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")  # the docked one
        qtbot.waitUntil(lambda: not mw.busy, timeout=TIMEOUT_MS)  # layers are added one per turn, then metrics
    finally:
        from superqt.utils import WorkerBase

        WorkerBase.await_workers(TIMEOUT_MS)  # metrics may still run: let them finish first
        qtbot.wait(300)
        viewer.close()


def test_save_genomap_layers_through_napari_writer(make_napari_viewer, qtbot, trained, tmp_path):
    import json

    from napari_scmedal._napari._writer import sidecar_path
    from napari_scmedal.genomap import GenomapLayout

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("3, 9")
    _compute(ex, qtbot)
    comp = ex.comparison
    chosen = [viewer.layers["Original | genomap"], viewer.layers["dOrig FE | genomap"]]
    viewer.layers.selection = set(chosen)
    path = tmp_path / "maps.genomap.npy"
    viewer.layers.save(str(path), selected=True, plugin=PLUGIN)
    stack = np.load(path)
    assert stack.shape == (2, 34, 16)
    np.testing.assert_array_equal(stack[1][18:], comp.images["FE - Original"][1])
    side = json.loads(sidecar_path(path).read_text())
    assert [ly["name"] for ly in side["layers"]] == ["Original | genomap", "dOrig FE | genomap"]
    assert [ly["kind"] for ly in side["layers"]] == ["expression", "difference"]
    layout = GenomapLayout.from_dict(side["layout"])
    gene = comp.layout.genes[11]
    assert layout.pixel_of(gene) == comp.layout.pixel_of(gene)


# ---------------------------------------------------------------------------------------------- all cells
def _eager_genomaps(model, adata, version, layout):
    """Every cell of ``adata`` in ``version``, projected eagerly (the reference for the lazy stack)."""
    from napari_scmedal.genomap.ensure import layout_columns

    X = model.predict_versions(adata=adata, batches=[version[3:]] if version.startswith("cf:") else None)[version]
    return layout.project(X[:, layout_columns(layout, model.genes)])


def test_all_cells_stack_is_one_lazy_image_layer_with_a_cell_slider(make_napari_viewer, qtbot, trained):
    import dask.array as da
    from napari.layers import Image

    from napari_scmedal.genomap import stack_source

    model, _ = trained
    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    adata = cells.metadata["adata"]
    target = model.batches[1]
    labels = [ex.stack_version_combo.itemText(i) for i in range(ex.stack_version_combo.count())]
    assert labels == ["Original", "FE reconstruction", "RE reconstruction"] + [
        f"Counterfactual -> {b}" for b in model.batches]
    ex.stack_version_combo.setCurrentText(f"Counterfactual -> {target}")
    n_before = len(viewer.layers)
    ex.stack_btn.click()
    qtbot.waitUntil(lambda: not ex.stack_busy, timeout=TIMEOUT_MS)
    assert ex.last_error is None, ex.last_error
    assert len(viewer.layers) == n_before + 1
    ly = viewer.layers[f"genomaps: Counterfactual -> {target} (all cells)"]
    assert isinstance(ly, Image) and ex.stack_layer.name == ly.name
    assert isinstance(ly.data, da.Array) and ly.data.shape == (adata.n_obs, 16, 16)
    assert ly.colormap.name == "viridis"
    with ly._slicing_state.dask_optimized_slicing() as (_, dask_cache):
        assert dask_cache is None  # out of napari's global dask cache (which may grow to 25% of RAM)
    src = stack_source(ly.data)
    # limits from a sample of 3 chunks, plus the slice on screen: nowhere near every chunk computed
    assert src.calls <= 4 < ly.data.numblocks[0]
    lo, hi = ly.contrast_limits
    assert lo < hi
    eager = _eager_genomaps(model, adata, f"cf:{target}", src.layout)
    assert viewer.dims.ndim == 3
    for k in (5, 700, adata.n_obs - 1):
        viewer.dims.set_current_step(0, k)
        qtbot.wait(10)
        np.testing.assert_allclose(np.asarray(ly._slice.image.raw), eager[k], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert src.cached_bytes <= 4 * 64 * 16 * 16 * 4  # the stack's own cache stays bounded
    # hovering names the cell, the gene and the value on the slice shown
    k = adata.n_obs - 1
    r, c = np.argwhere(src.layout.mask)[0]
    world = np.asarray(ly.data_to_world((k, r, c)))
    info = ex.lookup_stack(world)
    assert info["cell"] == k and info["pixel"] == (r, c) and info["gene"] == src.layout.gene_at(r, c)
    assert info["obs_name"] == str(adata.obs_names[k])
    assert info["value"] == pytest.approx(float(eager[k, r, c]), rel=1e-5, abs=1e-5)
    # adding the same version again updates that layer instead of duplicating it
    ex.stack_btn.click()
    qtbot.waitUntil(lambda: not ex.stack_busy, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n_before + 1
    # the comparison tiles still work next to the stack and do not remove it
    ex.mode_combo.setCurrentText("cell indices")
    ex.indices_edit.setText("0")
    _compute(ex, qtbot)
    assert ly in viewer.layers and "Original | genomap" in viewer.layers
