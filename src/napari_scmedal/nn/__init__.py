"""Keras-equivalent building blocks for the scMEDAL networks (pure PyTorch, no Qt).

The reference implementation is TensorFlow/Keras; these pieces mirror the Keras defaults that
matter for a faithful port (METHOD.md section 3):

* :func:`dense` -- ``nn.Linear`` with Glorot-uniform weights and zero biases.
* :func:`batch_norm` -- ``BatchNorm1d`` with Keras momentum 0.99 (PyTorch 0.01) and eps 1e-3.
* :class:`TiedLinear` -- a decoder layer that reuses the transpose of an encoder ``nn.Linear``
  weight, with its own zero-initialised bias.
* :class:`REBlock` -- BatchNorm followed by a batch-specific variational scale and bias.
* :func:`mlp_head` -- the small ReLU heads (adversary, cell-type head, batch head).
* :func:`clipped_cross_entropy` -- Keras categorical cross-entropy on softmax outputs with the
  probabilities clipped to ``[1e-7, 1 - 1e-7]``.
* :func:`count_parameters` -- trainable parameters plus BatchNorm running statistics, counted
  the way Keras' ``count_params`` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "KERAS_EPS",
    "dense",
    "batch_norm",
    "TiedLinear",
    "REBlock",
    "mlp_head",
    "clipped_cross_entropy",
    "count_parameters",
    "set_bn_momentum",
    "refresh_bn_stats",
]

#: Keras' ``backend.epsilon()``: probability clip inside cross-entropies.
KERAS_EPS = 1e-7


def dense(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` initialised like a Keras ``Dense`` (Glorot uniform, zero bias)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def batch_norm(num_features: int) -> nn.BatchNorm1d:
    """``BatchNorm1d`` with Keras defaults (momentum 0.99 in Keras terms, eps 1e-3)."""
    return nn.BatchNorm1d(num_features, momentum=0.01, eps=1e-3)


class TiedLinear(nn.Module):
    """Linear layer whose weight is the transpose of ``source.weight`` (not copied: shared).

    ``source`` maps ``a -> b``; this layer maps ``b -> a`` with ``y = x @ W + bias`` where ``W`` is
    ``source.weight`` (shape ``(b, a)``). Only the bias belongs to this module.
    """

    _source: nn.Linear  # set with object.__setattr__ in __init__

    def __init__(self, source: nn.Linear):
        super().__init__()
        # keep the source out of this module's parameter registry (it is owned by the encoder)
        object.__setattr__(self, "_source", source)
        self.bias = nn.Parameter(torch.zeros(source.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._source.weight + self.bias


def mlp_head(in_features: int, hidden: list[int] | tuple[int, ...], out_features: int) -> nn.Sequential:
    """Dense ReLU layers then a linear output (logits; softmax lives in the loss)."""
    layers: list[nn.Module] = []
    d = in_features
    for h in hidden:
        layers += [dense(d, h), nn.ReLU()]
        d = h
    layers.append(dense(d, out_features))
    return nn.Sequential(*layers)


def clipped_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean categorical cross-entropy as Keras computes it on a softmax output.

    ``target`` holds integer class codes. Probabilities are clipped to ``[1e-7, 1 - 1e-7]``
    before the log (so a single cell's loss never exceeds ``-log(1e-7) ~ 16.1``).
    """
    p = torch.softmax(logits, dim=1)
    p_true = p.gather(1, target.view(-1, 1)).squeeze(1)
    p_true = p_true.clamp(KERAS_EPS, 1.0 - KERAS_EPS)
    return -torch.log(p_true).mean()


class REBlock(nn.Module):
    """Random-effects block: ``BatchNorm(a) * (1 + z.Gamma) + z.Beta``.

    ``z`` is the batch one-hot, ``Gamma`` and ``Beta`` are ``(n_batches, d)`` variational
    matrices with an element-wise Gaussian posterior ``N(mu, sigma^2)``,
    ``sigma = softplus(rho) + 1e-5``; init ``mu ~ N(0, 0.1^2)``, ``rho ~ U(-9.90, -4.60)``;
    prior ``N(0, prior_sd^2)``.

    In training mode (``sample=True``) one reparameterised sample of each matrix is drawn per
    forward pass and shared by the minibatch; at inference the posterior means are used.
    After a sampled forward pass ``self.kl`` holds the KL term of this block: the single-sample
    estimate ``log q(w) - log p(w)`` summed over all entries (``kl_estimator="sample"``, the
    reference) or the analytic Gaussian KL (``kl_estimator="analytic"``).
    """

    def __init__(self, num_features: int, n_batches: int, prior_sd: float = 0.25,
                 kl_estimator: str = "sample"):
        super().__init__()
        if kl_estimator not in ("sample", "analytic"):
            raise ValueError("kl_estimator must be 'sample' or 'analytic'")
        self.bn = batch_norm(num_features)
        self.gamma_mu = nn.Parameter(torch.empty(n_batches, num_features))
        self.gamma_rho = nn.Parameter(torch.empty(n_batches, num_features))
        self.beta_mu = nn.Parameter(torch.empty(n_batches, num_features))
        self.beta_rho = nn.Parameter(torch.empty(n_batches, num_features))
        self.prior_sd = float(prior_sd)
        self.kl_estimator = kl_estimator
        self.kl = torch.zeros(())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mu in (self.gamma_mu, self.beta_mu):
            nn.init.normal_(mu, 0.0, 0.1)
        for rho in (self.gamma_rho, self.beta_rho):
            nn.init.uniform_(rho, -9.90, -4.60)

    def _log_normal(self, w: torch.Tensor, mu: torch.Tensor | float, sd: torch.Tensor | float) -> torch.Tensor:
        sd_t = torch.as_tensor(sd, dtype=w.dtype, device=w.device)
        return (-0.5 * math.log(2 * math.pi) - torch.log(sd_t) - 0.5 * ((w - mu) / sd_t) ** 2).sum()

    def _draw(self, mu: torch.Tensor, rho: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not sample:
            return mu, torch.zeros((), device=mu.device, dtype=mu.dtype)
        sigma = F.softplus(rho) + 1e-5
        eps = torch.randn_like(mu)
        w = mu + sigma * eps
        if self.kl_estimator == "sample":
            kl = self._log_normal(w, mu, sigma) - self._log_normal(w, 0.0, self.prior_sd)
        else:
            p = self.prior_sd
            kl = (torch.log(p / sigma) + (sigma ** 2 + mu ** 2) / (2 * p * p) - 0.5).sum()
        return w, kl

    def forward(self, a: torch.Tensor, z: torch.Tensor, sample: bool = False) -> torch.Tensor:
        a = self.bn(a)
        gamma, kl_g = self._draw(self.gamma_mu, self.gamma_rho, sample)
        beta, kl_b = self._draw(self.beta_mu, self.beta_rho, sample)
        self.kl = kl_g + kl_b
        return a * (1.0 + z @ gamma) + z @ beta


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters + BatchNorm running mean/var (Keras ``count_params`` convention)."""
    n = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            mean, var, _ = _running_stats(m)
            n += mean.numel() + var.numel()
    return n


def _running_stats(m: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var, num_batches_tracked)`` of a BatchNorm that tracks running statistics."""
    mean, var, nbt = m.running_mean, m.running_var, m.num_batches_tracked
    assert mean is not None and var is not None and nbt is not None  # they exist when track_running_stats
    return mean, var, nbt


def set_bn_momentum(module: nn.Module, momentum: float) -> None:
    """Set the (PyTorch-convention) momentum of every BatchNorm in ``module``.

    Keras' 0.99 is PyTorch's 0.01 (the default of :func:`batch_norm`). On small datasets with few
    optimiser steps the running statistics then lag far behind the batch statistics and inference
    outputs are off; a larger momentum (e.g. 0.1) fixes that.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = float(momentum)


@torch.no_grad()
def refresh_bn_stats(module: nn.Module, forward, batches) -> int:
    """Recompute every BatchNorm's running mean and variance of ``module`` from ``batches``.

    ``forward(b)`` runs the module on one batch; while it runs, the BatchNorm layers are in training
    mode with a cumulative average (``momentum=None``) and everything else is in inference mode (RE
    blocks use their posterior means), so the statistics are those the network meets at inference.
    With one batch holding the whole training split the statistics are exact population statistics;
    several equal batches give their average. Returns the number of rows seen (0: nothing changed).

    This replaces the running averages that lag far behind the batch statistics when an epoch has few
    optimiser steps (METHOD.md section 3, "Scale of the reference settings").
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was_training = module.training
    saved = [(m.momentum, [t.clone() for t in _running_stats(m)]) for m in bns]
    module.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for b in batches:
            forward(b)
            seen += int(b.n)
    finally:
        for m, (mom, old) in zip(bns, saved):
            m.momentum = mom
            m.eval()
            if seen == 0:  # nothing ran: keep the old statistics
                for current, kept in zip(_running_stats(m), old):
                    current.copy_(kept)
        module.train(was_training)
    return seen
