"""Building blocks and networks: Keras-equivalent settings, exact parameter counts, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from napari_scmedal.models import AE, FE, RE
from napari_scmedal.nn import REBlock, TiedLinear, batch_norm, clipped_cross_entropy, count_parameters, dense


def test_parameter_counts_match_method_for_G2916_B19():
    torch.manual_seed(0)
    fe = FE(2916, 19)
    re = RE(2916, 19)
    assert count_parameters(fe.encoder) == 1_570_446
    assert count_parameters(fe.adversary) == 426_083
    assert count_parameters(fe.decoder) == 3_560  # tied: biases only
    assert count_parameters(re.encoder) == 1_619_390
    assert count_parameters(re.decoder) == 1_855_536
    assert count_parameters(re.batch_head) == 369
    # FEC/AEC cell-type head: 50 -> 2 ReLU -> K
    fec = FE(2916, 19, n_labels=21)
    assert count_parameters(fec.class_head) == 50 * 2 + 2 + 2 * 21 + 21
    assert count_parameters(AE(2916)) == 1_570_446 + 3_560


def test_keras_initialisation_and_batchnorm():
    torch.manual_seed(0)
    lin = dense(400, 300)
    limit = math.sqrt(6 / (400 + 300))
    assert torch.all(lin.bias == 0)
    assert lin.weight.abs().max() <= limit
    assert lin.weight.abs().max() > 0.9 * limit  # uniform over the full Glorot range
    bn = batch_norm(10)
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)
    blk = REBlock(64, 7)
    for rho in (blk.gamma_rho, blk.beta_rho):
        assert rho.min() >= -9.90 and rho.max() <= -4.60
    mu = torch.cat([blk.gamma_mu.flatten(), blk.beta_mu.flatten()]).detach()
    assert abs(float(mu.std()) - 0.1) < 0.01 and abs(float(mu.mean())) < 0.01


def test_tied_decoder_shares_encoder_weights():
    torch.manual_seed(0)
    net = AE(30, hidden=(16, 8), latent=4)
    dec_params = list(net.decoder.parameters())
    assert [p.shape for p in dec_params] == [(8,), (16,), (30,)]  # only biases belong to the decoder
    z = torch.randn(5, 4)
    out1 = net.decoder(z)
    with torch.no_grad():
        net.encoder.to_latent.weight.mul_(2.0)
    assert not torch.allclose(out1, net.decoder(z))
    lin = dense(6, 3)
    tied = TiedLinear(lin)
    x = torch.randn(2, 3)
    assert torch.allclose(tied(x), x @ lin.weight)


def test_forward_shapes_all_networks():
    torch.manual_seed(0)
    G, B, K, n = 40, 3, 4, 9
    x = torch.rand(n, G)
    z = torch.nn.functional.one_hot(torch.arange(n) % B, B).float()
    fe = FE(G, B, n_labels=K, hidden=(16, 8), latent=5)
    out = fe(x)
    assert out["latent"].shape == (n, 5) and out["recon"].shape == (n, G)
    assert out["class_logits"].shape == (n, K)
    assert [a.shape[1] for a in out["acts"]] == [16, 8, 5]
    assert fe.adversary_logits(out["acts"]).shape == (n, B)
    re = RE(G, B, hidden=(16, 8), latent=5)
    o = re(x, z)
    assert o["latent"].shape == (n, 5) and o["recon"].shape == (n, G) and o["batch_logits"].shape == (n, B)
    # 512 + 132 + 50 = 694 adversary inputs at the default sizes
    assert FE(20, 2).adversary[0].in_features == 694


def test_re_block_samples_in_training_and_uses_means_at_inference():
    torch.manual_seed(0)
    blk = REBlock(6, 3)
    a = torch.randn(8, 6)
    z = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    blk.eval()
    e1, e2 = blk(a, z, sample=False), blk(a, z, sample=False)
    assert torch.equal(e1, e2)
    expected = blk.bn(a) * (1 + z @ blk.gamma_mu) + z @ blk.beta_mu
    assert torch.allclose(e1, expected)
    with torch.no_grad():
        blk.gamma_rho.fill_(0.0)  # sigma ~ 0.69: sampling visibly changes the output
    with torch.no_grad():
        s1, s2 = blk(a, z, sample=True), blk(a, z, sample=True)
    assert not torch.allclose(s1, s2)
    assert torch.isfinite(blk.kl)


def test_single_sample_kl_is_unbiased_for_the_analytic_kl():
    torch.manual_seed(0)
    blk = REBlock(5, 2, prior_sd=0.25)
    with torch.no_grad():
        blk.gamma_rho.fill_(-1.0)
        blk.beta_rho.fill_(-2.0)
    a = torch.randn(4, 5)
    z = torch.nn.functional.one_hot(torch.arange(4) % 2, 2).float()
    samples = []
    with torch.no_grad():
        for _ in range(3000):
            blk(a, z, sample=True)
            samples.append(float(blk.kl))
        blk.kl_estimator = "analytic"
        blk(a, z, sample=True)
        analytic = float(blk.kl)
    mc = sum(samples) / len(samples)
    assert abs(mc - analytic) < 0.05 * abs(analytic) + 0.5


def test_clipped_cross_entropy_matches_keras():
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0], [-50.0, 50.0]])
    target = torch.tensor([0, 1, 0])
    p = torch.softmax(logits, 1).clamp(1e-7, 1 - 1e-7)
    expected = -(torch.log(p[0, 0]) + torch.log(p[1, 1]) + torch.log(p[2, 0])) / 3
    assert torch.allclose(clipped_cross_entropy(logits, target), expected)
    # a confidently wrong prediction is capped at -log(1e-7)
    worst = clipped_cross_entropy(torch.tensor([[-100.0, 100.0]]), torch.tensor([0]))
    assert float(worst) == pytest.approx(-math.log(1e-7), rel=1e-4)
