"""Data-derived defaults (the "auto" preset), recomputed BatchNorm statistics, the time cap, and the
training health checks that say when a network did not train (issue 11)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import napari_scmedal as sm
from napari_scmedal.data.synthetic import make_synthetic
from napari_scmedal.errors import ScMEDALError, TrainingHealthWarning
from napari_scmedal.models.defaults import MIN_STEPS, derive_settings
from napari_scmedal.models.health import BOUNDS, format_health
from napari_scmedal.models.trainer import _eta
from napari_scmedal.nn import refresh_bn_stats

TINY = dict(hidden=[64, 16], latent=8, threads=1)


def _syn(n=600, seed=0):
    return make_synthetic(n_cells=n, n_genes=300, n_batches=3, n_labels=3, seed=seed)


def _health_warnings(record):
    return [w for w in record if issubclass(w.category, TrainingHealthWarning)]


# ---------------------------------------------------------------- the rule
@pytest.mark.parametrize("n_train, bs", [(180, 32), (845, 32), (2_100, 64), (23_000, 512), (3_000_000, 512)])
def test_derived_batch_size_follows_the_data(n_train, bs):
    s, why = derive_settings(n_train, {k: None for k in ("batch_size", "lr", "max_epochs", "patience", "min_epochs")})
    assert s["batch_size"] == bs
    assert s["steps_per_epoch"] == -(-n_train // bs)
    # a minimum number of optimiser steps before early stopping, whatever the size
    assert s["min_epochs"] * s["steps_per_epoch"] >= MIN_STEPS or s["min_epochs"] == 2
    assert s["max_epochs"] >= s["min_epochs"] + s["patience"]
    assert 3 <= s["patience"] <= 30 and s["max_epochs"] <= 500
    assert all(why[k].startswith("derived") for k in ("batch_size", "lr", "max_epochs", "patience", "min_epochs"))


def test_given_values_win_and_the_rest_is_derived_around_them():
    s, why = derive_settings(845, {"batch_size": None, "lr": None, "max_epochs": None, "patience": None,
                                   "min_epochs": None}, {"batch_size": 128, "max_epochs": 7})
    assert s["batch_size"] == 128 and why["batch_size"] == "given"
    assert s["max_epochs"] == 7 and why["max_epochs"] == "given" and s["min_epochs"] <= 7
    assert s["steps_per_epoch"] == 7 and why["lr"].startswith("derived")
    # a fixed preset derives nothing
    from napari_scmedal.model import PRESETS

    s, why = derive_settings(845, PRESETS["paper"])
    assert s["batch_size"] == 512 and s["lr"] == 1e-4 and s["min_epochs"] == 1
    assert set(why.values()) - {"given"} == {"845 training cells / batch 512"}


def test_auto_is_the_default_and_model_reports_what_it_derived():
    model = sm.ScMEDAL(_syn(300), batch_key="batch", label_key="cell_type", n_genes=250, seed=0,
                       train_fec=False, **TINY)
    from napari_scmedal.model import DEFAULT_PRESET

    assert model.preset == "auto" and DEFAULT_PRESET == "auto"
    model.train(max_epochs=3)
    d = model.derived
    assert d["n_train"] == len(model.splits["train"]) and d["settings"]["max_epochs"] == 3
    assert d["reasons"]["max_epochs"] == "given" and d["reasons"]["batch_size"].startswith("derived")
    s = model.summary()
    assert s["derived"]["settings"]["batch_size"] == d["settings"]["batch_size"]
    assert model.history["fe"]["config"]["lr"] == d["settings"]["lr"] == 1e-3


# ---------------------------------------------------------------- BatchNorm statistics
def test_refresh_gives_exact_population_statistics():
    from napari_scmedal.models import FE, FETask, Tensors
    from napari_scmedal.nn import set_bn_momentum

    torch.manual_seed(0)
    X = torch.rand(200, 30)
    t = Tensors(X, torch.zeros(200, dtype=torch.long) + (torch.arange(200) % 2), torch.zeros(200, 2))
    net = FE(30, 2, None, (16, 8), 4)
    set_bn_momentum(net, 0.01)
    task = FETask(net, 1e-3)
    for i in range(3):  # a few steps: the running statistics lag far behind
        task.train_step(t.slice(i * 50, (i + 1) * 50))
    bn = net.encoder.norms[0]
    target_mean = net.encoder.linears[0](X).mean(0).detach()
    assert not torch.allclose(bn.running_mean, target_mean, atol=1e-3)
    assert refresh_bn_stats(net, task.bn_forward, [t]) == 200
    assert torch.allclose(bn.running_mean, target_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, net.encoder.linears[0](X).var(0).detach(), atol=1e-4)
    assert net.training and bn.momentum == 0.01  # the mode it had is restored


# ---------------------------------------------------------------- time cap, minimum epochs, ETA
def test_max_time_caps_every_network_and_keeps_best_weights():
    model = sm.ScMEDAL(_syn(300), batch_key="batch", label_key="cell_type", n_genes=250, seed=0,
                       train_fec=False, **TINY)
    model.train(max_epochs=100_000, patience=100_000, max_time=1.0)
    assert model.trained_kinds == ["fe", "re"]
    for kind in ("fe", "re"):
        h = model.history[kind]
        assert h["stopped"] == "max_time" and h["best_epoch"] is not None
        assert h["elapsed_s"] < 3.0
    with pytest.raises(ScMEDALError, match="max_time"):
        model.train(max_time=0)


def test_early_stopping_waits_for_min_epochs():
    model = sm.ScMEDAL(_syn(300), batch_key="batch", n_genes=250, seed=0, train_fec=False, **TINY,
                       min_epochs=12)
    model.train(max_epochs=40, patience=1)
    for h in model.history.values():
        assert len(h["epochs"]) >= 12 and h["min_epochs"] == 12


def test_eta_follows_early_stopping_and_the_time_cap():
    # 2 s per epoch, epoch 10 of 500, patience 10 with 4 epochs since the best: 6 epochs left
    assert _eta(2.0, 10, 500, 1, 10, 4, None, 0.0) == pytest.approx(12.0)
    # not before min_epochs
    assert _eta(2.0, 10, 500, 30, 10, 4, None, 0.0) == pytest.approx(40.0)
    # capped by max_epochs and by the deadline
    assert _eta(2.0, 498, 500, 1, 10, 0, None, 0.0) == pytest.approx(4.0)
    assert _eta(2.0, 10, 500, 1, 10, 0, 105.0, 100.0) == pytest.approx(5.0)


# ---------------------------------------------------------------- health
@pytest.fixture(scope="module")
def good_model():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = sm.ScMEDAL(_syn(), batch_key="batch", label_key="cell_type", n_genes=250, seed=0,
                           train_fec=False, **TINY)
        model.train()
    model._rec = rec
    return model


def test_a_good_run_is_healthy_and_silent(good_model):
    assert _health_warnings(good_model._rec) == []
    for kind in ("fe", "re"):
        h = good_model.health[kind]
        assert h["ok"] is True and h["problems"] == [] and h["status"] == "checked"
        assert h["gene_mean_r2"] >= BOUNDS["gene_mean_r2"] and h["cell_r_median"] >= BOUNDS["cell_r_median"]
        assert h["val_train_ratio"] <= BOUNDS["val_train_ratio"] and h["best_epoch"] > 1
    assert good_model.health["re"]["head_acc"] > 0.9 > good_model.health["re"]["chance"]
    fe = good_model.health["fe"]
    lim = fe["latent_chance"] + BOUNDS["latent_margin"] * (1 - fe["latent_chance"])
    assert fe["adv_learned"] and fe["latent_batch_acc"] < lim and fe["latent_cells"] > 300
    lines = format_health(good_model.health)
    assert lines[0].startswith("FE ok:") and "gene-mean R^2" in lines[0]


def test_a_fixed_reconstruction_weight_fails_where_the_derived_one_works(good_model):
    # the synthetic inputs vary 17x more than CellBench's: the CellBench-sized weight 600 lets the
    # reconstruction drown the adversary, and the health check says so
    assert good_model.derived["reasons"]["fe_w_recon"].startswith("derived")
    assert 10 <= good_model.derived["settings"]["fe_w_recon"] < 100
    model = sm.ScMEDAL(_syn(), batch_key="batch", label_key="cell_type", n_genes=250, seed=0,
                       train_fec=False, fe_w_recon=600.0, **TINY)
    model.nets.pop("re")
    with pytest.warns(TrainingHealthWarning, match="batch is still predictable from the FE latent"):
        model.train()
    assert model.health["fe"]["latent_batch_acc"] > good_model.health["fe"]["latent_batch_acc"] + 0.1


def test_a_tiny_learning_rate_warns_and_names_the_fix():
    model = sm.ScMEDAL(_syn(300), batch_key="batch", label_key="cell_type", n_genes=250, seed=0,
                       train_fec=False, lr=1e-7, **TINY)
    with pytest.warns(TrainingHealthWarning, match="undertrained|barely trained|weakly"):
        model.train(max_epochs=5)
    for kind in ("fe", "re"):
        assert model.health[kind]["ok"] is False and model.health[kind]["problems"]
    assert any("PROBLEM" in line for line in format_health(model.health))


def test_callers_that_show_health_themselves_can_turn_the_warning_off():
    model = sm.ScMEDAL(_syn(300), batch_key="batch", n_genes=250, seed=0, train_fec=False, lr=1e-7, **TINY)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model.train(max_epochs=3, health_warnings=False)
    assert not _health_warnings(rec)
    assert model.health["re"]["ok"] is False and model.health["re"]["problems"]  # still measured and stored


def test_the_paper_preset_on_a_few_hundred_cells_warns():
    # METHOD.md's settings assume tens of thousands of cells: one optimiser step per epoch here
    model = sm.ScMEDAL(_syn(300), batch_key="batch", label_key="cell_type", n_genes=250, seed=0,
                       preset="paper", train_fec=False, threads=1)
    with pytest.warns(TrainingHealthWarning) as rec:
        model.train(max_epochs=60)
    assert any("RE" in str(w.message) for w in rec)
    assert model.health["re"]["ok"] is False


def test_health_is_saved_and_old_files_read_not_checked(good_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = good_model.save(tmp_path / "m.safetensors")
    back = sm.ScMEDAL.load(path)
    assert back.health == json.loads(json.dumps(good_model.health))
    assert back.derived["settings"] == good_model.derived["settings"]
    # a file written before health checks existed
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(md["scmedal"])
    meta.pop("health")
    meta.pop("derived")
    md["scmedal"] = json.dumps(meta)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=md)
    back = sm.ScMEDAL.load(old)
    assert set(back.health) == {"fe", "re"}
    assert all(h["status"] == "not checked" and h["ok"] is None for h in back.health.values())
    assert format_health(back.health)[0] == "FE: not checked (model saved before health checks)"
