"""Training: the FE, FEC and RE networks fitted one after the other, and each one's health checked.

:class:`Training` (a mixin of :class:`~napari_scmedal.model.ScMEDAL`) holds :meth:`train` and what it uses:
the minibatch sources of the splits, the derived settings, the per-network task and the health check.
"""

from __future__ import annotations

import time
from typing import TypeVar, cast

import numpy as np
import torch

from ..errors import DataError, ScMEDALError, TrainingError
from .._utils import is_cancelled
from ..models import FE, RE, FETask, RETask, Tensors, fit
from ..models.defaults import derive_settings
from ._state import _State

__all__ = ["Training"]

_Model = TypeVar("_Model", bound="Training")


class Training(_State):
    """The model's training: :meth:`train` and its helpers."""

    def train(self: _Model, max_epochs: int | None = None, patience: int | None = None, batch_size: int | None = None,
              progress=None, cancel=None, *, precision: str = "fp32", data_on_device="auto",
              max_steps_per_epoch: int | None = None, buffer_blocks: int = 4,
              max_time: float | None = None, health_warnings: bool = True) -> _Model:
        """Train FE, then FEC (when a label key is given), then RE; return ``self``.

        Calling ``train`` again continues from the current weights with fresh optimisers.

        Parameters
        ----------
        max_epochs, patience, batch_size
            Default to the preset's; with the default ``"auto"`` preset they, the learning rate and the
            minimum number of epochs are derived from the number of training cells (``model.derived``
            says which and why).
        progress
            ``progress(info)`` is called after every epoch with ``{"model", "epoch", "max_epochs",
            "train", "val", "elapsed_s", "eta_s", ...}``.
        cancel
            A ``threading.Event`` or a zero-argument callable; when it turns true training stops and the
            best weights so far are kept (later models are not trained).
        precision
            ``"bf16"`` autocasts the forward passes to bfloat16 (for CUDA); see docs/scaling.md.
        data_on_device
            ``"auto"``, True or False: keep in-memory training data on the training device when it fits
            (auto: always on CPU, on CUDA when it takes at most half of the free memory) or in pinned host
            memory otherwise.
        max_steps_per_epoch
            Caps the minibatches of an epoch.
        buffer_blocks
            File blocks shuffled together when training out of core. Inside ``torchrun`` every process
            trains its shard with DistributedDataParallel.
        max_time
            Seconds for the whole call: each network gets an equal share of what is left when it starts
            (time a network does not use passes to the next) and stops at the end of the epoch that
            crosses it, with its best weights (``history[kind]["stopped"] == "max_time"``).
        health_warnings
            After each network its training health is measured (``model.health``); problems raise a
            ``TrainingHealthWarning`` unless False (for callers that show ``model.health`` themselves:
            the CLI, the widget).

        Returns
        -------
        ScMEDAL
            ``self``.

        Raises
        ------
        TrainingError
            A NaN/inf loss, with the best weights kept.
        DataError
            For a model loaded from a file (it has no training data).
        """
        if self._prepared is None and self._plan is None:
            raise DataError("this model was loaded from a file and has no training data attached; train a new "
                            "model with ScMEDAL(adata, ...) instead.")
        settings = self._train_settings(max_epochs, patience, batch_size, max_steps_per_epoch, max_time)
        comm = self._comm()
        start = time.perf_counter()
        self._cf_anchors = None  # the weights change: anchors are recomputed from the trained networks
        tr, va = self._sources(data_on_device, buffer_blocks)
        order = [k for k in ("fe", "fec", "re") if k in self.nets]
        devs = [self.device.index or 0] if self.device.type == "cuda" else []
        fit_args = {"progress": progress, "cancel": cancel, "comm": comm,
                    "max_steps_per_epoch": max_steps_per_epoch, "precision": precision}
        with self._threads(), torch.random.fork_rng(devices=devs):
            for i, kind in enumerate(order):
                if is_cancelled(cancel):
                    break
                deadline = None
                if max_time is not None:
                    now = time.perf_counter()
                    deadline = now + max(float(max_time) - (now - start), 0.0) / (len(order) - i)
                hist = self._fit_network(kind, i, settings, tr, va, deadline, fit_args)
                if kind in self._trained and comm.is_main:
                    self._check_health(kind, va if va.n else tr, tr, warn=health_warnings)
                if hist["stopped"] == "cancelled":
                    break
        return self

    def _train_settings(self, max_epochs, patience, batch_size, max_steps_per_epoch, max_time) -> dict:
        """The settings of a :meth:`train` call (given, else derived), checked; recorded in ``self.derived``."""
        c = self.config
        for name, v in (("max_epochs", max_epochs), ("patience", patience), ("batch_size", batch_size)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise ScMEDALError(f"{name} must be a whole number (got {v!r}).")
        needs_var = any(c.get(k) is None for k in ("fe_w_recon", "fec_w_recon"))
        settings, reasons = derive_settings(len(self._split_idx.get("train", [])), c,
                                            {"max_epochs": max_epochs, "patience": patience,
                                             "batch_size": batch_size},
                                            variance=self._input_variance() if needs_var else None)
        max_epochs, patience, batch_size = settings["max_epochs"], settings["patience"], settings["batch_size"]
        if max_epochs < 1 or patience < 1 or batch_size < 2:
            raise ScMEDALError(f"need max_epochs >= 1, patience >= 1 and batch_size >= 2 (got {max_epochs}, "
                               f"{patience}, {batch_size}).")
        if max_steps_per_epoch is not None and int(max_steps_per_epoch) < 1:
            raise ScMEDALError(f"max_steps_per_epoch must be at least 1 (got {max_steps_per_epoch}).")
        if max_time is not None and not (float(max_time) > 0):
            raise ScMEDALError(f"max_time must be a positive number of seconds (got {max_time!r}).")
        self.derived = {"preset": self.preset, "n_train": len(self._split_idx.get("train", [])),
                        "settings": settings, "reasons": reasons}
        return settings

    def _fit_network(self, kind: str, i: int, settings: dict, tr, va, deadline, fit_args: dict) -> dict:
        """Fit network ``kind`` (the ``i``-th trained); record its history and whether it is trained."""
        c = self.config
        max_epochs, patience, batch_size = settings["max_epochs"], settings["patience"], settings["batch_size"]
        try:
            hist = fit(self._task(kind, settings), tr, va, max_epochs=max_epochs, patience=patience,
                       batch_size=batch_size, seed=self.seed + 1000 * i, min_epochs=settings["min_epochs"],
                       bn_refresh=c.get("bn_refresh"), deadline=deadline,
                       min_delta=float(c.get("min_delta") or 0.0), **fit_args)
        except TrainingError as e:
            self.nets[kind].eval()
            partial = getattr(e, "history", None)
            if partial is not None:
                self._record(kind, partial)
            raise
        hist["config"] = {"max_epochs": max_epochs, "patience": patience, "batch_size": batch_size,
                          "lr": settings["lr"], "min_epochs": settings["min_epochs"],
                          "w_recon": settings.get(f"{kind}_w_recon", c["re_w_recon"]),
                          "backed": self.backed, "world_size": fit_args["comm"].world}
        self._record(kind, hist)
        return hist

    def _record(self, kind: str, hist: dict) -> None:
        self.history[kind] = hist
        if hist["best_epoch"] is not None and kind not in self._trained:
            self._trained.append(kind)

    def _sources(self, data_on_device="auto", buffer_blocks: int = 4):
        """Minibatch sources of the training and validation splits (see napari_scmedal.models.loaders)."""
        from ..models.loaders import InMemorySource, StreamingSource, expected_bytes, fits_on_device

        if self._plan is not None:
            world = self._comm().world
            return tuple(StreamingSource(self._plan, self._split_idx[k], self.device, buffer_blocks=buffer_blocks,
                                         seed=self.seed, world=world) for k in ("train", "val"))
        p = self._prepared
        n = sum(len(self._split_idx[k]) for k in ("train", "val"))
        nbytes = expected_bytes(n, self.recipe.n_genes, len(self.batches))
        on_device = fits_on_device(nbytes, self.device) if data_on_device == "auto" else bool(data_on_device)
        out = []
        for k in ("train", "val"):
            t = Tensors.from_prepared(p, self._split_idx[k], self.device if on_device else "cpu")
            if not on_device and self.device.type == "cuda":
                t = t.pin_memory()
            out.append(InMemorySource(t, self.device))
        return tuple(out)

    def _input_variance(self, max_rows: int = 20_000) -> float:
        """Mean per-gene variance of the scaled training inputs (a seeded sample of at most ``max_rows``)."""
        idx = np.asarray(self._split_idx.get("train", []), dtype=np.int64)
        if idx.size < 2:
            return float("nan")
        if idx.size > max_rows:  # 10 random runs of consecutive training cells (few reads from a file)
            run = max_rows // 10
            starts = np.random.default_rng(self.seed).choice(idx.size - run, 10, replace=False)
            idx = np.unique(np.concatenate([idx[a:a + run] for a in starts]))
        X = np.asarray(self._prepare(None).subset(idx).X, dtype=np.float64)
        return float(X.var(0).mean())

    def _task(self, kind: str, settings: dict):
        c, net = dict(self.config), self.nets[kind]
        lr = settings["lr"]
        c.update({k: settings[k] for k in ("fe_w_recon", "fec_w_recon")})
        if kind == "fe":  # make_networks builds FE networks for "fe" and "fec", an RE network for "re"
            return FETask(cast(FE, net), lr, c["fe_w_recon"], c["fe_w_adv"], 0.0, c["adv_bound"], c["adam_eps"],
                          w_center=c.get("fe_w_center", 0.0))  # .get: configs of older model files lack it
        if kind == "fec":
            return FETask(cast(FE, net), lr, c["fec_w_recon"], c["fec_w_adv"], c["fec_w_class"], c["adv_bound"],
                          c["adam_eps"])
        return RETask(cast(RE, net), lr, c["re_w_recon"], c["re_w_batch"], c["kl_weight"], c["adam_eps"])

    def _check_health(self, kind: str, val_source, train_source=None, warn: bool = True) -> None:
        """Measure the trained network on validation cells; warn (TrainingHealthWarning) when out of bounds."""
        from ..models.health import check_network, warn_if_unhealthy

        self.health[kind] = check_network(self, kind, val_source, train_source=train_source)
        if warn:
            warn_if_unhealthy(kind, self.health[kind])
