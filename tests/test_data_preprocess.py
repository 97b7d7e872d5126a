"""Preprocessing equals scanpy step by step on the real sample; scaling; splits."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from napari_scmedal.data import prepare_training, stratified_split
from napari_scmedal.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def td_cellbench(_cellbench_cached):
    original = _cellbench_cached.copy()
    td = prepare_training(_cellbench_cached, "batch", "cell_line")  # default n_genes=2916
    return td, original, _cellbench_cached


def test_input_not_modified(td_cellbench):
    td, original, used = td_cellbench
    assert (used.X != original.X).nnz == 0
    assert list(used.var.columns) == list(original.var.columns)
    assert list(used.obs.columns) == list(original.obs.columns)


def test_matches_scanpy_step_by_step(td_cellbench):
    td, original, _ = td_cellbench
    ref = original.copy()
    sc.pp.filter_cells(ref, min_genes=10)
    sc.pp.filter_genes(ref, min_cells=3)
    assert list(td.adata.obs_names) == list(ref.obs_names)
    assert list(td.adata.var_names) == list(ref.var_names)
    assert td.recipe.normalization_genes == list(ref.var_names)
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, flavor="seurat", n_top_genes=2916)
    hv = ref.var["highly_variable"].to_numpy()
    assert td.recipe.genes == list(ref.var_names[hv])
    assert td.recipe.n_genes == 2916 and len(set(td.recipe.genes)) == 2916
    expected = ref.X[:, hv].toarray().astype(np.float32)
    # the model-space values come from Recipe.log_block (shared with recipe.transform and the out-of-core
    # reader): equal to scanpy's arithmetic within one float32 rounding, and to recipe.transform exactly
    np.testing.assert_allclose(td.prepared.X_log, expected, rtol=3e-7, atol=0)
    np.testing.assert_array_equal(td.recipe.transform(td.adata).X_log, td.prepared.X_log)
    # and scanpy's normalisation itself, checked independently with numpy on the raw counts
    counts = original[td.adata.obs_names, td.adata.var_names].X.toarray().astype(np.float64)
    manual = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[:, hv]
    np.testing.assert_allclose(td.prepared.X_log, manual, rtol=1e-5, atol=1e-5)


def test_scaling_uses_training_split_only(td_cellbench):
    td, _, _ = td_cellbench
    r, p, tr = td.recipe, td.prepared, td.splits["train"]
    assert r.scale_min == pytest.approx(float(p.X_log[tr].min()))
    assert r.scale_max == pytest.approx(float(p.X_log[tr].max()))
    assert p.X.dtype == np.float32 and p.X_log.dtype == np.float32
    assert p.X[tr].min() == pytest.approx(0.0, abs=1e-7) and p.X[tr].max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(r.unscale(p.X), p.X_log, atol=1e-5)
    np.testing.assert_allclose(r.scale(p.X_log), p.X, atol=1e-7)


def test_scaling_ignores_val_and_test_cells():
    a = make_synthetic(n_cells=300, n_genes=80, seed=5)
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))  # log data: no normalisation; all genes kept
    base = prepare_training(a, "batch", "cell_type", n_genes=80)
    test_cell, train_cell = base.splits["test"][0], base.splits["train"][0]
    X = a.X.toarray()
    X[test_cell, 0] = 20.0  # an extreme value in a test cell
    a.X = sp.csr_matrix(X)
    moved_test = prepare_training(a, "batch", "cell_type", n_genes=80)
    np.testing.assert_array_equal(moved_test.splits["test"], base.splits["test"])
    assert moved_test.recipe.scale_max == base.recipe.scale_max
    assert moved_test.prepared.X[test_cell, 0] > 1.0  # outside [0, 1], not rescaled
    X[test_cell, 0] = 0.0
    X[train_cell, 0] = 20.0  # the same value in a training cell does set the range
    a.X = sp.csr_matrix(X)
    assert prepare_training(a, "batch", "cell_type", n_genes=80).recipe.scale_max == pytest.approx(20.0)


def test_one_hot_over_sorted_categories(td_cellbench):
    td, original, _ = td_cellbench
    r, p = td.recipe, td.prepared
    assert r.batches == sorted(original.obs["batch"].astype(str).unique())
    assert r.labels == ["A549", "H1975", "H2228", "H838", "HCC827"]
    obs = original.obs.loc[p.obs_names]
    np.testing.assert_array_equal(np.asarray(r.batches)[p.batch], obs["batch"].astype(str).to_numpy())
    np.testing.assert_array_equal(np.asarray(r.labels)[p.label], obs["cell_line"].astype(str).to_numpy())
    assert p.batch.dtype == np.int64 and p.label.dtype == np.int64
    assert p.batch_onehot.shape == (p.n_obs, 5) and p.batch_onehot.dtype == np.float32
    np.testing.assert_array_equal(p.batch_onehot.argmax(1), p.batch)
    np.testing.assert_array_equal(p.batch_onehot.sum(1), 1.0)
    np.testing.assert_array_equal(p.label_onehot.argmax(1), p.label)


def test_splits_stratified_on_batch_and_label(td_cellbench):
    td, _, _ = td_cellbench
    s, p = td.splits, td.prepared
    n = p.n_obs
    allidx = np.concatenate([s["train"], s["val"], s["test"]])
    assert len(allidx) == n and len(np.unique(allidx)) == n  # a partition
    assert len(s["train"]) / n == pytest.approx(0.6, abs=0.02)
    assert len(s["val"]) / n == pytest.approx(0.2, abs=0.02)
    assert len(s["test"]) / n == pytest.approx(0.2, abs=0.02)
    strata = p.batch * 10 + p.label
    for k in np.unique(strata):
        m = strata == k
        tot = m.sum()
        n_tr = m[s["train"]].sum()
        assert n_tr >= 1
        assert n_tr / tot == pytest.approx(0.6, abs=1.0 / tot + 0.01)
    assert set(p.batch[s["train"]]) == set(range(5))  # every batch in training
    assert td.split("val").n_obs == len(s["val"])


def test_splits_deterministic_and_seeded():
    rng = np.random.default_rng(0)
    batch = rng.choice(["a", "b", "c"], size=500)
    label = rng.choice(["x", "y"], size=500)
    s1 = stratified_split(batch, label, seed=42)
    s2 = stratified_split(batch, label, seed=42)
    s3 = stratified_split(batch, label, seed=7)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(s1[k], s2[k])
    assert not np.array_equal(s1["train"], s3["train"])


def test_split_batch_only_and_tiny_strata():
    batch = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 1 + ["d"] * 100)
    s = stratified_split(batch, None, seed=0)
    for b, n_tr in [("a", 3), ("b", 1), ("c", 1), ("d", 60)]:
        assert (batch[s["train"]] == b).sum() == n_tr
    assert (batch[s["val"]] == "d").sum() == 20 and (batch[s["test"]] == "d").sum() == 20


def test_prepare_without_labels_and_on_dense_layer():
    a = make_synthetic(n_cells=300, n_genes=120, seed=3)
    a.layers["counts"] = a.X.toarray()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    td = prepare_training(a, "batch", None, n_genes=50, layer="counts")
    assert td.recipe.input_kind == "counts" and td.recipe.layer == "counts"
    assert td.recipe.labels is None and td.prepared.label is None and td.prepared.label_onehot is None
    td_x = prepare_training(a, "batch", None, n_genes=50)
    assert td_x.recipe.input_kind == "lognorm" and td_x.recipe.target_sum is None


def test_lognorm_input_is_not_normalised_twice(td_cellbench):
    td, original, _ = td_cellbench
    logged = original.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    td_log = prepare_training(logged, "batch", "cell_line")
    assert td_log.recipe.input_kind == "lognorm"
    # the sample loses no gene to the filter, so both routes see the same library sizes
    assert td_log.recipe.genes == td.recipe.genes
    np.testing.assert_allclose(td_log.prepared.X_log, td.prepared.X_log, atol=1e-5)
    np.testing.assert_array_equal(td_log.splits["train"], td.splits["train"])


def test_log_normalize_equals_scanpy_and_the_gui_uses_it():
    """The one normalisation (data.normalize.log_normalize) equals scanpy's normalize_total(1e4) + log1p on
    real counts, dense and sparse, keeps empty cells at 0, and the GUI's display normalisation is the same
    function (no third copy)."""
    import anndata as ad

    from napari_scmedal._napari._layers import log_normalised
    from napari_scmedal.data.normalize import log_normalize
    from napari_scmedal.datasets import cellbench

    counts = sp.csr_matrix(cellbench().X[:300], dtype=np.float32)
    counts = sp.vstack([counts, sp.csr_matrix((1, counts.shape[1]), dtype=np.float32)]).tocsr()  # an empty cell
    ref = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    for X in (counts, counts.toarray()):
        got = log_normalize(X)
        assert sp.issparse(got) == sp.issparse(X)
        dense = got.toarray() if sp.issparse(got) else got
        np.testing.assert_allclose(dense, ref.X.toarray(), rtol=1e-5, atol=1e-6)
        assert not dense[-1].any()
        gui = log_normalised(X)
        np.testing.assert_array_equal(gui.toarray() if sp.issparse(gui) else gui, dense)
