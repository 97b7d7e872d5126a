"""Recipe: JSON round trip, re-application to new data, gene alignment and mismatch errors."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from napari_scmedal.data import Recipe, prepare_training
from napari_scmedal.data.synthetic import make_synthetic
from napari_scmedal.errors import DataError, ModelFileError, RecipeMismatchError


@pytest.fixture(scope="module")
def trained(_cellbench_cached):
    a = _cellbench_cached.copy()
    return prepare_training(a, "batch", "cell_line", n_genes=500), a


def test_round_trip_is_json_safe(trained):
    td, _ = trained
    d = td.recipe.to_dict()
    text = json.dumps(d)  # would raise on numpy scalars/arrays
    back = Recipe.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.genes == td.recipe.genes and back.batches == td.recipe.batches
    assert back.scale_min == td.recipe.scale_min and back.scale_max == td.recipe.scale_max
    assert back.n_genes == 500 and back.input_kind == "counts" and back.target_sum == 1e4
    p1, p2 = td.recipe.transform(td.adata), back.transform(td.adata)
    np.testing.assert_array_equal(p1.X, p2.X)


def test_from_dict_rejects_foreign_or_incomplete():
    with pytest.raises(ModelFileError, match="not a napari-scmedal recipe"):
        Recipe.from_dict({"genes": ["a"]})
    with pytest.raises(ModelFileError, match=r"lacks \['scale_min', 'scale_max'\]"):
        Recipe.from_dict({"format": "napari-scmedal-recipe", "version": 1, "genes": [], "batch_key": "b",
                          "label_key": None, "batches": [], "labels": None, "input_kind": "counts",
                          "layer": None, "target_sum": 1e4})
    with pytest.raises(ModelFileError, match="newer than this napari-scmedal"):
        Recipe.from_dict({"format": "napari-scmedal-recipe", "version": 99})


def test_transform_reproduces_training_preparation(trained):
    td, original = trained
    p = td.recipe.transform(td.adata)
    np.testing.assert_allclose(p.X_log, td.prepared.X_log, atol=2e-6)
    np.testing.assert_allclose(p.X, td.prepared.X, atol=2e-6)
    np.testing.assert_array_equal(p.batch, td.prepared.batch)
    np.testing.assert_array_equal(p.label, td.prepared.label)
    np.testing.assert_array_equal(p.batch_onehot, td.prepared.batch_onehot)
    assert list(p.obs_names) == list(td.prepared.obs_names)
    # own normalisation code in transform agrees with scanpy on the whole original object too
    ref = original.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    q = td.recipe.transform(original)
    np.testing.assert_allclose(q.X_log, ref[:, td.recipe.genes].X.toarray(), rtol=1e-5, atol=1e-5)


def test_shuffled_and_extra_genes_are_aligned(trained):
    td, original = trained
    rng = np.random.default_rng(0)
    shuffled = original[:, rng.permutation(original.n_vars)].copy()
    extra = sc.AnnData(X=sp.csr_matrix(rng.poisson(1.0, size=(shuffled.n_obs, 7)).astype(np.float32)),
                       obs=shuffled.obs[[]], var=pd.DataFrame(index=[f"EXTRA{i}" for i in range(7)]))
    bigger = ad.concat([shuffled, extra], axis=1, merge="first")
    bigger.obs = shuffled.obs.copy()
    p_ref = td.recipe.transform(original)
    p = td.recipe.transform(bigger)
    assert p.X.shape == (original.n_obs, 500)
    # extra genes are neither model genes nor normalisation genes, so nothing changes
    np.testing.assert_allclose(p.X, p_ref.X, atol=1e-6)


def test_missing_gene_error_names_count_and_genes(trained):
    td, original = trained
    drop = td.recipe.genes[:3]
    sub = original[:, ~original.var_names.isin(drop)].copy()
    with pytest.raises(RecipeMismatchError) as e:
        td.recipe.transform(sub)
    msg = str(e.value)
    assert "3 of the model's 500 genes are missing" in msg
    assert all(repr(g) in msg for g in drop) and "same gene identifiers" in msg


def test_missing_genes_list_is_truncated(trained):
    td, original = trained
    sub = original[:, ~original.var_names.isin(td.recipe.genes[:40])].copy()
    with pytest.raises(RecipeMismatchError, match=r"40 of the model's 500 genes.*\.\.\. \(35 more\)"):
        td.recipe.transform(sub)


def test_unknown_batch_error(trained):
    td, original = trained
    new = original.copy()
    b = new.obs["batch"].astype(str).to_numpy().copy()
    b[:4] = "NewRun"
    new.obs["batch"] = b
    with pytest.raises(RecipeMismatchError) as e:
        td.recipe.transform(new)
    msg = str(e.value)
    assert "1 batch in obs['batch'] (4 cells) were not seen in training: 'NewRun'" in msg
    assert "The model knows 5 batches" in msg and "retrain" in msg
    assert td.recipe.transform(new[4:].copy()).n_obs == new.n_obs - 4


def test_missing_batch_key_at_transform(trained):
    td, original = trained
    new = original.copy()
    del new.obs["batch"]
    with pytest.raises(RecipeMismatchError, match=r"batch key 'batch' is not a column.*'cell_line'"):
        td.recipe.transform(new)


def test_labels_optional_unknown_minus_one(trained):
    td, original = trained
    new = original[:20].copy()
    lab = new.obs["cell_line"].astype(str).to_numpy().copy()
    lab[0] = "H9999"
    new.obs["cell_line"] = lab
    p = td.recipe.transform(new)
    assert p.label[0] == -1 and np.all(p.label[1:] >= 0)
    assert p.label_onehot[0].sum() == 0 and np.all(p.label_onehot[1:].sum(1) == 1)
    with pytest.raises(RecipeMismatchError, match=r"1 cells have labels.*'H9999'.*require_labels=False"):
        td.recipe.transform(new, require_labels=True)
    del new.obs["cell_line"]
    assert td.recipe.transform(new).label is None
    with pytest.raises(RecipeMismatchError, match="label key 'cell_line' is not a column"):
        td.recipe.transform(new, require_labels=True)


def test_wrong_kind_of_data_at_transform(trained):
    td, original = trained
    logged = original.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    with pytest.raises(RecipeMismatchError, match="trained on raw counts.*non-integer values"):
        td.recipe.transform(logged)
    td_log = prepare_training(logged, "batch", "cell_line", n_genes=500)
    with pytest.raises(RecipeMismatchError, match=r"trained on log-normalised data.*only integers.*normalize_total"):
        td_log.recipe.transform(original)
    np.testing.assert_allclose(td_log.recipe.transform(logged).X_log,
                               logged[:, td_log.recipe.genes].X.toarray(), atol=1e-6)


def test_layer_at_transform():
    a = make_synthetic(n_cells=200, n_genes=80, seed=2)
    a.layers["counts"] = a.X.copy()
    a.X = a.X.log1p()
    td = prepare_training(a, "batch", "cell_type", n_genes=40, layer="counts")
    new = a.copy()
    del new.layers["counts"]
    with pytest.raises(RecipeMismatchError, match=r"Layer 'counts' not found.*trained on layer 'counts'"):
        td.recipe.transform(new)
    new.X = a.layers["counts"].copy()
    np.testing.assert_allclose(td.recipe.transform(new, layer=None).X, td.recipe.transform(a).X)


def test_duplicate_genes_at_transform(trained):
    td, original = trained
    new = original.copy()
    names = new.var_names.to_numpy().copy()
    names[1] = names[0]
    new.var_names = names
    with pytest.raises(DataError, match="occur more than once.*var_names_make_unique"):
        td.recipe.transform(new)
