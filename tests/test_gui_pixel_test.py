"""The Genomap explorer's pixel-test panel, driven through the real widgets under Xvfb: the mixed model and
Mann-Whitney between two groups of batches, the significant-pixel outline on every tile, the CSV, and the
errors a user meets (an averaged comparison, an empty group)."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-scmedal"
TIMEOUT_MS = 180_000
GROUP_A = ["CELseq2_3cl", "CELseq2_5cl_p1"]
GROUP_B = ["CELseq2_5cl_p2", "CELseq2_5cl_p3", "Dropseq_3cl"]


@pytest.fixture
def explorer(make_napari_viewer, qtbot, sample_model):
    """A drawn viewer with the sample, the session's model and the explorer showing 12 single cells with a
    counterfactual into every batch."""
    model, _ = sample_model
    viewer = make_napari_viewer(show=True)
    (cells,) = viewer.open_sample(PLUGIN, "cellbench")
    cells.metadata["scmedal_model"] = model
    _, ex = viewer.window.add_plugin_dock_widget(PLUGIN, "Genomap explorer")
    ex.mode_combo.setCurrentText("cell indices")
    ex.max_cells_spin.setValue(12)
    ex.indices_edit.setText(", ".join(str(i) for i in range(3, 1400, 117)))
    ex._select_all_targets()
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy and ex.comparison is not None, timeout=TIMEOUT_MS)
    return viewer, ex


def _run(panel, qtbot, method_label, a=GROUP_A, b=GROUP_B):
    panel.method_combo.setCurrentText(method_label)
    panel.set_groups(a, b, names=("plates A", "others"))
    panel.run_btn.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)


def test_mixed_model_outlines_significant_pixels_and_saves_the_genes(explorer, qtbot, tmp_path):
    from napari_scmedal._napari._test_panel import SIGNIFICANT_LAYER
    from napari_scmedal.lmm import counterfactual_pixel_test

    viewer, ex = explorer
    panel = ex.test_panel
    assert sorted(panel.a_list.item(i).text() for i in range(panel.a_list.count())) == sorted(GROUP_A + GROUP_B)
    _run(panel, qtbot, "mixed model (batch random effect)")
    res = panel.result
    assert res is not None and res.test == "mixedlm" and ex.last_error is None
    # the panel ran the core's test on the explorer's comparison: same table
    assert panel.dist_combo.currentText().startswith("t")  # the GUI's default p-values (few batches)
    ref = counterfactual_pixel_test(ex.comparison, GROUP_A, GROUP_B, method="mixedlm", names=("plates A", "others"),
                                    dist="t")
    np.testing.assert_allclose(res.table["p"].to_numpy(), ref.table["p"].to_numpy(), rtol=1e-10)
    n_sig = int(res.significant.sum())
    assert f"{n_sig} significant" in panel.status_label.text()
    # with 2 + 3 batches the batch-level test has little power: an empty result draws no outline
    if n_sig == 0:
        assert SIGNIFICANT_LAYER not in viewer.layers or not viewer.layers[SIGNIFICANT_LAYER].visible
    # the CSV maps pixels back to genes
    out = panel.save_csv(tmp_path / "lmm.csv")
    df = pd.read_csv(out)
    assert {"gene", "row", "col", "p", "q", "significant"} <= set(df.columns)
    assert int(df["significant"].sum()) == n_sig and len(df) == len(res.table)
    assert set(df["gene"]) <= {str(g) for g in ex.comparison.layout.genes}


def test_mann_whitney_says_cells_are_treated_as_independent(explorer, qtbot):
    viewer, ex = explorer
    panel = ex.test_panel
    from napari_scmedal._napari._test_panel import SIGNIFICANT_LAYER
    from napari_scmedal.genesets import outline_segments

    # Mann-Whitney takes one batch per group: the four plates vs Drop-seq
    _run(panel, qtbot, "Mann-Whitney (cells independent)", a=GROUP_A + GROUP_B[:2], b=GROUP_B[2:])
    res = panel.result
    assert res.test == "mannwhitney" and ex.last_error is None
    assert "independent" in panel.note_label.text()
    # cells x batches as independent samples: Drop-seq vs plates differ in many pixels
    assert res.significant.sum() > 0
    # outlines on every tile and row: the same pixel-edge segments, translated to each tile's rows
    ly = viewer.layers[SIGNIFICANT_LAYER]
    assert ly.visible and ly.metadata.get("scmedal_genomap")
    per_tile = len(outline_segments(res.significant))
    assert len(ly.data) == per_tile * len(ex.comparison.names) * ex.comparison.n_rows
    r, c = np.argwhere(res.significant)[0]
    y0, x0 = ex.tile_origin(ex.comparison.names[0])
    starts = ly.data[:, 0]  # every segment starts on a pixel edge (+-0.5) of a significant pixel
    assert np.any(np.all(np.abs(starts - (y0 + r - 0.5, x0 + c - 0.5)) < 1e-6, axis=1))
    # a new comparison hides the old result instead of outlining the wrong cells
    ex.indices_edit.setText("10, 20")
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy and ex.comparison.n_rows == 2, timeout=TIMEOUT_MS)
    assert panel.result is None and not panel.save_btn.isEnabled()
    assert "run the test again" in panel.status_label.text()
    # the outline layer is an annotation layer: hidden and kept for the next result, not removed (slow)
    assert viewer.layers[SIGNIFICANT_LAYER] is ly and not ly.visible


def test_pixel_test_refuses_an_averaged_comparison_and_empty_groups(explorer, qtbot):
    viewer, ex = explorer
    panel = ex.test_panel
    panel.set_groups(GROUP_A, [])
    panel.run_btn.click()
    assert panel.result is None and "at least one batch" in panel.last_error
    ex.average_check.setChecked(True)
    ex.compute()
    qtbot.waitUntil(lambda: not ex.busy and ex.comparison.averaged, timeout=TIMEOUT_MS)
    panel.set_groups(GROUP_A, GROUP_B)
    panel.run_btn.click()
    assert panel.result is None and "one row per cell" in panel.last_error


def test_cancel_stops_the_mixed_model_midway_and_changes_nothing(explorer, qtbot, monkeypatch):
    """Cancel while the mixed model is between pixel chunks: the core stops, nothing is drawn or kept, the
    panel says so without an error, and the next run works."""
    import time

    import napari_scmedal.lmm as lmm
    from napari_scmedal._napari._test_panel import SIGNIFICANT_LAYER

    viewer, ex = explorer
    panel = ex.test_panel
    real = lmm.counterfactual_pixel_test
    chunks = []

    def held_after_first_chunk(*args, **kw):  # small chunks; the first chunk's progress waits for the cancel
        outer, cancel = kw["progress"], kw["cancel"]

        def progress(info):
            outer(info)
            chunks.append(info["done"])
            deadline = time.monotonic() + 60
            while not cancel() and time.monotonic() < deadline:
                time.sleep(0.01)

        return real(*args, **{**kw, "progress": progress, "chunk_pixels": 64})

    monkeypatch.setattr(lmm, "counterfactual_pixel_test", held_after_first_chunk)
    panel.method_combo.setCurrentText("mixed model (batch random effect)")
    panel.set_groups(GROUP_A, GROUP_B)
    panel.run_btn.click()
    assert panel.busy and panel.cancel_btn.isEnabled() and not panel.run_btn.isEnabled()
    qtbot.waitUntil(lambda: "pixels fitted" in panel.status_label.text(), timeout=TIMEOUT_MS)
    panel.cancel_btn.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    n_pixels = int(np.prod(ex.comparison.shape))
    assert chunks == [64] and chunks[0] < n_pixels  # stopped after the first chunk, not run to the end
    assert panel.result is None and not panel.save_btn.isEnabled()
    assert panel.status_label.text() == "Test cancelled: nothing changed."
    assert getattr(panel, "last_error", None) is None and SIGNIFICANT_LAYER not in viewer.layers
    assert panel.run_btn.isEnabled() and not panel.cancel_btn.isEnabled()
    monkeypatch.setattr(lmm, "counterfactual_pixel_test", real)
    _run(panel, qtbot, "mixed model (batch random effect)")
    assert panel.result is not None and len(panel.result.table) == n_pixels
