"""Trainer mechanics on small seeded tensors: FE alternating step, RE step, early stopping with best
weights restored, cancel, NaN guard, progress contract, determinism."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_scmedal.errors import TrainingError
from napari_scmedal.models import FE, RE, AE, AETask, FETask, RETask, Tensors, fit, resolve_device

G, B, K = 24, 3, 2


def _data(n=120, seed=0):
    """Seeded synthetic model-space data: a per-batch additive shift on half the genes."""
    rng = np.random.default_rng(seed)
    batch = np.arange(n) % B
    label = (np.arange(n) // B) % K
    x = rng.uniform(0.1, 0.4, size=(n, G)).astype(np.float32)
    x[:, : G // 2] += 0.3 * batch[:, None] / B
    x[:, G // 2:] += 0.3 * label[:, None]
    oh = np.eye(B, dtype=np.float32)[batch]
    return Tensors(torch.tensor(x), torch.tensor(batch), torch.tensor(oh), torch.tensor(label))


def _fe(seed=0, **kw):
    torch.manual_seed(seed)
    return FE(G, B, hidden=(16, 8), latent=4, adversary_hidden=(16, 8), **kw)


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_fe_step_updates_adversary_and_autoencoder_with_separate_optimisers():
    net = _fe()
    task = FETask(net, lr=1e-2, w_recon=100.0, w_adv=1.0)
    adv_ids = {id(p) for p in net.adversary.parameters()}
    assert {id(p) for g in task.opt_adv.param_groups for p in g["params"]} == adv_ids
    ae_ids = {id(p) for g in task.opt_ae.param_groups for p in g["params"]}
    assert not (ae_ids & adv_ids) and len(ae_ids) == len(list(net.parameters())) - len(adv_ids)
    before = _state(net)
    vals = task.train_step(_data())
    after = _state(net)
    assert vals.shape == (len(task.train_names),)
    for name in ("adversary.0.weight", "encoder.linears.0.weight", "decoder.layers.0.bias"):
        assert not torch.equal(before[name], after[name]), name
    assert all(p.requires_grad for p in net.adversary.parameters())  # restored after the AE step


def test_fe_autoencoder_step_pushes_the_adversary_loss_up():
    """With w_recon=0 the autoencoder step only maximises the adversary's CE (negated loss)."""
    d = _data()
    net = _fe(1)
    task = FETask(net, lr=1e-2, w_recon=0.0, w_adv=1.0)
    for p in net.adversary.parameters():
        p.requires_grad_(False)  # freeze the adversary: look at the encoder's effect alone
    task.opt_adv = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)

    def adv_ce():
        net.train()
        with torch.no_grad():
            from napari_scmedal.nn import clipped_cross_entropy

            return float(clipped_cross_entropy(net.adversary_logits(net.encoder(d.X)), d.batch))

    start = adv_ce()
    for _ in range(20):
        task.opt_ae.zero_grad()
        acts = net.encoder(d.X)
        from napari_scmedal.nn import clipped_cross_entropy

        loss = -clipped_cross_entropy(net.adversary_logits(acts), d.batch)
        loss.backward()
        task.opt_ae.step()
    assert adv_ce() > start + 0.1


def test_bounded_adversarial_variant_caps_the_term():
    net = _fe()
    task = FETask(net, lr=1e-3, adv_bound=0.5)
    assert float(task._adv_term(torch.tensor(3.0))) == pytest.approx(-0.5)
    assert FETask(_fe(), lr=1e-3).adv_bound is None  # off by default


def test_early_stopping_restores_best_weights_and_keeps_history():
    d = _data()
    net = _fe()
    task = FETask(net, lr=5e-3, w_recon=100.0)
    snaps = {}
    infos = []

    def progress(info):
        infos.append(info)
        snaps[info["epoch"]] = _state(net)

    hist = fit(task, d, _data(60, seed=1), max_epochs=40, patience=3, batch_size=32, seed=0, progress=progress)
    assert hist["epochs"] == list(range(1, len(hist["epochs"]) + 1))
    best = hist["best_epoch"]
    assert hist["best_val"] == pytest.approx(min(hist["val"]["total"]))
    assert hist["val"]["total"][best - 1] == pytest.approx(hist["best_val"])
    if hist["stopped"] == "early_stopping":
        assert len(hist["epochs"]) == best + 3
    final = _state(net)
    for k in final:
        assert torch.equal(final[k], snaps[best][k]), k
    # progress contract
    info = infos[-1]
    for key in ("model", "epoch", "max_epochs", "train", "val", "elapsed_s", "eta_s"):
        assert key in info
    assert info["model"] == "fe" and set(info["train"]) >= {"total", "recon", "adv"} and "total" in info["val"]
    assert info["eta_s"] >= 0


def test_re_training_reduces_reconstruction_and_validation_has_no_kl():
    d = _data()
    torch.manual_seed(0)
    net = RE(G, B, hidden=(16, 8), latent=4)
    task = RETask(net, lr=1e-2)
    hist = fit(task, d, d, max_epochs=15, patience=50, batch_size=32, seed=0)
    assert hist["train"]["recon"][-1] < hist["train"]["recon"][0]
    assert "kl_enc" in hist["train"] and "kl_enc" not in hist["val"]
    v = task.eval_losses(d)
    assert v["total"] == pytest.approx(110.0 * v["recon"] + 0.1 * v["batch"])
    # inference uses the posterior means: deterministic
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(d.X, d.batch_onehot)["recon"], net(d.X, d.batch_onehot)["recon"])


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_returns_best_so_far(kind):
    d = _data()
    net = _fe()
    ev = threading.Event()
    cancel = ev if kind == "event" else ev.is_set

    def progress(info):
        if info["epoch"] == 3:
            ev.set()

    hist = fit(FETask(net, lr=1e-3), d, d, max_epochs=50, patience=50, batch_size=32, progress=progress,
               cancel=cancel)
    assert hist["stopped"] == "cancelled" and hist["epochs"] == [1, 2, 3]
    assert hist["best_epoch"] in (1, 2, 3)


def test_nan_loss_raises_clear_error_and_keeps_best_weights():
    d = _data()
    net = _fe()
    task = FETask(net, lr=1e-3)
    snaps = {}
    real_step = task.train_step
    calls = {"n": 0}

    def poisoned(b):
        calls["n"] += 1
        out = real_step(b)
        if calls["n"] > 8:  # 4 steps per epoch: the NaN shows up in epoch 3
            with torch.no_grad():
                for p in net.encoder.parameters():
                    p.fill_(float("nan"))
            out = out.clone()
            out[0] = float("nan")
        return out

    task.train_step = poisoned
    with pytest.raises(TrainingError, match=r"became nan at epoch 3.*best weights \(epoch \d\) are kept") as ei:
        fit(task, d, d, max_epochs=10, patience=10, batch_size=32,
            progress=lambda i: snaps.__setitem__(i["epoch"], _state(net)))
    hist = ei.value.history
    assert hist["stopped"] == "nonfinite" and hist["best_epoch"] in (1, 2)
    final = _state(net)
    assert all(torch.isfinite(v.float()).all() for v in final.values())
    for k in final:
        assert torch.equal(final[k], snaps[hist["best_epoch"]][k])


def test_training_is_deterministic_under_a_seed():
    d = _data()
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        net = RE(G, B, hidden=(16, 8), latent=4)
        fit(RETask(net, lr=1e-2), d, d, max_epochs=3, patience=10, batch_size=32, seed=seed)
        states.append(_state(net))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_ae_baseline_with_class_head_trains():
    d = _data()
    torch.manual_seed(0)
    net = AE(G, n_labels=K, hidden=(16, 8), latent=4)
    task = AETask(net, lr=1e-2, w_class=1.0)
    hist = fit(task, d, d, max_epochs=5, patience=10, batch_size=32)
    assert task.name == "aec" and "class" in hist["val"]
    assert hist["train"]["total"][-1] < hist["train"]["total"][0]


def test_minibatches_index_the_device_tensors_without_copying_the_dataset():
    d = _data()
    ptr = d.X.data_ptr()
    sub = d.take(torch.tensor([3, 1]))
    assert torch.equal(sub.X, d.X[[3, 1]]) and d.X.data_ptr() == ptr
    chunks = list(d.chunks(50))
    assert [c.n for c in chunks] == [50, 50, 20] and chunks[0].X.data_ptr() == ptr  # views


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA is not available"):
            resolve_device("cuda")


def test_runaway_adversarial_loss_is_flagged():
    """With only the negated adversarial term the encoder drives the adversary's CE far above
    chance; the trainer warns and records it (default objective unchanged)."""
    d = _data()
    net = _fe(2)
    task = FETask(net, lr=2e-2, w_recon=0.0, w_adv=1.0)
    for g in task.opt_adv.param_groups:
        g["lr"] = 0.0  # an adversary that cannot keep up: the encoder wins by ever larger margins
    with pytest.warns(RuntimeWarning, match="runaway"):
        hist = fit(task, d, d, max_epochs=30, patience=100, batch_size=32)
    assert hist["warnings"] and max(hist["train"]["adv"]) > 3 * np.log(B)
    # the bounded variant keeps the encoder's incentive capped at the bound
    net2 = _fe(2)
    task2 = FETask(net2, lr=2e-2, w_recon=0.0, w_adv=1.0, adv_bound=float(np.log(B)))
    for g in task2.opt_adv.param_groups:
        g["lr"] = 0.0
    hist2 = fit(task2, d, d, max_epochs=30, patience=100, batch_size=32)
    assert max(hist2["train"]["adv"]) < max(hist["train"]["adv"])


def test_batch_center_penalty_measures_how_far_batch_means_sit_from_the_minibatch_mean():
    import torch

    from napari_scmedal.models.tasks import batch_center_penalty

    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, generator=g)
    batch = torch.arange(64) % 2
    centred = batch_center_penalty(z - z[batch == 0].mean(0) * (batch == 0)[:, None]
                                   - z[batch == 1].mean(0) * (batch == 1)[:, None], batch, 2)
    assert float(centred) < 1e-10  # every batch mean on the minibatch mean: no penalty
    shifted = z.clone()
    shifted[batch == 1] += 3.0
    assert float(batch_center_penalty(shifted, batch, 2)) > 0.5 > 10 * float(batch_center_penalty(z, batch, 2))
    # a batch with a single cell in the minibatch is left out; gradients flow to the latent
    zz = shifted.clone().requires_grad_(True)
    batch3 = batch.clone()
    batch3[0] = 2
    pen = batch_center_penalty(zz, batch3, 3)
    pen.backward()
    assert zz.grad is not None and float(zz.grad.abs().sum()) > 0
