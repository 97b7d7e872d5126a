"""Training steps and the generic Trainer for the scMEDAL networks.

* :class:`FETask` -- FE/FEC (and AE/AEC with ``w_adv=0`` and no adversary): the reference's
  alternating two-optimiser step (adversary on detached encoder activations, then the
  autoencoder with the negated adversary loss), not gradient reversal.
* :class:`RETask` -- RE: one Adam on ``w_recon * MSE + w_batch * CE + kl_weight * (mean enc KL +
  mean dec KL)`` with a single reparameterised sample; validation without KL, posterior means.
* :func:`fit` -- minibatching by an index permutation over tensors already on the device (no
  copy of the dataset per epoch), early stopping on the validation total loss with the best
  weights restored, per-epoch progress with ETA, cancel, NaN/inf guard, full history.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .._utils import is_cancelled
from ..errors import TrainingError
from ..nn import clipped_cross_entropy, refresh_bn_stats
from .networks import AE, FE, RE

__all__ = ["Tensors", "FETask", "AETask", "RETask", "fit", "resolve_device", "is_cancelled", "PRECISIONS"]

#: Training precisions: float32, or bfloat16 autocast of the forward passes (meant for CUDA).
PRECISIONS = ("fp32", "bf16")


@dataclass
class Tensors:
    """Model-space tensors of one split, already on the training device."""

    X: torch.Tensor            # (n, G) float32 scaled
    batch: torch.Tensor        # (n,) int64 codes
    batch_onehot: torch.Tensor  # (n, B) float32
    label: torch.Tensor | None = None  # (n,) int64 codes, -1 = unknown

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def from_prepared(cls, prepared, idx=None, device="cpu") -> "Tensors":
        import numpy as np

        sel = slice(None) if idx is None else np.asarray(idx)

        def t(a, dtype):
            return torch.as_tensor(np.ascontiguousarray(a[sel]), dtype=dtype, device=device)

        label = None
        if getattr(prepared, "label", None) is not None:
            label = t(prepared.label, torch.int64)
        return cls(t(prepared.X, torch.float32), t(prepared.batch, torch.int64),
                   t(prepared.batch_onehot, torch.float32), label)

    def take(self, idx: torch.Tensor) -> "Tensors":
        return Tensors(self.X.index_select(0, idx), self.batch.index_select(0, idx),
                       self.batch_onehot.index_select(0, idx),
                       None if self.label is None else self.label.index_select(0, idx))

    def slice(self, start: int, stop: int) -> "Tensors":
        sl = slice(start, stop)
        return Tensors(self.X[sl], self.batch[sl], self.batch_onehot[sl],
                       None if self.label is None else self.label[sl])

    def chunks(self, size: int, comm=None):
        """Consecutive slices of ``size`` rows (this rank's share of the rows when ``comm`` has several)."""
        lo, hi = 0, self.n
        if comm is not None and comm.world > 1:
            lo, hi = self.n * comm.rank // comm.world, self.n * (comm.rank + 1) // comm.world
        for i in range(lo, hi, size):
            yield self.slice(i, min(i + size, hi))

    def to(self, device, non_blocking: bool = False) -> "Tensors":
        def mv(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Tensors(mv(self.X), mv(self.batch), mv(self.batch_onehot), mv(self.label))

    def pin_memory(self) -> "Tensors":
        def pin(t):
            return None if t is None else t.pin_memory()

        return Tensors(pin(self.X), pin(self.batch), pin(self.batch_onehot), pin(self.label))


def resolve_device(device=None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was requested but CUDA is not available in this PyTorch "
                            f"build; use device='cpu' (or None to choose automatically).")
    return dev


def _mse(x, x_hat):
    return ((x - x_hat) ** 2).mean(dim=1).mean()


def batch_center_penalty(z, batch, n_batches: int):
    """Mean, over the batches with >= 2 cells in the minibatch, of ``mean_d ((mean_b z_d - mean z_d) / sd_d)^2``
    (``sd``: the minibatch's per-dimension spread, detached): each batch's mean latent pulled onto the
    minibatch's. Matching only the means leaves room for batches that hold different cell types (measured
    on CellBench: kernel MMD between whole batches pulled the *_3cl batches toward cell lines they lack)."""
    oh = torch.nn.functional.one_hot(batch, n_batches).to(z.dtype)
    cnt = oh.sum(0)
    keep = cnt >= 2
    means = (oh.T @ z) / cnt.clamp_min(1).unsqueeze(1)
    sd = z.std(0).detach().clamp_min(1e-3)
    dev = (((means - z.mean(0)) / sd) ** 2).mean(1)
    return dev[keep].mean() if bool(keep.any()) else z.sum() * 0.0


def _label_ce(logits, label):
    mask = label >= 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return clipped_cross_entropy(logits[mask], label[mask])


class _Step:
    """Shared machinery of the tasks: optional DistributedDataParallel wrapping and bf16 autocast.

    ``distribute(comm)`` wraps the modules a task runs forward in ``DistributedDataParallel`` when
    ``comm`` has several ranks (gradients are all-reduced during ``backward``; every optimiser then
    takes the same step on every rank). ``precision="bf16"`` runs the forward passes under
    ``torch.autocast(dtype=torch.bfloat16)``; losses are computed in float32.
    """

    precision = "fp32"

    def _autocast(self):
        if self.precision != "bf16":
            return contextlib.nullcontext()
        dev = next(self.net.parameters()).device
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    @staticmethod
    def _ddp(module, comm):
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(module.parameters()).device
        import inspect

        ids = [dev.index if dev.index is not None else 0] if dev.type == "cuda" else None
        # BatchNorm running statistics follow rank 0 at every forward (the keyword was renamed in torch 2.13)
        sync = ({"forward_sync_buffers": True} if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                else {"broadcast_buffers": True})
        return DDP(module, device_ids=ids, output_device=ids[0] if ids else None, **sync)

    def bn_forward(self, b: Tensors) -> None:
        """The forward pass whose BatchNorm statistics :func:`fit` recomputes (``bn_refresh``)."""
        self.net.encoder(b.X)

    def eval_losses(self, data, chunk: int = 4096) -> dict[str, float]:
        """Validation losses of ``data`` (Tensors or a minibatch source), averaged over its rows."""
        return self.eval_finalize(self.eval_sums(data.chunks(chunk)))


class _AEView(nn.Module):
    """The autoencoder part of an FE/FEC/AE network (encoder, tied decoder, class head; no adversary),
    as one module whose forward is what DDP synchronises for the autoencoder optimiser."""

    def __init__(self, net, with_class: bool = True):
        super().__init__()
        self.encoder = net.encoder
        self.decoder = net.decoder
        # a head whose loss is off gets no gradient: leave it out, or DDP waits for its gradients forever
        self.class_head = net.class_head if with_class else None

    def forward(self, x):
        acts = self.encoder(x)
        recon = self.decoder(acts[-1])
        cls = self.class_head(acts[-1]) if self.class_head is not None else None
        return acts, recon, cls


class FETask(_Step):
    """FE / FEC training (``net`` is an :class:`FE`). Loss names: ``recon`` (MSE), ``adv`` (the
    adversary's cross-entropy on the batch), ``class`` (FEC), ``total`` (the autoencoder objective
    ``w_recon*recon - w_adv*adv [+ w_class*class]``) and ``adv_acc`` (adversary accuracy).

    ``adv_bound``: optional bounded variant of the negated adversarial term, ``-w_adv *
    min(CE, adv_bound)`` (off by default; ``log(B)`` = chance level is a natural choice).
    """

    name = "fe"

    def __init__(self, net: FE, lr: float, w_recon: float = 1000.0, w_adv: float = 1.0,
                 w_class: float = 0.0, adv_bound: float | None = None, adam_eps: float = 1e-7,
                 w_center: float = 0.0):
        self.net = net
        self.w_recon, self.w_adv, self.w_class = float(w_recon), float(w_adv), float(w_class)
        self.adv_bound = adv_bound
        self.w_center = float(w_center)  # batch-centring of the latent (batch_center_penalty); 0 = off
        self.opt_adv = torch.optim.Adam(net.adversary.parameters(), lr=lr, eps=adam_eps)
        self.opt_ae = torch.optim.Adam(net.autoencoder_parameters(), lr=lr, eps=adam_eps)
        self.use_class = net.class_head is not None and w_class > 0
        self.name = "fec" if self.use_class else "fe"
        self._ae = _AEView(net, self.use_class)
        self._adv = net.adversary

    def distribute(self, comm) -> None:
        """Wrap the autoencoder and the adversary (each with its own optimiser) in DDP."""
        if comm.world > 1:
            self._ae = self._ddp(_AEView(self.net, self.use_class), comm)
            self._adv = self._ddp(self.net.adversary, comm)

    def _adv_term(self, ce):
        if self.adv_bound is not None:
            ce = ce.clamp(max=float(self.adv_bound))
        return -self.w_adv * ce

    def train_step(self, b: Tensors) -> torch.Tensor:
        net = self.net
        net.train()
        with self._autocast():
            acts, recon_x, cls_logits = self._ae(b.X)
            # 1. adversary step on detached activations
            adv_d = clipped_cross_entropy(self._adv(torch.cat(acts, dim=1).detach()).float(), b.batch)
        self.opt_adv.zero_grad(set_to_none=True)
        adv_d.backward()
        self.opt_adv.step()
        # 2. autoencoder step against the just-updated adversary (the encoder forward is reused:
        #    its weights did not change in step 1, so the activations are identical)
        for p in net.adversary.parameters():
            p.requires_grad_(False)
        try:
            with self._autocast():
                adv_logits = net.adversary_logits(acts).float()
            recon = _mse(b.X, recon_x.float())
            adv = clipped_cross_entropy(adv_logits, b.batch)
            total = self.w_recon * recon + self._adv_term(adv)
            if self.w_center > 0:
                total = total + self.w_center * batch_center_penalty(acts[-1].float(), b.batch, net.n_batches)
            cls = None
            if self.use_class and b.label is not None:
                cls = _label_ce(cls_logits.float(), b.label)
                total = total + self.w_class * cls
            self.opt_ae.zero_grad(set_to_none=True)
            total.backward()
            self.opt_ae.step()
        finally:
            for p in net.adversary.parameters():
                p.requires_grad_(True)
        acc = (adv_logits.detach().argmax(1) == b.batch).float().mean()
        vals = [total.detach(), recon.detach(), adv.detach(), adv_d.detach(), acc]
        if cls is not None:
            vals.append(cls.detach())
        return torch.stack(vals)

    @property
    def train_names(self):
        names = ["total", "recon", "adv", "adv_d", "adv_acc"]
        return names + (["class"] if self.use_class else [])

    @torch.no_grad()
    def eval_sums(self, chunks) -> dict[str, float]:
        net = self.net
        net.eval()
        sums = {"n": 0.0, "recon": 0.0, "adv": 0.0, "adv_acc": 0.0, "class": 0.0, "n_lab": 0.0}
        for b in chunks:
            acts = net.encoder(b.X)
            m = b.n
            sums["n"] += m
            sums["recon"] += float(_mse(b.X, net.decoder(acts[-1]))) * m
            logits = net.adversary_logits(acts)
            sums["adv"] += float(clipped_cross_entropy(logits, b.batch)) * m
            sums["adv_acc"] += float((logits.argmax(1) == b.batch).float().sum())
            if self.use_class and b.label is not None:
                k = int((b.label >= 0).sum())
                if k:
                    sums["class"] += float(_label_ce(net.class_head(acts[-1]), b.label)) * k
                    sums["n_lab"] += k
        return sums

    def eval_finalize(self, sums: dict) -> dict[str, float]:
        n = max(sums["n"], 1)
        out = {k: sums[k] / n for k in ("recon", "adv", "adv_acc")}
        total = self.w_recon * out["recon"] + float(self._adv_term(torch.tensor(out["adv"])))
        if self.use_class:
            out["class"] = sums["class"] / max(sums["n_lab"], 1)
            total += self.w_class * out["class"]
        out["total"] = total
        return out


class AETask(FETask):
    """AE / AEC baselines: reconstruction (+ w_class * cell-type CE), one Adam, no adversary."""

    name = "ae"

    def __init__(self, net: AE, lr: float, w_recon: float = 1000.0, w_class: float = 0.0,
                 adam_eps: float = 1e-7):
        self.net = net
        self.w_recon, self.w_adv, self.w_class = float(w_recon), 0.0, float(w_class)
        self.adv_bound = None
        self.opt_ae = torch.optim.Adam(net.parameters(), lr=lr, eps=adam_eps)
        self.use_class = net.class_head is not None and w_class > 0
        self.name = "aec" if self.use_class else "ae"
        self._ae = _AEView(net, self.use_class)

    def distribute(self, comm) -> None:
        if comm.world > 1:
            self._ae = self._ddp(_AEView(self.net, self.use_class), comm)

    def train_step(self, b: Tensors) -> torch.Tensor:
        net = self.net
        net.train()
        with self._autocast():
            _, recon_x, cls_logits = self._ae(b.X)
        recon = _mse(b.X, recon_x.float())
        total = self.w_recon * recon
        vals = [recon]
        if self.use_class and b.label is not None:
            cls = _label_ce(cls_logits.float(), b.label)
            total = total + self.w_class * cls
            vals.append(cls)
        self.opt_ae.zero_grad(set_to_none=True)
        total.backward()
        self.opt_ae.step()
        return torch.stack([total.detach(), *[v.detach() for v in vals]])

    @property
    def train_names(self):
        return ["total", "recon"] + (["class"] if self.use_class else [])

    @torch.no_grad()
    def eval_sums(self, chunks) -> dict[str, float]:
        net = self.net
        net.eval()
        sums = {"n": 0.0, "recon": 0.0, "class": 0.0, "n_lab": 0.0}
        for b in chunks:
            out = net(b.X)
            sums["n"] += b.n
            sums["recon"] += float(_mse(b.X, out["recon"])) * b.n
            if self.use_class and b.label is not None:
                k = int((b.label >= 0).sum())
                if k:
                    sums["class"] += float(_label_ce(out["class_logits"], b.label)) * k
                    sums["n_lab"] += k
        return sums

    def eval_finalize(self, sums: dict) -> dict[str, float]:
        res = {"recon": sums["recon"] / max(sums["n"], 1)}
        res["total"] = self.w_recon * res["recon"]
        if self.use_class:
            res["class"] = sums["class"] / max(sums["n_lab"], 1)
            res["total"] += self.w_class * res["class"]
        return res


class RETask(_Step):
    """RE training. Loss names: ``recon`` (MSE), ``batch`` (head CE), ``kl_enc``/``kl_dec`` (mean
    per-block KL estimates, training only), ``total`` (train: with ``kl_weight * (kl_enc + kl_dec)``;
    validation: without KL, posterior means) and ``batch_acc``.

    Under DDP the whole RE network is wrapped: the variational means and scales of every random-effects
    block get their gradients (reconstruction, batch head and KL terms) all-reduced like any weight;
    each rank draws its own weight noise, so the averaged gradient uses one sample per rank.
    """

    name = "re"

    def __init__(self, net: RE, lr: float, w_recon: float = 110.0, w_batch: float = 0.1,
                 kl_weight: float = 1e-5, adam_eps: float = 1e-7):
        self.net = net
        self.w_recon, self.w_batch, self.kl_weight = float(w_recon), float(w_batch), float(kl_weight)
        self.opt = torch.optim.Adam(net.parameters(), lr=lr, eps=adam_eps)
        self._fwd = net

    def distribute(self, comm) -> None:
        if comm.world > 1:
            self._fwd = self._ddp(self.net, comm)

    train_names = ["total", "recon", "batch", "kl_enc", "kl_dec", "batch_acc"]

    def bn_forward(self, b: Tensors) -> None:
        self.net(b.X, b.batch_onehot)

    def train_step(self, b: Tensors) -> torch.Tensor:
        net = self.net
        net.train()
        with self._autocast():
            out = self._fwd(b.X, b.batch_onehot)
            kl_e, kl_d = net.kl()
        logits = out["batch_logits"].float()
        recon = _mse(b.X, out["recon"].float())
        ce = clipped_cross_entropy(logits, b.batch)
        kl_e, kl_d = kl_e.float(), kl_d.float()
        total = self.w_recon * recon + self.w_batch * ce + self.kl_weight * (kl_e + kl_d)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        acc = (logits.detach().argmax(1) == b.batch).float().mean()
        return torch.stack([total.detach(), recon.detach(), ce.detach(), kl_e.detach(), kl_d.detach(), acc])

    @torch.no_grad()
    def eval_sums(self, chunks) -> dict[str, float]:
        net = self.net
        net.eval()
        sums = {"n": 0.0, "recon": 0.0, "batch": 0.0, "batch_acc": 0.0}
        for b in chunks:
            out = net(b.X, b.batch_onehot)
            sums["n"] += b.n
            sums["recon"] += float(_mse(b.X, out["recon"])) * b.n
            sums["batch"] += float(clipped_cross_entropy(out["batch_logits"], b.batch)) * b.n
            sums["batch_acc"] += float((out["batch_logits"].argmax(1) == b.batch).float().sum())
        return sums

    def eval_finalize(self, sums: dict) -> dict[str, float]:
        n = max(sums["n"], 1)
        res = {"recon": sums["recon"] / n, "batch": sums["batch"] / n, "batch_acc": sums["batch_acc"] / n}
        res["total"] = self.w_recon * res["recon"] + self.w_batch * res["batch"]
        return res


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _as_source(data):
    """Tensors -> InMemorySource; sources pass through; None stays None."""
    from .loaders import InMemorySource

    if data is None or hasattr(data, "epoch"):
        return data
    return InMemorySource(data, data.X.device)


def fit(task, train, val=None, *, max_epochs: int, patience: int, batch_size: int,
        seed: int = 0, progress: Callable[[dict], None] | None = None, cancel=None,
        runaway_factor: float = 3.0, comm=None, max_steps_per_epoch: int | None = None,
        precision: str = "fp32", min_epochs: int = 1, bn_refresh: int | None = None,
        deadline: float | None = None, min_delta: float = 0.0) -> dict:
    """Train ``task.net`` and return its history.

    ``train``/``val``: :class:`Tensors` or minibatch sources (:mod:`napari_scmedal.models.loaders`).
    ``comm``: a :class:`~napari_scmedal.distributed.Comm`; with several ranks the task's modules are
    wrapped in DistributedDataParallel, each rank trains on its shard with ``batch_size // world``
    rows per step (the global minibatch stays ``batch_size``), validation sums are all-reduced so every
    rank takes the same early-stopping decisions, and BatchNorm statistics are re-broadcast from rank
    0 before each validation. ``max_steps_per_epoch`` caps the minibatches of an epoch (a partial
    epoch, for benchmarks). ``precision``: ``"fp32"`` or ``"bf16"`` (autocast of the forward passes).
    ``min_epochs``: early stopping waits at least this many epochs (a minimum number of optimiser steps).
    ``bn_refresh``: before every validation (and so before the best weights are snapshotted) the
    BatchNorm running statistics are recomputed from up to this many training rows in inference
    conditions (:func:`napari_scmedal.nn.refresh_bn_stats`; exact when the training split fits);
    ``None`` keeps the running averages (the reference). ``min_delta``: a validation loss counts as a new
    best (resetting the patience) only when it is lower than the best by this fraction of the best's
    magnitude (the best weights are still the lowest loss seen). ``deadline``: a ``time.perf_counter()`` value
    after which training stops at the end of the epoch (``stopped="max_time"``, best weights kept).

    History: ``{"model", "epochs": [...], "train": {name: [per epoch]}, "val": {name: [...]},
    "best_epoch", "best_val", "stopped": "early_stopping"|"max_epochs"|"max_time"|"cancelled"|"nonfinite",
    "elapsed_s", "warnings": [...], "steps", "cells_per_s", "world_size"}``. The best weights (lowest
    validation ``total``; training ``total`` when there is no validation split) are restored before
    returning, also on cancel and on a NaN/inf loss (which then raises :class:`TrainingError`).
    """
    from ..distributed import Comm

    comm = comm or Comm()
    if precision not in PRECISIONS:
        raise TrainingError(f"precision={precision!r} is not one of {list(PRECISIONS)} ('bf16' is meant for CUDA "
                            f"GPUs).")
    net = task.net
    task.precision = precision
    task.distribute(comm)
    train = _as_source(train)
    val = _as_source(val)
    local_bs = max(2, int(batch_size) // comm.world)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    torch.manual_seed(int(seed) + 7777 * comm.rank)
    hist = {"model": task.name, "epochs": [], "train": {k: [] for k in task.train_names},
            "val": {}, "best_epoch": None, "best_val": None, "stopped": "max_epochs",
            "elapsed_s": 0.0, "warnings": [], "batch_size": int(batch_size), "world_size": comm.world,
            "steps": 0, "cells_seen": 0, "precision": precision}
    best_state, best_val, wait = None, math.inf, 0
    initial_state = _snapshot(net)  # restored when no epoch completes (e.g. NaN in the first epoch)
    min_epochs = max(1, int(min_epochs))
    hist["min_epochs"] = min_epochs
    hist["bn_refresh"] = None if bn_refresh is None else int(bn_refresh)
    refresh_gen_seed = int(seed) + 99991
    has_val = val is not None and val.n > 0
    t0 = time.perf_counter()
    chance = math.log(max(getattr(net, "n_batches", 2), 2))
    warned_runaway = False
    single = comm.world == 1

    def restore():
        net.load_state_dict(best_state if best_state is not None else initial_state)

    def nonfinite(value, epoch, what):
        restore()
        hist["stopped"] = "nonfinite"
        hist["elapsed_s"] = time.perf_counter() - t0
        be = hist["best_epoch"]
        kept = (f"the best weights (epoch {be}) are kept" if be else
                "no epoch completed, so the network is UNTRAINED: its initial weights are restored, it cannot be "
                "used and a saved model marks it as not trained")
        err = TrainingError(
            f"The {task.name.upper()} {what} loss became {value} at epoch {epoch}; {kept}. Lower the learning rate "
            f"(lr=...), lower the loss weights (w_recon/w_adv), or check the input for extreme values; "
            f"model.history shows the losses so far.")
        err.history = hist
        return err

    for epoch in range(1, max_epochs + 1):
        sums = None
        steps = 0
        cancelled = False
        for b in train.epoch(local_bs, gen, epoch, comm, max_steps_per_epoch):
            vals = task.train_step(b)
            w = b.n
            sums = vals * w if sums is None else sums + vals * w
            steps += w
            hist["steps"] += 1
            if single and not bool(torch.isfinite(vals[0])):
                raise nonfinite(float(vals[0]), epoch, "training")
            if single and is_cancelled(cancel):
                cancelled = True
                break
        if sums is None:
            sums = torch.zeros(len(task.train_names), device=next(net.parameters()).device)
        if bn_refresh is not None and steps > 0:
            _refresh_bn(task, train, int(bn_refresh), refresh_gen_seed)
        if not single:  # global means over every rank's rows
            packed = torch.cat([sums.detach().to(torch.float64).reshape(-1),
                                torch.tensor([float(steps)], dtype=torch.float64, device=sums.device)])
            packed = comm.sum_tensor_(packed.to(comm.device)).cpu()
            sums, steps = packed[:-1], int(packed[-1])
            comm.broadcast_module_state_(net)  # BatchNorm running statistics of rank 0 everywhere
        hist["cells_seen"] += steps
        if cancelled and steps == 0:
            hist["stopped"] = "cancelled"
            break
        if steps == 0:
            raise TrainingError(
                f"epoch {epoch} of {task.name.upper()} had no minibatch: {train.n} training cells cannot fill a "
                f"minibatch of {local_bs} per process ({comm.world} process(es)). Use a smaller batch_size, fewer "
                f"processes or more cells.")
        tr = dict(zip(task.train_names, (sums / max(steps, 1)).tolist()))
        if not math.isfinite(tr["total"]):
            raise nonfinite(tr["total"], epoch, "training")
        for k, v in tr.items():
            hist["train"][k].append(v)
        vl = {}
        if has_val:
            vs = task.eval_sums(val.chunks(4096, comm))
            if not single:
                keys = sorted(vs)
                red = comm.sum(np.array([vs[k] for k in keys], dtype=np.float64))
                vs = dict(zip(keys, red.tolist()))
            vl = task.eval_finalize(vs)
        for k, v in vl.items():
            hist["val"].setdefault(k, []).append(v)
        hist["epochs"].append(epoch)
        monitor = vl["total"] if has_val else tr["total"]
        if not math.isfinite(monitor):
            raise nonfinite(monitor, epoch, "validation")
        if monitor < best_val:
            improved = not math.isfinite(best_val) or monitor < best_val - float(min_delta) * abs(best_val)
            best_val = monitor
            best_state = _snapshot(net)
            hist["best_epoch"], hist["best_val"] = epoch, monitor
            wait = 0 if improved else wait + 1
        else:
            wait += 1
        if "adv" in tr and not warned_runaway and tr["adv"] > runaway_factor * chance:
            msg = (f"FE adversarial cross-entropy {tr['adv']:.2f} exceeds {runaway_factor:g} x chance "
                   f"({chance:.2f}) at epoch {epoch}: the encoder is beating the adversary by a wide margin "
                   f"(runaway negated loss). Consider a lower w_adv or adv_bound=log(n_batches).")
            hist["warnings"].append(msg)
            if comm.is_main:
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            warned_runaway = True
        now = time.perf_counter()
        elapsed = now - t0
        out_of_time = deadline is not None and now >= deadline
        if not single and deadline is not None:  # one decision for every rank (else a collective hangs)
            out_of_time = bool(comm.max(np.array([float(out_of_time)]))[0] > 0)
        if progress is not None and comm.is_main:
            progress({"model": task.name, "epoch": epoch, "max_epochs": max_epochs, "train": tr, "val": vl,
                      "elapsed_s": elapsed,
                      "eta_s": _eta(elapsed / epoch, epoch, max_epochs, min_epochs, patience, wait, deadline, now),
                      "best_epoch": hist["best_epoch"], "patience_left": patience - wait,
                      "min_epochs": min_epochs,
                      "last_epoch": expected_last_epoch(epoch, max_epochs, min_epochs, patience, wait)})
        if single and (cancelled or is_cancelled(cancel)):
            hist["stopped"] = "cancelled"
            break
        if wait >= patience and epoch >= min_epochs:
            hist["stopped"] = "early_stopping"
            break
        if out_of_time and epoch < max_epochs:
            hist["stopped"] = "max_time"
            break
    restore()
    net.eval()
    hist["elapsed_s"] = time.perf_counter() - t0
    hist["cells_per_s"] = hist["cells_seen"] / max(hist["elapsed_s"], 1e-9)
    if not single:
        hist["max_rank_divergence"] = comm.max_divergence(net)
        if hist["max_rank_divergence"] > 0:
            raise TrainingError(f"the {task.name.upper()} weights differ between ranks after training (max "
                                f"{hist['max_rank_divergence']:.3g}); distributed synchronisation failed. Report "
                                f"this with the torchrun command used.")
    return hist


def expected_last_epoch(epoch: int, max_epochs: int, min_epochs: int, patience: int, wait: int) -> int:
    """The epoch this network is expected to stop at, assuming no new best epoch from now on: early stopping
    after ``patience - wait`` more epochs, not before ``min_epochs``, at most ``max_epochs``."""
    return int(min(max_epochs, max(min_epochs, epoch + max(patience - wait, 0))))


def _eta(per_epoch: float, epoch: int, max_epochs: int, min_epochs: int, patience: int, wait: int,
         deadline: float | None, now: float) -> float:
    """Seconds left for this network until :func:`expected_last_epoch`, capped by the deadline. Each new best
    epoch pushes it back; it is what a user can expect, not an upper bound."""
    left = expected_last_epoch(epoch, max_epochs, min_epochs, patience, wait) - epoch
    eta = per_epoch * max(left, 0)
    if deadline is not None:
        eta = min(eta, max(deadline - now, 0.0))
    return float(eta)


def _refresh_bn(task, train, max_rows: int, seed: int) -> None:
    """Recompute ``task.net``'s BatchNorm statistics on up to ``max_rows`` training rows drawn at random over
    the whole split (the same rows every epoch), in equal chunks of at most 8,192 rows; the raw network is
    used (never the DDP wrapper, whose forward would re-broadcast rank 0's buffers; rank 0's statistics
    are then broadcast to every rank)."""
    from .loaders import sample_rows

    if max_rows <= 0 or int(getattr(train, "n", 0)) < 2:
        return
    n = min(int(train.n), int(max_rows))
    chunk = -(-n // -(-n // 8192))  # equal chunks of at most 8,192 rows: each counts the same
    with torch.no_grad():
        refresh_bn_stats(task.net, task.bn_forward, (b for b in sample_rows(train, n, seed, chunk) if b.n >= 2))
