"""Metrics on seeded data with a known structure."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scmedal.errors import DataError
from napari_scmedal.metrics import cluster_scores, latent_scores, mixed_effects_classification


def _blobs(n=300, k=3, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    g = np.arange(n) % k
    centres = rng.normal(size=(k, 5)) * sep
    return centres[g] + rng.normal(size=(n, 5)), g


def test_scores_separate_structured_from_random_groupings():
    x, g = _blobs()
    good = cluster_scores(x, g)
    rand = cluster_scores(x, np.random.default_rng(1).permutation(g))
    assert good["asw"] > 0.5 and abs(rand["asw"]) < 0.05
    assert good["inv_db"] > 2 * rand["inv_db"] and good["ch"] > 10 * rand["ch"]
    assert good["n_cells"] == 300 and good["n_groups"] == 3


def test_subsample_and_seed():
    x, g = _blobs(n=600)
    a = cluster_scores(x, g, subsample=200, seed=0)
    b = cluster_scores(x, g, subsample=200, seed=0)
    c = cluster_scores(x, g, subsample=200, seed=1)
    assert a == b and a["n_cells"] == 200 and a["asw"] != c["asw"]


def test_latent_scores_by_batch_and_label():
    x, lab = _blobs()
    batch = np.random.default_rng(2).integers(0, 2, size=len(lab))
    s = latent_scores(x, batch, lab)
    assert s["label"]["asw"] > 0.5 and abs(s["batch"]["asw"]) < 0.05
    assert latent_scores(x, batch)["label"] is None


def test_unknown_labels_are_ignored_and_errors_are_clear():
    x, g = _blobs()
    g2 = g.copy()
    g2[:10] = -1
    assert cluster_scores(x, g2)["n_cells"] == 290
    with pytest.raises(DataError, match="at least two categories"):
        cluster_scores(x, np.zeros(len(g)))
    with pytest.raises(DataError, match="one group per latent row"):
        cluster_scores(x, g[:10])


def test_mixed_effects_classification_uses_both_latents():
    """FE carries the cell type, RE the batch; a batch-level target is only predictable from RE."""
    rng = np.random.default_rng(0)
    n = 400
    batch = np.arange(n) % 8
    target = np.where(batch < 4, "case", "control")  # batch-level target
    fe = rng.normal(size=(n, 6))  # no batch information
    re = np.eye(8)[batch] * 3 + rng.normal(size=(n, 8)) * 0.3
    idx = rng.permutation(n)
    res = mixed_effects_classification(fe, re, target, train_idx=idx[:300], test_idx=idx[300:])
    assert res["re"] > 0.95 and res["fe+re"] > 0.9 and res["fe"] < 0.7
    held = mixed_effects_classification(fe, re, target, batch=batch, held_out_batches=True, n_folds=4)
    assert held["protocol"] == "held_out_batches" and held["n_folds"] == 4
    # unseen batches: the RE one-hot pattern of a new batch says nothing about its group
    assert held["re"] < res["re"]
    with pytest.raises(DataError, match="batch="):
        mixed_effects_classification(fe, re, target, held_out_batches=True)


def test_metric_goal_says_which_direction_is_better():
    from napari_scmedal.metrics import metric_goal

    assert metric_goal("FE", "batch").startswith("lower") and metric_goal("fec", "batch").startswith("lower")
    assert metric_goal("RE", "batch").startswith("higher") and metric_goal("FE", "label").startswith("higher")
