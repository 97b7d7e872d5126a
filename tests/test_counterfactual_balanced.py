"""The default "balanced" counterfactual (napari_scmedal.counterfactual, issue 11): its arithmetic, the
data-chosen multiplicative share, the extrapolation flag for cell types a batch lacks, and the model file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import napari_scmedal as sm
from napari_scmedal import counterfactual as C
from napari_scmedal.data.synthetic import make_synthetic
from napari_scmedal.errors import ExtrapolationWarning, ModelFileError

SMALL = dict(preset="quick", hidden=[64, 16], latent=8, batch_size=16, threads=1, lr=3e-3, train_fec=False)


def _stats(n_cells=(30, 30), seed=0):
    """Two batches x two groups with known means."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.1, 3.0, size=(2, 2, 6)).astype(np.float32)
    log_means = np.log1p(means).astype(np.float32)
    counts = np.array([list(n_cells), list(n_cells)], dtype=np.int64)
    return means, log_means, counts


def test_changes_own_group_is_additive_and_trusted_by_its_evidence():
    means, log_means, counts = _stats((30, 30))
    ch = C.changes(means, log_means, counts, 0, 1)
    np.testing.assert_allclose(ch["own"][:2], log_means[1] - log_means[0], rtol=1e-6)
    np.testing.assert_allclose(ch["weight"][:2], 30 / (30 + C.SHRINK_CELLS))
    np.testing.assert_allclose(ch["shift"], (log_means[1] - log_means[0]).mean(0), rtol=1e-6)
    ratio = np.log(means[1].mean(0) + C.PSEUDO) - np.log(means[0].mean(0) + C.PSEUDO)
    np.testing.assert_allclose(ch["log_ratio"], ratio, rtol=1e-5)
    assert not ch["extrapolated"][:2].any() and ch["extrapolated"][-1]  # the row of cells of no group
    # a group absent from the target batch borrows the other groups' change
    counts[1, 1] = 0
    ch = C.changes(means, log_means, counts, 0, 1)
    assert ch["extrapolated"][1] and ch["weight"][1] == 0
    np.testing.assert_allclose(ch["shift"], log_means[1, 0] - log_means[0, 0], rtol=1e-6)
    # the own batch: no change at all
    same = C.changes(means, log_means, counts, 1, 1)
    assert not same["weight"].any() and not same["shift"].any() and not same["extrapolated"].any()


def test_the_borrowed_change_follows_the_level_of_the_group():
    # three groups seen in both batches whose change grows with their level in the source batch
    G = 50
    rng = np.random.default_rng(3)
    level = np.stack([rng.uniform(0, 1, G) + off for off in (0.0, 1.0, 2.0, 3.0)])  # 4 groups
    change = 0.2 + 0.5 * (level - level[:3].mean(0))  # exact: slope 0.5 on the level
    log_means = np.stack([level, level + change]).astype(np.float32)
    means = np.expm1(log_means).astype(np.float32)
    counts = np.array([[50, 50, 50, 50], [50, 50, 50, 0]])  # group 3 absent from the target batch
    ch = C.changes(means, log_means, counts, 0, 1)
    assert ch["beta"] == pytest.approx(0.5, rel=1e-4) and ch["extrapolated"][3]
    borrowed = ch["shift"] + ch["beta"] * ch["level"][3]
    np.testing.assert_allclose(borrowed, change[3], atol=1e-4)  # the absent group's change, predicted
    # the piecewise linear level term (what apply_change uses) finds the line too (up to its small ridge)
    np.testing.assert_allclose(ch["shift"] + ch["level_change"][3], change[3], atol=0.03)


def test_the_level_term_follows_a_curved_level_dependence():
    # dropout-like: the batch takes more from low genes, saturating (not a line); group 4 is absent
    G = 400
    rng = np.random.default_rng(5)
    level = np.stack([rng.uniform(0, 3, G) + off for off in (0.0, 0.3, 0.6, 0.9, 1.2)])
    curve = -1.2 * np.exp(-level)
    log_means = np.stack([level, level + 0.1 + curve]).astype(np.float32)
    counts = np.array([[50] * 5, [50, 50, 50, 50, 0]])
    ch = C.changes(np.expm1(log_means), log_means, counts, 0, 1)
    truth = 0.1 + curve[4]
    err_line = np.abs(ch["shift"] + ch["beta"] * ch["level"][4] - truth).mean()
    err_curve = np.abs(ch["shift"] + ch["level_change"][4] - truth).mean()
    assert err_curve < 0.5 * err_line, (err_curve, err_line)


def test_the_base_is_recentred_on_the_groups_observed_source_mean():
    means, log_means, counts = _stats((30, 30))
    counts[0, 1] = 3  # too few cells of group 1 in the source batch: not recentred
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 2, size=(9, 6))
    groups = np.array([0, 0, 0, 0, 1, 1, -1, -1, 0])
    ch = C.changes(means, log_means, counts, 0, 1)
    out = C.recentre(base, ch, groups)
    g0 = groups == 0
    lam = g0.sum() / (g0.sum() + C.RECENTRE_CELLS)
    np.testing.assert_allclose(out[g0].mean(0), base[g0].mean(0) + lam * (log_means[0, 0] - base[g0].mean(0)))
    np.testing.assert_allclose(out[g0] - out[g0].mean(0), base[g0] - base[g0].mean(0), atol=1e-12)  # deviations kept
    np.testing.assert_array_equal(out[~g0], base[~g0])
    # with the reconstructions' training means the correction is exact and does not depend on the other cells
    recon = log_means - 0.3
    ch_t = C.changes(means, log_means, counts, 0, 1, recon_means=recon)
    one = C.recentre(base[:1], ch_t, groups[:1])
    np.testing.assert_allclose(one, base[:1] + 0.3)
    np.testing.assert_allclose(C.recentre(base, ch_t, groups)[:1], one)
    # the own batch: the RE reconstruction exactly
    same = C.changes(means, log_means, counts, 0, 0, recon_means=recon)
    np.testing.assert_array_equal(C.apply_change(base, same, groups, 0.5), base.astype(np.float32))


def test_a_zero_change_returns_the_base_exactly_and_groups_index_their_rows():
    means, log_means, counts = _stats()
    base = np.array([[-0.2, 0.0, 0.5, 1.0, 2.0, 3.0]] * 3, dtype=np.float32)
    same = C.changes(means, log_means, counts, 0, 0)
    for alpha in (0.0, 0.5, 1.0):
        np.testing.assert_array_equal(C.apply_change(base, same, np.array([0, 1, -1]), alpha), base)
    ch = C.changes(means, log_means, counts, 0, 1)
    out = C.apply_change(base, ch, np.array([0, 1, -1]), alpha=0.0)
    w = ch["weight"][0]
    borrowed = ch["shift"] + ch["level_change"][0]
    # one cell of group 0: recentred a 1 / (1 + RECENTRE_CELLS) of the way to the group's observed source mean
    b0 = base[0] + (log_means[0, 0] - base[0]) / (1 + C.RECENTRE_CELLS)
    np.testing.assert_allclose(out[0], b0 + w * ch["own"][0] + (1 - w) * borrowed, rtol=1e-5)
    np.testing.assert_allclose(out[2], base[2] + ch["shift"], rtol=1e-5)  # no group: balanced change


@pytest.mark.parametrize("kind, expected", [("additive", 0.0), ("multiplicative", 1.0)])
def test_the_multiplicative_share_is_chosen_by_the_data(kind, expected):
    # 3 batches x 4 groups of cells whose expression in another batch follows one of the two models
    rng = np.random.default_rng(1)
    n_b, n_g, G = 3, 4, 40
    level = rng.gamma(1.0, 2.0, size=(n_g, G))
    effect = rng.normal(0, 0.7, size=(n_b, G))
    blocks, samples = [], {}
    for b in range(n_b):
        for g in range(n_g):
            # expression (counts per 10,000) with cell-to-cell noise, the batch scaling it or shifting its logs
            expr = level[g] * rng.lognormal(0.0, 0.5, size=(60, G))
            x = np.log1p(expr * (np.exp(effect[b]) if kind == "multiplicative" else 1.0))
            if kind == "additive":
                x = x + effect[b] - effect[b].min()
            blocks.append((x, np.full(60, b), np.full(60, g)))
    means, log_means, cnt = C.group_stats(blocks, n_b, n_g, G, samples)
    assert cnt.min() == 60 and all(len(v) == 60 for v in samples.values())
    alpha, err = C.choose_alpha(samples, means, log_means, cnt)
    assert alpha == expected, err


# ---------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def holdout_model():
    """Trained without the cells of type0 in batch1: the case of a cell type one batch lacks."""
    a = make_synthetic(n_cells=900, n_genes=300, n_batches=3, n_labels=3, seed=0)
    keep = ~((a.obs["cell_type"] == "type0") & (a.obs["batch"] == "batch1")).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.ScMEDAL(a[keep].copy(), batch_key="batch", label_key="cell_type", n_genes=250, seed=0, **SMALL)
        model.train(max_epochs=25, patience=5)
    return model, a


def test_seen_types_land_on_the_target_batch_mean(holdout_model):
    model, a = holdout_model
    lab = model._adata.obs["cell_type"].to_numpy()
    bat = model._adata.obs["batch"].to_numpy()
    x = model._prepared.X_log
    src = (lab == "type1") & (bat == "batch0")
    cf = model.get_counterfactual_expression("batch2")[src].mean(0)
    target = x[(lab == "type1") & (bat == "batch2")].mean(0)
    before = np.abs(x[src].mean(0) - target).mean()
    # the own change is the observed difference of the group means (trusted by n / (n + 20)), applied to
    # the RE reconstruction: the counterfactual mean lands far closer to the target mean than the source
    assert np.abs(cf - target).mean() < 0.35 * before
    assert float(model._anchors()["alpha"][0]) in C.ALPHAS


def test_a_type_absent_from_the_target_batch_is_flagged_and_warned(holdout_model):
    model, a = holdout_model
    with pytest.warns(ExtrapolationWarning, match="extrapolated"):
        model.get_counterfactual_expression("batch1", adata=a)
    flags = model.counterfactual_extrapolated("batch1", adata=a)
    lab, bat = a.obs["cell_type"].to_numpy(), a.obs["batch"].to_numpy()
    np.testing.assert_array_equal(flags, (lab == "type0") & (bat != "batch1"))
    # type0 cells of batch1 (never seen in training) are extrapolated into any other batch too
    np.testing.assert_array_equal(model.counterfactual_extrapolated("batch2", adata=a),
                                  (lab == "type0") & (bat == "batch1"))
    # without labels in the data, the FE latent assigns the type (batch-invariant neighbours)
    b = a.copy()
    del b.obs["cell_type"]
    flags_fe = model.counterfactual_extrapolated("batch1", adata=b)
    assert (flags_fe == flags).mean() > 0.9


def test_statistics_round_trip_and_damaged_or_old_files(holdout_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, a = holdout_model
    path = model.save(tmp_path / "m.safetensors")
    back = sm.ScMEDAL.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        np.testing.assert_allclose(back.get_counterfactual_expression("batch2", adata=a),
                                   model.get_counterfactual_expression("batch2", adata=a), atol=1e-5)
    with safe_open(str(path), "pt") as f:
        md, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bad = dict(tensors)
    bad["cf.alpha"] = bad["cf.alpha"] + 5.0
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=md)
    with pytest.raises(ModelFileError, match="counterfactual statistics"):
        sm.ScMEDAL.load(tmp_path / "bad.safetensors")
    # a file from before the balanced method: it loads and the default falls back to "matched"
    old = {k: v for k, v in tensors.items() if k not in ("cf.group", "cf.mean", "cf.logmean", "cf.count", "cf.alpha")}
    meta = json.loads(md["scmedal"])
    meta.pop("cf_groups")
    save_file(old, str(tmp_path / "old.safetensors"), metadata=dict(md, scmedal=json.dumps(meta)))
    back = sm.ScMEDAL.load(tmp_path / "old.safetensors")
    with pytest.warns(UserWarning, match="method='matched'"):
        cf = back.get_counterfactual_expression("batch2", adata=a)
    np.testing.assert_allclose(cf, model.get_counterfactual_expression("batch2", adata=a, method="matched"),
                               atol=1e-5)


def test_groups_from_the_fe_latent_by_neighbours_or_cluster_centres():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    anchor_group = np.repeat(np.arange(3), 40)
    anchors = centres[anchor_group] + rng.normal(0, 0.5, size=(120, 2))
    cells = centres[[0, 1, 2, 1]] + rng.normal(0, 0.5, size=(4, 2))
    known = np.array([-1, 2, -1, -1])  # a known label wins over the latent
    np.testing.assert_array_equal(C.assign_groups(cells, anchors, anchor_group, known), [0, 2, 2, 1])
    np.testing.assert_array_equal(C.assign_groups(cells, anchors, anchor_group, centroids=True), [0, 1, 2, 1])
    # anchors of no group (-1) never vote
    np.testing.assert_array_equal(C.assign_groups(cells, anchors, np.where(anchor_group == 2, -1, anchor_group))[2:],
                                  [0, 1])


def test_a_model_without_labels_groups_cells_by_fe_clusters(tmp_path):
    a = make_synthetic(n_cells=600, n_genes=300, n_batches=3, n_labels=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.ScMEDAL(a, batch_key="batch", n_genes=250, seed=0, **SMALL).train(max_epochs=15, patience=5)
    st = model._anchors()
    assert st["groups"] == "clusters" and 2 <= st["count"].shape[1] <= 12
    cf = model.get_counterfactual_expression("batch1")
    assert cf.shape == (model.n_cells(), 250) and np.isfinite(cf).all()
    back = sm.ScMEDAL.load(model.save(tmp_path / "m.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(back.get_counterfactual_expression("batch1", adata=a),
                                   model.get_counterfactual_expression("batch1", adata=a), atol=1e-5)
