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

import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import TrainingError
from ..nn import clipped_cross_entropy
from .networks import AE, FE, RE

__all__ = ["Tensors", "FETask", "AETask", "RETask", "fit", "resolve_device", "is_cancelled"]


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

    def chunks(self, size: int):
        for i in range(0, self.n, size):
            sl = slice(i, i + size)
            yield Tensors(self.X[sl], self.batch[sl], self.batch_onehot[sl],
                          None if self.label is None else self.label[sl])


def resolve_device(device=None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was requested but CUDA is not available in this PyTorch "
                            f"build; use device='cpu' (or None to choose automatically).")
    return dev


def is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _mse(x, x_hat):
    return ((x - x_hat) ** 2).mean(dim=1).mean()


def _label_ce(logits, label):
    mask = label >= 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return clipped_cross_entropy(logits[mask], label[mask])


class FETask:
    """FE / FEC training (``net`` is an :class:`FE`). Loss names: ``recon`` (MSE), ``adv`` (the
    adversary's cross-entropy on the batch), ``class`` (FEC), ``total`` (the autoencoder objective
    ``w_recon*recon - w_adv*adv [+ w_class*class]``) and ``adv_acc`` (adversary accuracy).

    ``adv_bound``: optional bounded variant of the negated adversarial term, ``-w_adv *
    min(CE, adv_bound)`` (off by default; ``log(B)`` = chance level is a natural choice).
    """

    name = "fe"

    def __init__(self, net: FE, lr: float, w_recon: float = 1000.0, w_adv: float = 1.0,
                 w_class: float = 0.0, adv_bound: float | None = None, adam_eps: float = 1e-7):
        self.net = net
        self.w_recon, self.w_adv, self.w_class = float(w_recon), float(w_adv), float(w_class)
        self.adv_bound = adv_bound
        self.opt_adv = torch.optim.Adam(net.adversary.parameters(), lr=lr, eps=adam_eps)
        self.opt_ae = torch.optim.Adam(net.autoencoder_parameters(), lr=lr, eps=adam_eps)
        self.use_class = net.class_head is not None and w_class > 0
        self.name = "fec" if self.use_class else "fe"

    def _adv_term(self, ce):
        if self.adv_bound is not None:
            ce = ce.clamp(max=float(self.adv_bound))
        return -self.w_adv * ce

    def train_step(self, b: Tensors) -> torch.Tensor:
        net = self.net
        net.train()
        acts = net.encoder(b.X)
        # 1. adversary step on detached activations
        adv_d = clipped_cross_entropy(net.adversary_logits(acts, detach=True), b.batch)
        self.opt_adv.zero_grad(set_to_none=True)
        adv_d.backward()
        self.opt_adv.step()
        # 2. autoencoder step against the just-updated adversary (the encoder forward is reused:
        #    its weights did not change in step 1, so the activations are identical)
        for p in net.adversary.parameters():
            p.requires_grad_(False)
        try:
            recon = _mse(b.X, net.decoder(acts[-1]))
            adv_logits = net.adversary_logits(acts)
            adv = clipped_cross_entropy(adv_logits, b.batch)
            total = self.w_recon * recon + self._adv_term(adv)
            cls = None
            if self.use_class and b.label is not None:
                cls = _label_ce(net.class_head(acts[-1]), b.label)
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
    def eval_losses(self, data: Tensors, chunk: int = 4096) -> dict[str, float]:
        net = self.net
        net.eval()
        n = data.n
        sums = {"recon": 0.0, "adv": 0.0, "adv_acc": 0.0, "class": 0.0}
        n_lab = 0
        for b in data.chunks(chunk):
            acts = net.encoder(b.X)
            m = b.n
            sums["recon"] += float(_mse(b.X, net.decoder(acts[-1]))) * m
            logits = net.adversary_logits(acts)
            sums["adv"] += float(clipped_cross_entropy(logits, b.batch)) * m
            sums["adv_acc"] += float((logits.argmax(1) == b.batch).float().sum())
            if self.use_class and b.label is not None:
                k = int((b.label >= 0).sum())
                if k:
                    sums["class"] += float(_label_ce(net.class_head(acts[-1]), b.label)) * k
                    n_lab += k
        out = {k: v / max(n, 1) for k, v in sums.items() if k != "class"}
        total = self.w_recon * out["recon"] + float(self._adv_term(torch.tensor(out["adv"])))
        if self.use_class:
            out["class"] = sums["class"] / max(n_lab, 1)
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

    def train_step(self, b: Tensors) -> torch.Tensor:
        net = self.net
        net.train()
        out = net(b.X)
        recon = _mse(b.X, out["recon"])
        total = self.w_recon * recon
        vals = [recon]
        if self.use_class and b.label is not None:
            cls = _label_ce(out["class_logits"], b.label)
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
    def eval_losses(self, data: Tensors, chunk: int = 4096) -> dict[str, float]:
        net = self.net
        net.eval()
        rec, cls, n_lab = 0.0, 0.0, 0
        for b in data.chunks(chunk):
            out = net(b.X)
            rec += float(_mse(b.X, out["recon"])) * b.n
            if self.use_class and b.label is not None:
                k = int((b.label >= 0).sum())
                if k:
                    cls += float(_label_ce(out["class_logits"], b.label)) * k
                    n_lab += k
        res = {"recon": rec / max(data.n, 1)}
        res["total"] = self.w_recon * res["recon"]
        if self.use_class:
            res["class"] = cls / max(n_lab, 1)
            res["total"] += self.w_class * res["class"]
        return res


class RETask:
    """RE training. Loss names: ``recon`` (MSE), ``batch`` (head CE), ``kl_enc``/``kl_dec`` (mean
    per-block KL estimates, training only), ``total`` (train: with ``kl_weight * (kl_enc + kl_dec)``;
    validation: without KL, posterior means) and ``batch_acc``."""

    name = "re"

    def __init__(self, net: RE, lr: float, w_recon: float = 110.0, w_batch: float = 0.1,
                 kl_weight: float = 1e-5, adam_eps: float = 1e-7):
        self.net = net
        self.w_recon, self.w_batch, self.kl_weight = float(w_recon), float(w_batch), float(kl_weight)
        self.opt = torch.optim.Adam(net.parameters(), lr=lr, eps=adam_eps)

    train_names = ["total", "recon", "batch", "kl_enc", "kl_dec", "batch_acc"]

    def train_step(self, b: Tensors) -> torch.Tensor:
        net = self.net
        net.train()
        out = net(b.X, b.batch_onehot)
        recon = _mse(b.X, out["recon"])
        ce = clipped_cross_entropy(out["batch_logits"], b.batch)
        kl_e, kl_d = net.kl()
        total = self.w_recon * recon + self.w_batch * ce + self.kl_weight * (kl_e + kl_d)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        acc = (out["batch_logits"].detach().argmax(1) == b.batch).float().mean()
        return torch.stack([total.detach(), recon.detach(), ce.detach(), kl_e.detach(), kl_d.detach(), acc])

    @torch.no_grad()
    def eval_losses(self, data: Tensors, chunk: int = 4096) -> dict[str, float]:
        net = self.net
        net.eval()
        rec = ce = acc = 0.0
        for b in data.chunks(chunk):
            out = net(b.X, b.batch_onehot)
            rec += float(_mse(b.X, out["recon"])) * b.n
            ce += float(clipped_cross_entropy(out["batch_logits"], b.batch)) * b.n
            acc += float((out["batch_logits"].argmax(1) == b.batch).float().sum())
        n = max(data.n, 1)
        res = {"recon": rec / n, "batch": ce / n, "batch_acc": acc / n}
        res["total"] = self.w_recon * res["recon"] + self.w_batch * res["batch"]
        return res


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def fit(task, train: Tensors, val: Tensors | None, *, max_epochs: int, patience: int, batch_size: int,
        seed: int = 0, progress: Callable[[dict], None] | None = None, cancel=None,
        runaway_factor: float = 3.0) -> dict:
    """Train ``task.net`` and return its history.

    History: ``{"model", "epochs": [...], "train": {name: [per epoch]}, "val": {name: [...]},
    "best_epoch", "best_val", "stopped": "early_stopping"|"max_epochs"|"cancelled"|"nonfinite",
    "elapsed_s", "warnings": [...]}``. The best weights (lowest validation ``total``; training
    ``total`` when there is no validation split) are restored before returning, also on
    cancel and on a NaN/inf loss (which then raises :class:`TrainingError`).
    """
    net = task.net
    device = train.X.device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    torch.manual_seed(int(seed))
    hist = {"model": task.name, "epochs": [], "train": {k: [] for k in task.train_names},
            "val": {}, "best_epoch": None, "best_val": None, "stopped": "max_epochs",
            "elapsed_s": 0.0, "warnings": [], "batch_size": int(batch_size)}
    best_state, best_val, wait = None, math.inf, 0
    has_val = val is not None and val.n > 0
    t0 = time.perf_counter()
    n = train.n
    chance = math.log(max(getattr(net, "n_batches", 2), 2))
    warned_runaway = False

    def restore():
        if best_state is not None:
            net.load_state_dict(best_state)

    for epoch in range(1, max_epochs + 1):
        perm = torch.randperm(n, generator=gen).to(device)
        sums = None
        steps = 0
        cancelled = False
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if idx.numel() < 2:  # BatchNorm needs >= 2 samples in training mode
                continue
            vals = task.train_step(train.take(idx))
            w = idx.numel()
            sums = vals * w if sums is None else sums + vals * w
            steps += w
            if not bool(torch.isfinite(vals[0])):
                restore()
                hist["stopped"] = "nonfinite"
                hist["elapsed_s"] = time.perf_counter() - t0
                be = hist["best_epoch"]
                kept = f"the best weights (epoch {be}) are kept" if be else "no epoch had completed, so the weights are the initial ones"
                err = TrainingError(
                    f"The {task.name.upper()} training loss became {float(vals[0])} at epoch {epoch}; "
                    f"{kept}. Lower the learning rate (lr=...), lower the loss weights (w_recon/w_adv), "
                    f"or check the input for extreme values; model.history shows the losses so far.")
                err.history = hist
                raise err
            if is_cancelled(cancel):
                cancelled = True
                break
        if cancelled and steps == 0:
            hist["stopped"] = "cancelled"
            break
        tr = (sums / max(steps, 1)).tolist()
        tr = dict(zip(task.train_names, tr))
        for k, v in tr.items():
            hist["train"][k].append(v)
        vl = task.eval_losses(val) if has_val else {}
        for k, v in vl.items():
            hist["val"].setdefault(k, []).append(v)
        hist["epochs"].append(epoch)
        monitor = vl["total"] if has_val else tr["total"]
        if not math.isfinite(monitor):
            restore()
            hist["stopped"] = "nonfinite"
            hist["elapsed_s"] = time.perf_counter() - t0
            err = TrainingError(
                f"The {task.name.upper()} validation loss became {monitor} at epoch {epoch}; the best weights "
                f"(epoch {hist['best_epoch']}) are kept. Lower the learning rate or the loss weights.")
            err.history = hist
            raise err
        if monitor < best_val:
            best_val, wait = monitor, 0
            best_state = _snapshot(net)
            hist["best_epoch"], hist["best_val"] = epoch, monitor
        else:
            wait += 1
        if "adv" in tr and not warned_runaway and tr["adv"] > runaway_factor * chance:
            msg = (f"FE adversarial cross-entropy {tr['adv']:.2f} exceeds {runaway_factor:g} x chance "
                   f"({chance:.2f}) at epoch {epoch}: the encoder is beating the adversary by a wide margin "
                   f"(runaway negated loss). Consider a lower w_adv or adv_bound=log(n_batches).")
            hist["warnings"].append(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            warned_runaway = True
        elapsed = time.perf_counter() - t0
        if progress is not None:
            progress({"model": task.name, "epoch": epoch, "max_epochs": max_epochs, "train": tr, "val": vl,
                      "elapsed_s": elapsed, "eta_s": elapsed / epoch * (max_epochs - epoch),
                      "best_epoch": hist["best_epoch"], "patience_left": patience - wait})
        if cancelled or is_cancelled(cancel):
            hist["stopped"] = "cancelled"
            break
        if wait >= patience:
            hist["stopped"] = "early_stopping"
            break
    restore()
    net.eval()
    hist["elapsed_s"] = time.perf_counter() - t0
    return hist
