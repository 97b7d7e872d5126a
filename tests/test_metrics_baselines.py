"""kNN mixing / label-conservation scores, PCA and Harmony baselines, classifier intervals and chance,
the flattened metrics rows, ``scmedal evaluate --baselines`` and the model widget's baseline rows."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from napari_scmedal.errors import DataError
from napari_scmedal.metrics import (clisi, evaluate_model, ilisi, kmeans_nmi_ari, latent_scores, lisi, metric_goal,
                                    metrics_rows, mixed_effects_classification)


def _lattice(n=900, k=3):
    """Points on a line whose batches alternate: every neighbourhood holds all batches equally."""
    return np.c_[np.arange(float(n)), np.zeros(n)], np.arange(n) % k


def _apart(n=600, k=3, seed=0):
    """k far-apart blobs, one per group."""
    rng = np.random.default_rng(seed)
    g = np.arange(n) % k
    return rng.normal(size=(n, 5)) + 100.0 * np.eye(5)[g], g


# ---------------------------------------------------------------------------------------------- kNN scores
def test_ilisi_and_clisi_reach_their_extremes():
    x, b = _lattice()
    assert ilisi(x, b) > 0.95  # perfectly mixed batches
    assert clisi(x, b) < 0.05  # ... are the worst possible label separation
    y, g = _apart()
    assert ilisi(y, g) == pytest.approx(0.0, abs=1e-6)  # every neighbourhood one batch
    assert clisi(y, g) == pytest.approx(1.0, abs=1e-6)
    per_cell = lisi(x, b)
    assert per_cell.shape == (900,) and np.all((per_cell >= 1 - 1e-9) & (per_cell <= 3 + 1e-9))
    # random batches on structureless data sit in between, much closer to mixed than to separated
    rng = np.random.default_rng(1)
    assert 0.6 < ilisi(rng.normal(size=(600, 10)), rng.integers(0, 3, 600)) < 0.95


def test_lisi_agrees_with_harmonypy():
    hp = pytest.importorskip("harmonypy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)) + 2.0 * np.eye(8)[np.arange(400) % 4]
    b = (np.arange(400) % 4).astype(str)
    ref = hp.compute_lisi(x, pd.DataFrame({"b": b}), ["b"], perplexity=30)[:, 0]
    ours = lisi(x, b, n_neighbors=91, perplexity=30)  # harmonypy: 90 neighbours besides the cell itself
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3)


def test_kmeans_nmi_ari_and_errors():
    y, g = _apart()
    assert kmeans_nmi_ari(y, g) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    rng = np.random.default_rng(0)
    r = kmeans_nmi_ari(rng.normal(size=(600, 5)), g)
    assert r["nmi"] < 0.05 and abs(r["ari"]) < 0.05
    with pytest.raises(DataError, match="at least two groups"):
        ilisi(y, np.zeros(len(g)))
    with pytest.raises(DataError, match="one group per latent row"):
        clisi(y, g[:10])


def test_latent_scores_add_the_knn_scores_with_their_directions():
    y, g = _apart()
    batch = np.random.default_rng(3).integers(0, 2, len(g))
    s = latent_scores(y, batch, g)
    assert {"inv_db", "ch", "asw", "ilisi"} <= set(s["batch"]) and {"clisi", "nmi", "ari"} <= set(s["label"])
    assert s["batch"]["ilisi"] > 0.8 and s["label"]["clisi"] > 0.99 and s["label"]["nmi"] > 0.99
    # unknown labels (-1) are left out of the label scores, as in cluster_scores
    g2 = g.copy()
    g2[:30] = -1
    assert latent_scores(y, batch, g2)["label"]["n_cells"] == len(g) - 30
    assert metric_goal("FE", "batch", "ilisi").startswith("higher") and metric_goal("RE", "batch", "ilisi") \
        .startswith("lower")
    for latent in ("pca", "harmony", "fec"):  # baselines are judged like the batch-free latents
        assert metric_goal(latent, "batch").startswith("lower") and metric_goal(latent, "batch", "asw") \
            .startswith("lower")
    assert all(metric_goal("RE", "label", m).startswith("higher") for m in ("clisi", "nmi", "ari", "asw"))


# ---------------------------------------------------------------------------------------------- classifier
def test_classifier_reports_interval_and_chance():
    rng = np.random.default_rng(0)
    n = 500
    batch = np.arange(n) % 10
    target = np.where(batch < 7, "case", "control")  # majority 70%
    fe = rng.normal(size=(n, 4))
    re = rng.normal(size=(n, 4)) + 3.0 * np.eye(4)[batch % 4] + 3.0 * (batch < 7)[:, None]
    res = mixed_effects_classification(fe, re, target, n_folds=5)
    assert res["protocol"] == "kfold" and res["n_folds"] == 5
    for k in ("fe", "re", "fe+re"):
        lo, hi = res["ci"][k]
        assert lo <= res[k] <= hi and len(res["folds"][k]) == 5
        assert res[k] == pytest.approx(np.mean(res["folds"][k]))
    assert res["chance"] == pytest.approx(0.7, abs=1e-9)  # stratified folds: the majority share in every fold
    assert res["re"] > res["chance"] + 0.2 and abs(res["fe"] - res["chance"]) < 0.12
    one = mixed_effects_classification(fe, re, target, train_idx=np.arange(300), test_idx=np.arange(300, n))
    assert one["protocol"] == "train_test" and one["ci"] is None and one["n_test"] == 200
    assert one["chance"] == pytest.approx(np.mean(target[300:] == "case"))
    held = mixed_effects_classification(fe, re, target, batch=batch, held_out_batches=True, n_folds=5)
    assert held["protocol"] == "held_out_batches" and len(held["chance_folds"]) == 5
    with pytest.raises(DataError, match="one class"):
        mixed_effects_classification(fe, re, np.full(n, "a"))


# ---------------------------------------------------------------------------------------------- baselines
@pytest.fixture(scope="module")
def table(sample_model):
    pytest.importorskip("harmonypy")
    model, _ = sample_model
    return evaluate_model(model, "test", target="protocol", baselines=("pca", "harmony"))


def test_evaluate_model_scores_pca_and_harmony_on_the_same_cells(sample_model, table):
    from napari_scmedal.metrics import baseline_latents, pca_latent

    model, _ = sample_model
    assert list(table["latents"]) == ["fe", "fec", "re", "pca", "harmony"] and table["baselines"] == ["pca",
                                                                                                       "harmony"]
    te = model._split_idx["test"]
    # PCA of exactly the model's input (recipe genes, log1p-normalised), all cells, scored on the test split
    pcs = pca_latent(model._prepared.X_log, 50)
    assert pcs.shape == (model.n_cells(), 50)
    ref = latent_scores(pcs[te], model._adata.obs["batch"].astype(str).to_numpy()[te],
                        model._adata.obs["cell_line"].astype(str).to_numpy()[te])
    assert table["latents"]["pca"] == ref
    # Harmony mixes the batches that PCA keeps apart, and keeps the cell lines apart
    pca, har = table["latents"]["pca"], table["latents"]["harmony"]
    assert har["batch"]["ilisi"] > pca["batch"]["ilisi"] + 0.1 and har["batch"]["asw"] < pca["batch"]["asw"]
    assert har["label"]["nmi"] > 0.5
    again = baseline_latents(model, kinds="harmony", n_comps=10)
    assert set(again) == {"harmony"} and again["harmony"].shape == (model.n_cells(), 10)
    # from the file on disk (read in blocks, as for backed data): the same PCA
    from napari_scmedal.datasets import cellbench_path

    on_disk = baseline_latents(model, adata=str(cellbench_path()), kinds="pca", n_comps=10)["pca"]
    np.testing.assert_allclose(on_disk, baseline_latents(model, kinds="pca", n_comps=10)["pca"], atol=1e-3)
    with pytest.raises(DataError, match="unknown baseline"):
        evaluate_model(model, baselines=("scvi",))


def test_missing_harmonypy_names_the_extra(sample_model, monkeypatch):
    from napari_scmedal.metrics import baseline_latents

    model, _ = sample_model
    monkeypatch.setitem(sys.modules, "harmonypy", None)  # import harmonypy -> ImportError
    with pytest.raises(DataError, match=r"napari-scmedal\[harmony\]"):
        evaluate_model(model, baselines=("pca", "harmony"))
    assert set(baseline_latents(model, kinds=("pca",), n_comps=5)) == {"pca"}  # PCA alone still works


def test_metrics_rows_flatten_everything(table):
    rows = pd.DataFrame(metrics_rows(table))
    assert {"pca", "harmony", "fe", "re", "fe+re"} <= set(rows["latent"])
    il = rows[(rows["metric"] == "ilisi")]
    assert set(il["grouping"]) == {"batch"} and set(il["latent"]) == {"fe", "fec", "re", "pca", "harmony"}
    assert il.set_index("latent").loc["re", "better"].startswith("lower")
    cl = rows[rows["grouping"] == "classify:protocol"]
    assert len(cl) == 3 and (cl["ci_low"] <= cl["value"]).all() and (cl["value"] <= cl["ci_high"]).all()
    assert cl["chance"].nunique() == 1 and 0 < cl["chance"].iloc[0] < 1
    assert cl["metric"].iloc[0] == "accuracy (kfold)" and (cl["n_folds"] == 5).all()


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_evaluate_with_baselines(sample_model, tmp_path, capsys, monkeypatch):
    pytest.importorskip("harmonypy")
    from napari_scmedal.cli import main
    from napari_scmedal.datasets import cellbench_path

    model, _ = sample_model
    path = model.save(tmp_path / "m.safetensors")
    out = tmp_path / "ev"
    assert main(["evaluate", str(path), str(cellbench_path()), "--baselines", "pca,harmony", "--target", "protocol",
                 "--out", str(out), "-q"]) == 0
    tab = json.loads((out / "metrics.json").read_text())
    assert set(tab["latents"]) == {"fe", "fec", "re", "pca", "harmony"}
    ref = evaluate_model(model, "test", baselines=("pca",))
    assert tab["latents"]["pca"]["batch"]["ilisi"] == pytest.approx(ref["latents"]["pca"]["batch"]["ilisi"])
    csv = pd.read_csv(out / "metrics.csv")
    assert {"better", "ci_low", "ci_high", "chance"} <= set(csv.columns)
    assert {"pca", "harmony"} <= set(csv["latent"]) and {"ilisi", "clisi", "nmi", "ari"} <= set(csv["metric"])
    # harmonypy missing: a clear error before anything is loaded, naming the extra
    monkeypatch.setitem(sys.modules, "harmonypy", None)
    capsys.readouterr()
    assert main(["evaluate", str(path), str(cellbench_path()), "--baselines", "harmony", "--out",
                 str(tmp_path / "ev2")]) == 1
    assert "napari-scmedal[harmony]" in capsys.readouterr().err
    assert main(["evaluate", str(path), str(cellbench_path()), "--baselines", "umap", "--out",
                 str(tmp_path / "ev3")]) == 1


# ---------------------------------------------------------------------------------------------- widget
@pytest.mark.gui
def test_model_widget_compares_with_pca_and_harmony(make_napari_viewer, qtbot, sample_model):
    pytest.importorskip("napari")
    pytest.importorskip("harmonypy")
    model, _ = sample_model
    viewer = make_napari_viewer()
    (cells,) = viewer.open_sample("napari-scmedal", "cellbench")
    _, w = viewer.window.add_plugin_dock_widget("napari-scmedal", "scMEDAL model")
    assert not w.baselines_check.isChecked() and "harmony" in w.baselines_check.toolTip().lower()
    w.baselines_check.setChecked(True)  # no model yet: nothing computed
    assert not w.busy and w.settings()["baselines"] is True
    w.set_model(model, "CellBench sample")
    qtbot.waitUntil(lambda: not w.busy and w.metrics is not None, timeout=300_000)
    assert w.last_error is None
    t = w.metrics_table
    header = [t.horizontalHeaderItem(j).text() for j in range(t.columnCount())]
    assert header[:6] == ["latent", "by", "better", "1/DB", "CH", "ASW"]
    assert {"iLISI", "cLISI", "NMI", "ARI"} <= set(header)
    rows = {(t.item(i, 0).text(), t.item(i, 1).text()): i for i in range(t.rowCount())}
    assert {("PCA", "batch"), ("Harmony", "batch"), ("PCA", "label"), ("Harmony", "label"), ("FE", "batch")} \
        <= set(rows)
    ref = evaluate_model(model, "test", adata=cells.metadata["adata"], baselines=("pca", "harmony"))
    i = rows[("Harmony", "batch")]
    assert float(t.item(i, header.index("iLISI")).text()) == pytest.approx(ref["latents"]["harmony"]["batch"]["ilisi"],
                                                                          abs=1e-3)
    assert t.item(i, 2).text() == "lower (batch removed)" and "iLISI: higher" in t.item(i, 2).toolTip()
    assert "HIGHER = batches mixed" in t.horizontalHeaderItem(header.index("iLISI")).toolTip()
    # unchecking recomputes without the baselines
    w.baselines_check.setChecked(False)
    qtbot.waitUntil(lambda: not w.busy and "pca" not in w.metrics["latents"], timeout=300_000)
    assert t.rowCount() == 6
