"""Training steps of the scMEDAL networks: one optimiser step per minibatch and the validation losses.

* :class:`FETask` -- FE/FEC: the reference's alternating two-optimiser step (adversary on detached encoder
  activations, then the autoencoder with the negated adversary loss), not gradient reversal.
* :class:`AETask` -- AE/AEC baselines: reconstruction (+ cell-type cross-entropy), one Adam, no adversary.
* :class:`RETask` -- RE: one Adam on ``w_recon * MSE + w_batch * CE + kl_weight * (mean enc KL + mean dec KL)``
  with a single reparameterised sample; validation without KL, posterior means.

Every task exposes ``net``, ``name``, ``train_names``, ``train_step(b)``, ``eval_sums(chunks)``,
``eval_finalize(sums)``, ``bn_forward(b)`` and ``distribute(comm)``: what :func:`napari_scmedal.models.fit` uses.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..nn import clipped_cross_entropy
from .batch import Tensors
from .networks import AE, FE, RE

__all__ = ["AETask", "FETask", "RETask", "batch_center_penalty"]


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
    #: The trained network: an FE for FETask, an AE for AETask (a FETask subclass), an RE for RETask.
    net: Any

    if TYPE_CHECKING:  # implemented by every task
        def eval_sums(self, chunks) -> dict[str, float]: ...

        def eval_finalize(self, sums: dict) -> dict[str, float]: ...

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

