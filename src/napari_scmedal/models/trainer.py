"""The generic trainer of the scMEDAL networks.

:func:`fit` -- minibatching by an index permutation over tensors already on the device (no copy of the data
set per epoch) or from a streaming source, early stopping on the validation total loss with the best weights
restored, per-epoch progress with ETA, cancel, NaN/inf guard, optional data-parallel training and bf16
autocast, full history. :func:`resolve_device` picks the training device.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from .._utils import is_cancelled
from ..distributed import Comm
from ..errors import TrainingError
from ..nn import refresh_bn_stats
from .loaders import InMemorySource, sample_rows

__all__ = ["PRECISIONS", "expected_last_epoch", "fit", "resolve_device"]

#: Training precisions: float32, or bfloat16 autocast of the forward passes (meant for CUDA).
PRECISIONS = ("fp32", "bf16")

def resolve_device(device=None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was requested but CUDA is not available in this PyTorch "
                            f"build; use device='cpu' (or None to choose automatically).")
    return dev


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _as_source(data):
    """Tensors -> InMemorySource; sources pass through; None stays None."""
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
    if max_rows <= 0 or int(getattr(train, "n", 0)) < 2:
        return
    n = min(int(train.n), int(max_rows))
    chunk = -(-n // -(-n // 8192))  # equal chunks of at most 8,192 rows: each counts the same
    with torch.no_grad():
        refresh_bn_stats(task.net, task.bn_forward, (b for b in sample_rows(train, n, seed, chunk) if b.n >= 2))
