"""Counterfactual accuracy harness: exact synthetic truth, counterfactual_holdout, baselines, CLI holdout."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_scmedal.data.synthetic import make_synthetic, synthetic_expected_log
from napari_scmedal.errors import DataError
from napari_scmedal.holdout import (COLUMNS, counterfactual_holdout, default_pairs, score_counterfactual,
                                    shift_prediction, synthetic_truth)

TINY = dict(preset="quick", hidden=[32, 16], latent=8, n_genes=60, threads=1, max_epochs=3, batch_size=32)
PAIR = ("type0", "batch1")
#: sha256 prefix of make_synthetic(n_cells=60, n_genes=30, seed=3).X, computed with the code before the
#: interaction/dropout options existed
DIGEST = "1680d7292525bafc"


def _data():
    return make_synthetic(n_cells=240, n_genes=80, n_batches=3, n_labels=2, seed=0,
                          interaction_strength=0.3, dropout=0.3)


def _lognorm(a):
    X = a.X.toarray().astype(np.float64)
    return np.log1p(X * 1e4 / X.sum(1, keepdims=True))


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # health warnings of 3-epoch networks
        return fn(*args, **kw)


# ------------------------------------------------------------------------------ synthetic data
def test_make_synthetic_defaults_unchanged():
    a = make_synthetic(n_cells=60, n_genes=30, seed=3)
    # digest of the counts drawn before interaction_strength / dropout existed
    assert hashlib.sha256(a.X.toarray().tobytes()).hexdigest()[:16] == DIGEST
    b = make_synthetic(n_cells=60, n_genes=30, seed=3, interaction_strength=0.0, dropout=0.0)
    assert np.array_equal(a.X.toarray(), b.X.toarray())
    c = make_synthetic(n_cells=60, n_genes=30, seed=3, interaction_strength=0.5, dropout=0.5)
    assert c.obs.equals(a.obs) and c.var.equals(a.var)
    assert np.array_equal(c.varm["batch_effect"], a.varm["batch_effect"])
    assert not np.array_equal(c.X.toarray(), a.X.toarray()) and c.X.nnz < a.X.nnz
    assert np.allclose(a.varm["interaction"], 1.0) and not np.allclose(c.varm["interaction"], 1.0)
    lvl = c.uns["synthetic"]["dropout_level"]
    assert lvl.shape == (3,) and np.all((lvl > 0) & (lvl <= 1)) and len(np.unique(lvl)) == 3
    with pytest.raises(ValueError, match="dropout"):
        make_synthetic(n_cells=10, n_genes=10, dropout=1.5)


def test_expected_log_is_reproducible_and_precise():
    a = _data()
    e1 = synthetic_expected_log(a[:40], "batch2", n_draws=16, seed=0)
    e2 = synthetic_expected_log(a[:40], "batch2", n_draws=16, seed=0)
    e3 = synthetic_expected_log(a[:40], 2, n_draws=16, seed=1)
    assert e1.shape == (40, 80) and np.array_equal(e1, e2)
    assert np.abs(e1.mean(0) - e3.mean(0)).max() < 1e-3  # group mean accurate to ~1e-3
    mc = synthetic_expected_log(a[:40], "batch2", n_draws=300, seed=0, rao_blackwell=False)
    assert np.abs(mc.mean(0) - e1.mean(0)).max() < 0.05  # the plain Monte-Carlo of Recipe.log_block agrees
    own = synthetic_expected_log(a[:40], None, n_draws=4)
    same = synthetic_expected_log(a[:40], list(a.obs["batch"][:40].astype(str))[0], n_draws=4)
    assert own.shape == same.shape
    with pytest.raises(ValueError, match="synthetic"):
        synthetic_expected_log(a[:5], "batchX")


def test_expected_log_matches_observed_group_means():
    a = make_synthetic(n_cells=4000, n_genes=100, n_batches=2, n_labels=2, seed=1,
                       interaction_strength=0.4, dropout=0.4)
    obs = _lognorm(a)
    b, k = a.obs["batch"].astype(str).to_numpy(), a.obs["cell_type"].astype(str).to_numpy()
    tgt = (b == "batch1") & (k == "type1")
    se = obs[tgt].std(0) / np.sqrt(tgt.sum())
    for src in (tgt, (b == "batch0") & (k == "type1")):  # own batch, and the counterfactual from batch0
        exp = synthetic_expected_log(a[src], "batch1", n_draws=8).mean(0)
        z = (exp - obs[tgt].mean(0)) / np.maximum(se, 1e-6)
        assert np.mean(z ** 2) < 1.6 and np.abs(z).max() < 4.5
    # and the batch matters: the expected batch-1 mean of batch-0 cells is not their batch-0 mean
    src = (b == "batch0") & (k == "type1")
    assert np.abs(synthetic_expected_log(a[src], "batch1", n_draws=4).mean(0) - obs[src].mean(0)).max() > 0.3


# ------------------------------------------------------------------------------ scores and baselines
def test_scores_and_shift_baselines_by_hand():
    rng = np.random.default_rng(0)
    truth, src = rng.normal(size=50), rng.normal(size=50)
    pred = src[None, :] + rng.normal(scale=0.1, size=(4, 50))
    s = score_counterfactual(pred, truth, src, truth_cells=np.tile(truth, (4, 1)))
    p = pred.mean(0)
    assert s["r2_all"] == pytest.approx(1 - ((truth - p) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())
    assert s["shift_corr"] == pytest.approx(np.corrcoef(p - src, truth - src)[0, 1])
    assert s["cell_rmse"] == pytest.approx(np.mean(np.sqrt(((pred - truth) ** 2).mean(1))))
    X_train = np.array([[0.0], [2.0], [10.0], [1.0], [3.0], [20.0]])
    b_train = np.array(["s", "s", "s", "t", "t", "t"])
    l_train = np.array(["x", "y", "z", "x", "y", "z2"])
    xs = np.array([[5.0]])
    plain = shift_prediction(xs, ["s"], X_train, b_train, "t", l_train)
    bal = shift_prediction(xs, ["s"], X_train, b_train, "t", l_train, balanced=True, min_cells=1)
    assert plain[0, 0] == pytest.approx(5 + 8 - 4) and bal[0, 0] == pytest.approx(5 + 1)  # labels x, y only


def test_default_pairs_and_bad_input():
    a = _data()
    pairs = default_pairs(a.obs, "batch", "cell_type", min_cells=30)
    assert len(pairs) == 6 and PAIR in pairs
    assert default_pairs(a.obs, "batch", "cell_type", min_cells=41) == []
    with pytest.raises(DataError, match="label_key='nope' is not a column.*available"):
        counterfactual_holdout(a, "batch", "nope")
    with pytest.raises(DataError, match="batch_key"):
        counterfactual_holdout(a, "run", "cell_type")
    with pytest.raises(DataError, match="no .label, batch. pair qualifies.*Lower min_cells"):
        counterfactual_holdout(a, "batch", "cell_type", min_cells=500)
    with pytest.raises(DataError, match="not in obs"):
        counterfactual_holdout(a, "batch", "cell_type", pairs=[("type9", "batch1")])
    with pytest.raises(DataError, match="unknown baseline"):
        counterfactual_holdout(a, "batch", "cell_type", pairs=[PAIR], baselines=("bogus",))


# ------------------------------------------------------------------------------ the harness
@pytest.fixture(scope="module")
def observed_run():
    a = _data()
    infos = []
    df = _quiet(counterfactual_holdout, a, "batch", "cell_type", pairs=[PAIR], methods=("matched", "reference"),
                progress=infos.append, **TINY)
    return a, df, infos


def test_holdout_rows_columns_and_progress(observed_run):
    a, df, infos = observed_run
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert list(df["method"]) == ["matched", "reference", "identity", "mean_shift", "balanced_shift"]
    assert set(df["kind"]) == {"model", "baseline"} and (df["label"] == "type0").all()
    assert (df["n_target"] == 40).all() and (df["n_source"] == 80).all() and (df["seed"] == 0).all()
    assert df["cell_rmse"].isna().all() and np.isfinite(df[["r2_all", "r2_top100"]].to_numpy()).all()
    assert np.isnan(df.set_index("method").at["identity", "shift_corr"])
    stages = [i["stage"] for i in infos]
    assert stages[-1] == "pair" and stages.count("train") >= 3 and infos[0]["label"] == "type0"


def test_held_out_cells_are_not_trained_and_identity_r2_by_hand(observed_run):
    a, df, infos = observed_run
    model = infos[-1]["model"]
    lab, bat = a.obs["cell_type"].astype(str), a.obs["batch"].astype(str)
    held = set(a.obs_names[(lab == "type0") & (bat == "batch1")])
    seen = set().union(*map(set, model.splits.values()))
    assert held and not held & seen and len(seen) == a.n_obs - len(held)
    X = model.recipe.transform(a).X_log.astype(np.float64)
    truth = X[((lab == "type0") & (bat == "batch1")).to_numpy()].mean(0)
    src = X[((lab == "type0") & (bat != "batch1")).to_numpy()].mean(0)
    r2 = 1 - ((truth - src) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert df.set_index("method").at["identity", "r2_all"] == pytest.approx(r2, rel=1e-6)


def test_holdout_with_synthetic_truth_and_callable_baseline():
    a = _data()
    seen = {}

    def zeros(ctx):
        seen.update(ctx)
        return np.zeros_like(ctx["X_source"])

    df = _quiet(counterfactual_holdout, a, "batch", "cell_type", pairs=[("type1", "batch0")],
                baselines=("identity", ("zeros", zeros)), truth=synthetic_truth(n_draws=4), **TINY)
    assert list(df["method"]) == ["balanced", "identity", "zeros"]
    assert np.isfinite(df["cell_rmse"]).all() and (df["cell_rmse"] > 0).all()
    assert seen["target_batch"] == "batch0" and seen["X_train"].shape == (200, 60)
    assert set(seen["batch_source"]) == {"batch1", "batch2"}


def test_cancel_before_first_pair_returns_no_rows():
    import threading

    ev = threading.Event()
    ev.set()
    df = counterfactual_holdout(_data(), "batch", "cell_type", pairs=[PAIR], cancel=ev, **TINY)
    assert df.empty and list(df.columns[:len(COLUMNS)]) == COLUMNS


# ------------------------------------------------------------------------------ CLI
def test_cli_holdout_writes_csv(tmp_path, capsys):
    from napari_scmedal.cli import main

    a = _data()
    data = tmp_path / "syn.h5ad"
    a.write_h5ad(data)
    out = tmp_path / "res"
    argv = ["holdout", str(data), "--batch-key", "batch", "--label-key", "cell_type", "--pairs", "type0:batch1",
            "--methods", "matched", "--preset", "quick", "--genes", "60", "--max-epochs", "2", "--batch-size", "32",
            "--synthetic-truth", "--threads", "1", "-q", "--out", str(out)]
    assert _quiet(main, argv) == 0
    df = pd.read_csv(out / "holdout.csv")
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS and len(df) == 4 and df["cell_rmse"].notna().all()
    printed = capsys.readouterr().out
    assert "balanced_shift" in printed and "r2_all" in printed
    assert main(["holdout", str(data), "--batch-key", "batch", "--label-key", "nope", "-q", "--out", str(out)]) == 1
    assert "--label-key 'nope'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["holdout", str(data), "--batch-key", "batch", "--label-key", "cell_type", "-q",
                 "--out", str(tmp_path / "file")]) == 1
    assert main(["holdout", str(data), "--batch-key", "batch", "--label-key", "cell_type", "-q",
                 "--pairs", "type0-batch1", "--out", str(out)]) == 1
