"""``ScMEDAL``: the public, scverse-style API of napari-scmedal (pure Python, no Qt).

>>> import napari_scmedal as sm
>>> model = sm.ScMEDAL(adata, batch_key="batch", label_key="cell_line", preset="quick", seed=0)
>>> model.train()
>>> z_fe = model.get_latent_representation("fe")            # batch-invariant latent
>>> x_cf = model.get_counterfactual_expression("Dropseq_3cl")  # every cell as if in that batch
>>> x_lit = model.get_counterfactual_expression("Dropseq_3cl", method="reference")  # METHOD.md's literal swap
>>> model.save("model.scmedal.safetensors"); model = sm.ScMEDAL.load("model.scmedal.safetensors")

See docs/model.md for the presets, the hyperparameters and the file format.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._utils import json_safe
from .errors import DataError, ModelFileError, ScMEDALError, TrainingError
from .models import FE, RE, FETask, RETask, Tensors, fit, is_cancelled, resolve_device
from .models.defaults import BN_REFRESH_ROWS, derive_settings, validate_config
from .modelfile import (FILE_FORMAT, FILE_VERSION, anchors_from_tensors, check_shapes, read_model_file, read_tensors,
                        write_model_file)
from .nn import set_bn_momentum

__all__ = ["ScMEDAL", "PRESETS", "DEFAULT_PRESET", "CF_DEFAULT", "FILE_FORMAT", "FILE_VERSION", "CF_METHODS", "CF_NEIGHBOURS",
           "CF_ANCHORS_PER_BATCH"]

#: Hyperparameters of the presets. "paper" = METHOD.md section 3 (reference defaults, AML weights);
#: "quick" = laptop setting tuned on the bundled CellBench sample (see docs/model.md).
PRESETS: dict[str, dict] = {
    "paper": dict(
        lr=1e-4, batch_size=512, max_epochs=500, patience=30, hidden=[512, 132], latent=50,
        fe_w_recon=1000.0, fe_w_adv=1.0, fe_w_center=0.0,
        fec_w_recon=2000.0, fec_w_adv=0.5, fec_w_class=3.0,
        re_w_recon=110.0, re_w_batch=0.1, kl_weight=1e-5, prior_sd=0.25, kl_estimator="sample",
        bn_momentum=0.01, adv_bound=None, adam_eps=1e-7,
        input_kind="auto", split_seed=42, split_fractions=[0.6, 0.2, 0.2], train_fec=True,
        min_epochs=1, bn_refresh=None, min_delta=0.0,
    ),
}
PRESETS["quick"] = dict(
    PRESETS["paper"],
    lr=1e-3, batch_size=64, max_epochs=150, patience=10, bn_momentum=0.1,
    fe_w_recon=600.0, fe_w_adv=1.0,
)
#: The default: batch size, learning rate, epochs, patience and the minimum number of steps derived from the
#: number of training cells (napari_scmedal.models.defaults), BatchNorm statistics recomputed before every
#: validation. "paper" and "quick" stay available as explicit, fixed settings.
PRESETS["auto"] = dict(
    PRESETS["paper"],
    lr=None, batch_size=None, max_epochs=None, patience=None, min_epochs=None,
    bn_momentum=0.1, bn_refresh=BN_REFRESH_ROWS, min_delta=0.01,
    fe_w_recon=None, fec_w_recon=None,
    fe_w_center=3.0,  # batch-centring of the FE latent (models.training.batch_center_penalty; docs/model.md)
)
#: The preset used when none is given.
DEFAULT_PRESET = "auto"

_KINDS_LATENT = ("fe", "fec", "re")

#: Counterfactual methods (docs/model.md, "Counterfactuals"). "balanced" (default): the cell's RE reconstruction
#: changed by the batch change of its cell type (or FE-latent group), multiplicative and additive estimates
#: averaged, type-balanced when the type is absent (napari_scmedal.counterfactual). "matched": the cell's RE latent is
#: moved by the difference between the mean RE latents of its FE-latent neighbours in the target batch and
#: in its own batch, then decoded with the target batch's random effects. "reference": METHOD.md section 1
#: literally (the whole RE autoencoder with the one-hot swapped); kept for comparison, it overshoots.
CF_METHODS = ("balanced", "matched", "reference")
#: The default counterfactual method (napari_scmedal.counterfactual; docs/model.md "Counterfactuals").
CF_DEFAULT = "balanced"
#: Neighbours (in the FE latent) per batch whose RE latents are averaged by the "matched" method.
CF_NEIGHBOURS = 20
#: Training cells per batch kept as anchors (FE + RE latents) for "matched"; stored in the model file.
CF_ANCHORS_PER_BATCH = 1000


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"napari_scmedal": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "anndata", "scanpy", "safetensors", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


class ScMEDAL:
    """scMEDAL fixed-effects (FE, and FEC with labels) and random-effects (RE) autoencoders.

    Parameters
    ----------
    adata
        AnnData with raw counts or log-normalised expression (``layer`` to pick a layer). Never
        modified: the model works on a preprocessed copy (``napari_scmedal.data.prepare_training``).
    batch_key, label_key
        ``adata.obs`` columns of the batch (random effect) and optional cell type (FEC, metrics).
    n_genes
        Highly variable genes kept (2,916 = 54 x 54 fills a square genomap).
    seed
        Seeds weight initialisation, minibatch order and RE sampling (deterministic on CPU).
    preset
        ``"auto"`` (default: batch size, learning rate, epochs and patience derived from the number of
        training cells, see :mod:`napari_scmedal.models.defaults`), or the fixed settings ``"paper"``
        (METHOD.md defaults, meant for tens of thousands of cells) and ``"quick"``. See :data:`PRESETS`.
    device
        ``None`` = CUDA when available, else CPU; or e.g. ``"cpu"``, ``"cuda:0"``.
    threads
        CPU threads used while training/inferring (``torch.set_num_threads``); ``None`` leaves it.
    **hyperparameters
        Override any preset entry (e.g. ``lr=5e-4``, ``fe_w_recon=2000``, ``hidden=[256, 64]``).
    """

    def __init__(self, adata, batch_key: str = "batch", label_key: str | None = None, n_genes: int = 2916,
                 layer: str | None = None, seed: int = 0, preset: str = "auto", device=None,
                 threads: int | None = None, backed: bool | None = None, chunk_cells: int | None = None,
                 **hyperparameters):
        from .data import prepare_training
        from .data.ondisk import DEFAULT_CHUNK_CELLS, is_on_disk, stream_prepare

        config = self._make_config(preset, hyperparameters)
        on_disk = is_on_disk(adata)
        if backed and not on_disk:
            raise DataError("backed=True trains out of core from a file: pass the path of the .h5ad file (or "
                            "anndata.read_h5ad(path, backed='r')) instead of an in-memory AnnData.")
        if on_disk and backed is False:  # on disk, but the user wants it in memory
            from .data import read_h5ad

            adata = adata.to_memory() if getattr(adata, "isbacked", False) else read_h5ad(
                getattr(adata, "path", None) or adata)
            on_disk = False
        if on_disk:
            comm = self._comm()
            self._plan = stream_prepare(adata, batch_key, label_key=label_key, n_genes=n_genes, layer=layer,
                                        input_kind=config["input_kind"], split_seed=config["split_seed"],
                                        split_fractions=tuple(config["split_fractions"]),
                                        chunk_cells=int(chunk_cells or DEFAULT_CHUNK_CELLS), comm=comm)
            recipe, splits, names = self._plan.recipe, self._plan.splits, self._plan.obs_names
        else:
            td = prepare_training(adata, batch_key, label_key=label_key, n_genes=n_genes, layer=layer,
                                  input_kind=config["input_kind"], split_seed=config["split_seed"],
                                  split_fractions=tuple(config["split_fractions"]))
            recipe, splits, names = td.recipe, td.splits, td.prepared.obs_names
        plan = self._plan if on_disk else None
        self._init_common(recipe, config, preset, seed, device, threads)
        self._plan = plan
        # a backed AnnData given by the user (its obs may hold columns the file lacks) serves _training_adata
        self._ondisk_input = adata if on_disk and getattr(adata, "isbacked", False) else None
        if not on_disk:
            self._adata = td.adata
            self._prepared = td.prepared
        names = [str(n) for n in names]
        self.splits = {k: [names[i] for i in np.asarray(v)] for k, v in splits.items()}
        self._split_idx = {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
        self._build_networks()

    @staticmethod
    def _comm():
        from .distributed import Comm

        return Comm()

    @property
    def backed(self) -> bool:
        """True when the model trains out of core from an on-disk .h5ad (see docs/scaling.md)."""
        return self._plan is not None

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _make_config(preset: str, hyperparameters: dict) -> dict:
        if preset not in PRESETS:
            raise ScMEDALError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        config = json.loads(json.dumps(PRESETS[preset]))
        unknown = sorted(set(hyperparameters) - set(config))
        if unknown:
            raise ScMEDALError(f"unknown hyperparameter(s) {unknown}; valid names are {sorted(config)} "
                               f"(see napari_scmedal.model.PRESETS).")
        for k, v in hyperparameters.items():
            config[k] = list(v) if isinstance(v, tuple) else v
        return validate_config(config, ScMEDALError)

    def _init_common(self, recipe, config, preset, seed, device, threads):
        self.recipe = recipe
        self.config = config
        self.preset = preset
        self.seed = int(seed)
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self._comm().world > 1:
            self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")  # one GPU per rank
        self.threads = None if threads is None else int(threads)
        self.history: dict[str, dict] = {}
        #: Training health per network (napari_scmedal.models.health); "not checked" for older model files.
        self.health: dict[str, dict] = {}
        #: The settings the last train() used and why (derived from the data or given).
        self.derived: dict | None = None
        self.layout = None
        self._trained: list[str] = []
        self._adata = None
        self._prepared = None
        self._plan = None
        self._backed_adata = None
        self._ondisk_input = None
        self.splits: dict[str, list[str]] = {}
        self._split_idx: dict[str, np.ndarray] = {}
        self._cf_anchors: dict[str, np.ndarray] | None = None

    def _build_networks(self):
        self.nets: dict[str, torch.nn.Module] = _make_networks(self.recipe, self.config, self.seed, self.device)

    # ------------------------------------------------------------------ properties
    @property
    def genes(self) -> list[str]:
        return list(self.recipe.genes)

    @property
    def batches(self) -> list[str]:
        return list(self.recipe.batches)

    @property
    def labels(self) -> list[str] | None:
        return None if self.recipe.labels is None else list(self.recipe.labels)

    @property
    def size_factor_key(self) -> str | None:
        """Inference option: an ``obs`` column of per-cell total counts used as each cell's library size
        instead of the sum over the model's normalisation genes. Needed for count data that lack some of
        those genes (e.g. a gene panel, or ``adata[:, model.genes]``), which are otherwise refused because
        every normalised value would shift. ``None`` (default): sum the normalisation genes."""
        return self.recipe.size_factor_key

    @size_factor_key.setter
    def size_factor_key(self, key: str | None) -> None:
        if key is not None and not isinstance(key, str):
            raise ScMEDALError(f"size_factor_key must be an obs column name or None (got {key!r}).")
        self.recipe.size_factor_key = key
        self.__dict__.pop("_lazy_views", None)  # cached views were aligned with the old setting

    @property
    def trained_kinds(self) -> list[str]:
        """Latent kinds that have trained weights (``fe``, ``re``, ``fec``)."""
        return list(self._trained)

    def __repr__(self) -> str:
        return (f"ScMEDAL(n_genes={self.recipe.n_genes}, batches={len(self.batches)}, "
                f"labels={0 if self.labels is None else len(self.labels)}, preset={self.preset!r}, "
                f"trained={self._trained}, device={str(self.device)!r})")

    # ------------------------------------------------------------------ training
    def _threads(self):
        model = self

        class _Ctx:
            def __enter__(self):
                self.old = torch.get_num_threads()
                if model.threads:
                    torch.set_num_threads(model.threads)

            def __exit__(self, *exc):
                torch.set_num_threads(self.old)
                return False

        return _Ctx()

    def train(self, max_epochs: int | None = None, patience: int | None = None, batch_size: int | None = None,
              progress=None, cancel=None, *, precision: str = "fp32", data_on_device="auto",
              max_steps_per_epoch: int | None = None, buffer_blocks: int = 4,
              max_time: float | None = None, health_warnings: bool = True) -> "ScMEDAL":
        """Train FE, then FEC (when a label key is given), then RE; return ``self``.

        ``max_epochs``/``patience``/``batch_size`` default to the preset's; with the default ``"auto"``
        preset they, the learning rate and the minimum number of epochs are derived from the number of
        training cells (``model.derived`` says which and why). ``max_time`` (seconds) caps the whole
        call: each network gets an equal share of what is left when it starts (time a network does not
        use passes to the next) and stops at the end of the epoch that crosses it, with its best
        weights (``history[kind]["stopped"] == "max_time"``). After each network its training health is
        measured (``model.health``); problems raise a ``TrainingHealthWarning`` unless
        ``health_warnings=False`` (for callers that show ``model.health`` themselves: the CLI, the widget).
        ``progress(info)`` is
        called after every epoch with ``{"model", "epoch", "max_epochs", "train", "val",
        "elapsed_s", "eta_s", ...}``. ``cancel``: a ``threading.Event`` or a zero-argument callable;
        when it turns true training stops and the best weights so far are kept (later models are
        not trained). A NaN/inf loss raises :class:`TrainingError` with the best weights kept.
        Calling ``train`` again continues from the current weights with fresh optimisers.

        Scaling options (docs/scaling.md): ``precision="bf16"`` autocasts the forward passes to
        bfloat16 (for CUDA); ``data_on_device`` ("auto", True, False) keeps in-memory training data on
        the training device when it fits (auto: always on CPU, on CUDA when it takes at most half of
        the free memory) or in pinned host memory otherwise; ``max_steps_per_epoch`` caps the
        minibatches of an epoch; ``buffer_blocks``: file blocks shuffled together when training out of
        core. Inside ``torchrun`` every process trains its shard with DistributedDataParallel.
        """
        if self._prepared is None and self._plan is None:
            raise DataError("this model was loaded from a file and has no training data attached; train a new "
                            "model with ScMEDAL(adata, ...) instead.")
        import time

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
        self.derived = {"preset": self.preset, "n_train": int(len(self._split_idx.get("train", []))),
                        "settings": settings, "reasons": reasons}
        comm = self._comm()
        start = time.perf_counter()
        self._cf_anchors = None  # the weights change: anchors are recomputed from the trained networks
        tr, va = self._sources(data_on_device, buffer_blocks)
        order = [k for k in ("fe", "fec", "re") if k in self.nets]
        devs = [self.device.index or 0] if self.device.type == "cuda" else []
        with self._threads(), torch.random.fork_rng(devices=devs):
            for i, kind in enumerate(order):
                if is_cancelled(cancel):
                    break
                task = self._task(kind, settings)
                deadline = None
                if max_time is not None:
                    now = time.perf_counter()
                    deadline = now + max(float(max_time) - (now - start), 0.0) / (len(order) - i)
                try:
                    hist = fit(task, tr, va, max_epochs=max_epochs, patience=patience, batch_size=batch_size,
                               seed=self.seed + 1000 * i, progress=progress, cancel=cancel, comm=comm,
                               max_steps_per_epoch=max_steps_per_epoch, precision=precision,
                               min_epochs=settings["min_epochs"], bn_refresh=c.get("bn_refresh"),
                               deadline=deadline, min_delta=float(c.get("min_delta") or 0.0))
                except TrainingError as e:
                    self.nets[kind].eval()
                    hist = getattr(e, "history", None)
                    if hist is not None:
                        self.history[kind] = hist
                        if hist["best_epoch"] is not None and kind not in self._trained:
                            self._trained.append(kind)
                    raise
                hist["config"] = {"max_epochs": max_epochs, "patience": patience, "batch_size": batch_size,
                                  "lr": settings["lr"], "min_epochs": settings["min_epochs"],
                                  "w_recon": settings.get(f"{kind}_w_recon", c["re_w_recon"]),
                                  "backed": self.backed, "world_size": comm.world}
                self.history[kind] = hist
                if hist["best_epoch"] is not None and kind not in self._trained:
                    self._trained.append(kind)
                if kind in self._trained and comm.is_main:
                    self._check_health(kind, va if va.n else tr, tr, warn=health_warnings)
                if hist["stopped"] == "cancelled":
                    break
        return self

    def _sources(self, data_on_device="auto", buffer_blocks: int = 4):
        """Minibatch sources of the training and validation splits (see napari_scmedal.models.loaders)."""
        from .models.loaders import InMemorySource, StreamingSource, expected_bytes, fits_on_device

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
        if kind == "fe":
            return FETask(net, lr, c["fe_w_recon"], c["fe_w_adv"], 0.0, c["adv_bound"], c["adam_eps"],
                          w_center=c.get("fe_w_center", 0.0))  # .get: configs of older model files lack it
        if kind == "fec":
            return FETask(net, lr, c["fec_w_recon"], c["fec_w_adv"], c["fec_w_class"], c["adv_bound"],
                          c["adam_eps"])
        return RETask(net, lr, c["re_w_recon"], c["re_w_batch"], c["kl_weight"], c["adam_eps"])

    def _check_health(self, kind: str, val_source, train_source=None, warn: bool = True) -> None:
        """Measure the trained network on validation cells; warn (TrainingHealthWarning) when out of bounds."""
        from .models.health import check_network, warn_if_unhealthy

        self.health[kind] = check_network(self, kind, val_source, train_source=train_source)
        if warn:
            warn_if_unhealthy(kind, self.health[kind])

    # ------------------------------------------------------------------ inference
    def _training_adata(self, adata=None):
        if adata is not None:
            return adata
        if self._plan is not None:  # trained out of core: the backed data (read-only), its kept cells
            if self._backed_adata is None:
                if self.recipe.layer is not None:
                    raise DataError("this model was trained out of core from a layer; pass adata= (e.g. "
                                    "napari_scmedal.data.read_h5ad(path, layer=...)) to use it here.")
                base = getattr(self, "_ondisk_input", None)
                if base is None:
                    import anndata as ad

                    base = ad.read_h5ad(self._plan.source.path, backed="r")
                names = self._plan.obs_names
                if base.n_obs != len(names) or not pd.Index(base.obs_names.astype(str)).equals(names):
                    base = base[np.asarray(names)]
                self._backed_adata = base
            return self._backed_adata
        if self._adata is None:
            raise DataError("this model was loaded from a file and does not carry its training data; pass "
                            "adata= (an AnnData with the model's genes and batch column).")
        return self._adata

    def _prepare(self, adata=None, lazy: bool = False):
        """Model-ready rows: the training cells (``adata=None``) or ``adata`` aligned through the recipe.
        On-disk data (a path, a backed AnnData, the out-of-core training file) and ``lazy=True`` give a
        :class:`~napari_scmedal.data.ondisk.LazyPrepared` that reads rows when sliced."""
        from .data.ondisk import LazyPrepared, is_on_disk

        if adata is None:
            if self._plan is not None:
                return self._plan.lazy()
            if self._prepared is None:
                raise DataError("this model was loaded from a file and does not carry its training data; pass "
                                "adata= (an AnnData with the model's genes and batch column, e.g. the data it "
                                "was trained on).")
            return self._prepared
        if not lazy:  # one-shot use: nothing is kept (an on-disk source closes when dropped)
            return LazyPrepared.from_source(self.recipe, adata) if is_on_disk(adata) else self.recipe.transform(adata)
        # row-range calls (genomap stacks) reuse the view of the same data: the whole data set's metadata is
        # matched to the recipe once. A path is keyed by the file's identity and modification time (a
        # rewritten file gets a new view), an object by its id and shape.
        if isinstance(adata, (str, os.PathLike)):
            st = os.stat(adata)
            key = (os.path.realpath(adata), st.st_ino, st.st_mtime_ns, st.st_size)
        else:
            key = (id(adata), getattr(adata, "shape", None))
        cache = self.__dict__.setdefault("_lazy_views", {})
        hit = cache.get(key)
        if hit is not None and (hit[0] is adata or isinstance(adata, (str, os.PathLike))):
            return hit[1]
        view = LazyPrepared.from_source(self.recipe, adata) if is_on_disk(adata) else _InMemoryLazy(self.recipe, adata)
        if len(cache) >= 4:  # the oldest view is dropped (its file closes once no stack uses it)
            cache.pop(next(iter(cache)))
        cache[key] = (adata, view)
        return view

    def n_cells(self, adata=None) -> int:
        """Number of cells the inference methods return rows for (training cells when ``adata`` is None)."""
        if adata is None:
            if self._plan is not None:
                return self._plan.n_obs
            if self._prepared is not None:
                return self._prepared.n_obs
            self._prepare(None)  # raises the "no training data" error
        return int(adata.n_obs) if hasattr(adata, "n_obs") else self._prepare(adata).n_obs

    def _check_kind(self, kind, allowed):
        if kind not in allowed:
            raise ScMEDALError(f"kind={kind!r} is not one of {list(allowed)}.")
        if kind not in self.nets:
            raise ScMEDALError(f"this model has no {kind.upper()} network (FEC needs label_key= with at least "
                               f"two labels).")
        if kind not in self._trained:
            raise ScMEDALError(f"the {kind.upper()} network is not trained yet; call model.train() first "
                               f"(or train again if it was cancelled).")

    @torch.no_grad()
    def _run(self, kind, prep, what, z_override=None, batch_size=4096):
        net = self.nets[kind]
        net.eval()
        n = prep.X.shape[0]
        outs = []
        with self._threads():
            for i in range(0, n, batch_size):
                x = torch.as_tensor(np.ascontiguousarray(prep.X[i:i + batch_size]), dtype=torch.float32,
                                    device=self.device)
                if kind == "re":
                    if z_override is not None:
                        z = z_override.expand(x.shape[0], -1)
                    else:
                        z = torch.as_tensor(np.ascontiguousarray(prep.batch_onehot[i:i + batch_size]),
                                            dtype=torch.float32, device=self.device)
                    out = net(x, z)
                else:
                    out = net(x)
                outs.append(out[what].float().cpu().numpy())
        if not outs:
            return np.zeros((0, net.n_genes if what == "recon" else int(self.config["latent"])), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)

    def get_latent_representation(self, kind: str = "fe", adata=None, rows=None) -> np.ndarray:
        """``(n_cells, latent)`` latent of ``kind`` in ``{"fe", "fec", "re"}`` for the training cells
        (``adata=None``) or for another AnnData aligned through the recipe (also a path or a backed
        AnnData: read block by block). ``rows=(start, stop)``: only those cells."""
        self._check_kind(kind, _KINDS_LATENT)
        return self._run(kind, self._prepare_rows(adata, rows), "latent")

    def get_reconstruction(self, kind: str = "fe", adata=None, scaled: bool = False) -> np.ndarray:
        """``(n_cells, n_genes)`` reconstruction by ``kind`` in ``{"fe", "fec", "re"}`` (RE uses each
        cell's own batch), in log1p-normalised units unless ``scaled=True`` (model space)."""
        self._check_kind(kind, _KINDS_LATENT)
        out = self._run(kind, self._prepare(adata), "recon")
        return out if scaled else self.recipe.unscale(out).astype(np.float32, copy=False)

    def _batch_index(self, target_batch=None, batch_index=None) -> int:
        """Position of a target batch given by name (``target_batch``; names only, so a batch called "1"
        is never confused with position 1) or by position (``batch_index``); exactly one of them."""
        names = self.batches
        shown = names if len(names) <= 20 else names[:20] + ["..."]
        if (target_batch is None) == (batch_index is None):
            raise DataError("give the target batch either by name (target_batch='...') or by position "
                            f"(batch_index=0..{len(names) - 1}), not both or neither; batches: {shown}.")
        if batch_index is not None:
            if isinstance(batch_index, (bool, np.bool_)) or not isinstance(batch_index, (int, np.integer)) or \
                    not 0 <= int(batch_index) < len(names):
                raise DataError(f"batch_index={batch_index!r} is not a position 0..{len(names) - 1} among the "
                                f"model's batches {shown}.")
            return int(batch_index)
        if str(target_batch) in names:
            return names.index(str(target_batch))
        hint = (f" For the batch at position {int(target_batch)} pass batch_index={int(target_batch)}."
                if isinstance(target_batch, (int, np.integer)) and not isinstance(target_batch, bool) else "")
        raise DataError(f"unknown target batch {target_batch!r}; target_batch is a batch name and the model knows "
                        f"these batches: {shown}.{hint}")

    def _check_method(self, method) -> str:
        if method not in CF_METHODS:
            raise ScMEDALError(f"unknown counterfactual method {method!r}; use 'balanced' (default), 'matched' "
                               f"(shift in the RE latent) or 'reference' (METHOD.md's literal one-hot swap, which "
                               f"overshoots); see docs/model.md, 'Counterfactuals'.")
        if method == "balanced" and self._cf_anchors is not None and "mean" not in self._cf_anchors \
                and self._prepared is None and self._plan is None:
            import warnings

            warnings.warn("this model file was saved before the 'balanced' counterfactual existed and carries no "
                          "training data to compute it; using method='matched'. Retrain and save the model to "
                          "get the default method.", UserWarning, stacklevel=3)
            return "matched"
        return method

    def _counterfactuals(self, prep, codes, method: str, batch_size: int = 4096) -> list[np.ndarray]:
        """Scaled (model-space) counterfactuals of ``prep``'s cells, one ``(n, G)`` array per target code:
        the one implementation behind get_counterfactual_expression, predict_versions and get_version."""
        method = self._check_method(method)
        self._check_kind("re", ("re",))
        if method == "balanced":
            return [self.recipe.scale(x) for x in self._balanced(prep, codes, batch_size)[0]]
        if method == "matched":
            return self._matched(prep, codes, batch_size=batch_size)
        outs = []
        for b in codes:
            z = torch.zeros(1, len(self.batches), device=self.device)
            z[0, b] = 1.0
            outs.append(self._run("re", prep, "recon", z_override=z, batch_size=batch_size))
        return outs

    def _balanced(self, prep, codes, batch_size: int = 4096):
        """("balanced") log1p counterfactuals and per-cell extrapolation flags for each target code."""
        from .counterfactual import apply_change, changes

        st, groups = self._cf_groups(prep, batch_size)
        base = self.recipe.unscale(self._run("re", prep, "recon", batch_size=batch_size))
        own = np.asarray(prep.batch)
        outs, flags = [], []
        for t in codes:
            out = np.empty_like(base)
            flag = np.zeros(len(own), dtype=bool)
            for s in np.unique(own):
                ch = changes(st["mean"], st["logmean"], st["count"], int(s), int(t), recon_means=st.get("remean"))
                for rows in np.array_split(np.flatnonzero(own == s), max(1, int(np.sum(own == s)) // batch_size + 1)):
                    g = groups[rows]
                    out[rows] = apply_change(base[rows], ch, g, float(st["alpha"][0]))
                    flag[rows] = ch["extrapolated"][g]
            outs.append(out)
            flags.append(flag)
        return outs, flags

    def counterfactual_extrapolated(self, target_batch=None, adata=None, *, batch_index=None) -> np.ndarray:
        """Per cell, True when its ("balanced") counterfactual into ``target_batch`` is extrapolated: the
        cell's type (label, or FE-latent group without labels) has too few training cells in the target
        batch or its own, so its batch change is borrowed from the other types."""
        from .counterfactual import changes

        self._check_kind("re", ("re",))
        t = self._batch_index(target_batch, batch_index)
        prep = self._prepare(adata)
        st, groups = self._cf_groups(prep)
        own = np.asarray(prep.batch)
        flag = np.zeros(len(own), dtype=bool)
        for s in np.unique(own):
            rows = own == s
            flag[rows] = changes(st["mean"], st["logmean"], st["count"], int(s), t)["extrapolated"][groups[rows]]
        return flag

    def _cf_groups(self, prep, batch_size: int = 4096):
        """(statistics, each cell's group) for the "balanced" counterfactual: the cell's label when the model
        has labels and the cell's is known, else the majority group of its FE-latent anchor neighbours."""
        from .counterfactual import assign_groups

        st = self._anchors()
        if "mean" not in st:
            raise ScMEDALError("this model file has no statistics for the 'balanced' counterfactual (it was saved "
                               "by an older version); retrain and save it again, or use method='matched' / "
                               "'reference' (which have no extrapolation flag).")
        fe = self._run("fe", prep, "latent", batch_size=batch_size)
        known = None
        if st.get("groups") == "labels" and getattr(prep, "label", None) is not None:
            known = np.asarray(prep.label)
        return st, assign_groups(fe, st["fe"], st["group"], known, centroids=st.get("groups") == "clusters")

    def _compute_anchors(self) -> dict[str, np.ndarray]:
        prep = self._prepare(None)
        idx = np.asarray(self._split_idx.get("train", np.zeros(0, np.int64)), dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        keep = []
        for c in range(len(self.batches)):
            cells = idx[np.asarray(prep.batch)[idx] == c]
            if len(cells) == 0:  # no training cell of this batch: use all of its cells
                cells = np.flatnonzero(np.asarray(prep.batch) == c)
            if len(cells) > CF_ANCHORS_PER_BATCH:
                cells = np.sort(rng.choice(cells, CF_ANCHORS_PER_BATCH, replace=False))
            keep.append(cells)
        sub = prep.subset(np.concatenate(keep))
        out = {"fe": self._run("fe", sub, "latent"), "re": self._run("re", sub, "latent"),
               "batch": np.asarray(sub.batch, dtype=np.int64)}
        # the balanced counterfactual's statistics: training and validation cells (descriptive means, more
        # cells per batch and type; the test split stays untouched)
        stat_idx = np.sort(np.concatenate([idx, np.asarray(self._split_idx.get("val", np.zeros(0, np.int64)),
                                                           dtype=np.int64)]))
        out.update(self._group_stats(prep, stat_idx, sub, out["fe"]))
        return out

    def _group_stats(self, prep, idx, anchors, anchor_fe) -> dict:
        """The "balanced" counterfactual's statistics (napari_scmedal.counterfactual) over the training
        cells ``idx``: anchor groups (labels, or k-means clusters of the FE latent without labels) and the
        mean normalised / log1p expression and cell count per batch and group."""
        from .counterfactual import assign_groups, choose_alpha, cluster_anchors, group_stats

        labels = self.recipe.labels
        a_label = getattr(anchors, "label", None)
        if labels and a_label is not None:
            kind, a_group, n_groups = "labels", np.asarray(a_label, dtype=np.int64), len(labels)
        else:
            kind, a_group = "clusters", cluster_anchors(anchor_fe, self.seed)
            n_groups = int(a_group.max()) + 1 if a_group.size else 1

        nb, G = len(self.batches), self.recipe.n_genes
        re_sum = np.zeros((nb, n_groups, G))  # the same cells' mean RE reconstruction (log1p), per batch and group
        re_cnt = np.zeros((nb, n_groups))

        def blocks():
            for i in range(0, len(idx), 8192):
                sub = prep.subset(idx[i:i + 8192])
                known = np.asarray(sub.label) if kind == "labels" else None
                groups = assign_groups(self._run("fe", sub, "latent"), anchor_fe, a_group, known,
                                       centroids=kind == "clusters")
                b = np.asarray(sub.batch)
                ok = groups >= 0
                rec = self.recipe.unscale(self._run("re", sub, "recon"))
                np.add.at(re_sum, (b[ok], groups[ok]), rec[ok])
                np.add.at(re_cnt, (b[ok], groups[ok]), 1.0)
                yield np.asarray(sub.X_log), b, groups

        from .counterfactual import ALPHA_BATCHES

        samples: dict = {}
        pick = set(np.random.default_rng(self.seed).choice(nb, min(nb, ALPHA_BATCHES), replace=False).tolist())
        mean, logmean, count = group_stats(blocks(), nb, n_groups, self.recipe.n_genes, samples, pick)
        alpha, _ = choose_alpha(samples, mean, logmean, count, seed=self.seed)
        # the counterfactual's base is recentred on each group's observed mean (counterfactual.recentre): the
        # reconstructions' mean comes from these training cells, so a cell's counterfactual never depends on
        # which other cells are in the same call
        remean = (re_sum / np.maximum(re_cnt, 1.0)[..., None]).astype(np.float32)
        return {"group": a_group, "groups": kind, "mean": mean, "logmean": logmean, "count": count,
                "alpha": np.asarray([alpha], dtype=np.float32), "remean": remean}

    def _anchors(self) -> dict[str, np.ndarray]:
        """FE and RE latents (and batch codes) of up to ``CF_ANCHORS_PER_BATCH`` training cells per
        batch (the reference cells of the "matched" counterfactual and the voters of the "balanced" one's
        groups), and the "balanced" statistics (``_group_stats``). Computed on first use after training
        and saved in the model file."""
        if self._cf_anchors is None:
            self._check_kind("fe", ("fe",))
            self._check_kind("re", ("re",))
            if self._prepared is None and self._plan is None:
                raise ScMEDALError("this model file has no counterfactual anchors (it was saved by an older "
                                   "version) and carries no training data; retrain and save it again, or pass "
                                   "method='reference'.")
            self._cf_anchors = self._compute_anchors()
        return self._cf_anchors

    @staticmethod
    def _neighbour_mean(query, pool_fe, pool_re, k):
        """Mean ``pool_re`` row over the ``k`` nearest ``pool_fe`` rows (Euclidean) of each query."""
        k = min(int(k), pool_fe.shape[0])
        nn = torch.cdist(query, pool_fe).topk(k, dim=1, largest=False).indices
        return pool_re[nn].mean(1)

    @torch.no_grad()
    def _matched(self, prep, codes, batch_size=4096) -> list[np.ndarray]:
        """Scaled "matched" counterfactuals of ``prep``'s cells, one ``(n, G)`` array per target code.

        For a cell of batch s with RE latent h (RE encoder, own one-hot) and FE latent f:
        ``decode_RE(h + mean_{N_t(f)} h' - mean_{N_s(f)} h', onehot(t))`` where ``N_b(f)`` are the
        ``CF_NEIGHBOURS`` anchors of batch b nearest to f in the batch-invariant FE latent. For t = s
        the shift is exactly zero and the output is the RE reconstruction.
        """
        anchors = self._anchors()
        fe_net, re_net = self.nets["fe"].eval(), self.nets["re"].eval()
        dev, nb = self.device, len(self.batches)
        a_fe = torch.as_tensor(anchors["fe"], dtype=torch.float32, device=dev)
        a_re = torch.as_tensor(anchors["re"], dtype=torch.float32, device=dev)
        pools = [np.flatnonzero(anchors["batch"] == c) for c in range(nb)]
        missing = [self.batches[c] for c in set(codes) if len(pools[c]) == 0]
        if missing:
            raise ScMEDALError(f"no anchor cells of batch(es) {missing}; retrain the model with cells of those "
                               f"batches, or pass method='reference'.")
        n = prep.X.shape[0]
        outs: list[list[np.ndarray]] = [[] for _ in codes]
        with self._threads():
            for i in range(0, n, batch_size):
                x = torch.as_tensor(np.ascontiguousarray(prep.X[i:i + batch_size]), dtype=torch.float32, device=dev)
                z = torch.as_tensor(np.ascontiguousarray(prep.batch_onehot[i:i + batch_size]), dtype=torch.float32,
                                    device=dev)
                own = np.asarray(prep.batch[i:i + batch_size])
                h = re_net.encoder(x, z)
                f = fe_net.encoder(x)[-1]
                here_own = torch.zeros_like(h)
                for c in np.unique(own):
                    if len(pools[c]) == 0:
                        continue  # such cells only get their own batch (shift 0) or an error above
                    sel = torch.as_tensor(np.flatnonzero(own == c), device=dev)
                    p = torch.as_tensor(pools[c], device=dev)
                    here_own[sel] = self._neighbour_mean(f[sel], a_fe[p], a_re[p], CF_NEIGHBOURS)
                for k, t in enumerate(codes):
                    p = torch.as_tensor(pools[t], device=dev)
                    shift = self._neighbour_mean(f, a_fe[p], a_re[p], CF_NEIGHBOURS) - here_own
                    shift[torch.as_tensor(own == t, device=dev)] = 0.0
                    zt = torch.zeros(x.shape[0], nb, device=dev)
                    zt[:, t] = 1.0
                    outs[k].append(re_net.decoder(h + shift, zt).float().cpu().numpy())
        G = self.recipe.n_genes
        return [np.concatenate(o).astype(np.float32, copy=False) if o else np.zeros((0, G), np.float32)
                for o in outs]

    def get_counterfactual_expression(self, target_batch=None, adata=None, scaled: bool = False,
                                      batch_size: int = 4096, method: str = CF_DEFAULT, *,
                                      batch_index: int | None = None) -> np.ndarray:
        """Each cell's expression as if acquired in ``target_batch`` (a batch name; or give its position
        with ``batch_index=``),
        ``(n_cells, n_genes)``, log1p units unless ``scaled=True``. For a cell's own batch the result is
        its RE reconstruction.

        ``method="balanced"`` (default, :mod:`napari_scmedal.counterfactual`): the cell's RE reconstruction
        changed by its cell type's own batch change where the type has training cells in both batches,
        else by the change averaged over the other types (an :class:`~napari_scmedal.errors.ExtrapolationWarning`
        says how many cells; :meth:`counterfactual_extrapolated` flags them). ``method="matched"``: the
        cell's RE latent is shifted by the difference between the mean RE latents of its nearest
        neighbours in the batch-invariant FE latent among the target batch's and its own batch's training
        cells, then decoded with the target batch's random effects. ``method="reference"``: METHOD.md literally, the whole RE autoencoder with the
        one-hot replaced by the target batch (overshoots: see docs/model.md, "Counterfactuals")."""
        self._check_kind("re", ("re",))
        b = self._batch_index(target_batch, batch_index)
        prep = self._prepare(adata)
        method = self._check_method(method)
        if method != "balanced":
            out = self._counterfactuals(prep, [b], method, batch_size=int(batch_size))[0]
            return out if scaled else self.recipe.unscale(out).astype(np.float32, copy=False)
        outs, flags = self._balanced(prep, [b], batch_size=int(batch_size))
        n_ex = int(flags[0].sum())
        if n_ex:
            import warnings

            from .errors import ExtrapolationWarning

            warnings.warn(f"{n_ex} of {len(flags[0])} cells belong to cell types with too few training cells in "
                          f"batch {self.batches[b]!r} (or in their own batch): their counterfactual is "
                          f"extrapolated from the other types' batch change. "
                          f"model.counterfactual_extrapolated({self.batches[b]!r}, adata) flags them.",
                          ExtrapolationWarning, stacklevel=2)
        return self.recipe.scale(outs[0]) if scaled else outs[0]

    def _prepare_rows(self, adata, rows):
        if rows is None:
            return self._prepare(adata)
        start, stop = (int(r) for r in rows)
        prep = self._prepare(adata, lazy=True)  # cached per data: a path is not reopened per range
        n = prep.n_obs
        if not 0 <= start <= stop <= n:
            raise DataError(f"rows=({start}, {stop}) is outside the {n} cells; pass 0 <= start <= stop <= {n}.")
        return prep.block(start, stop) if hasattr(prep, "block") else prep.subset(np.arange(start, stop))

    def predict_versions(self, adata=None, batches=None, method: str = CF_DEFAULT, rows=None) -> dict:
        """Every version of the cells at once (preprocessing done once, batched passes):
        ``{"original": X_log, "fe": FE recon, "re": RE recon, "batch": codes, "cf:<b>": counterfactual
        to batch b for each b in batches}``; expression in log1p units, ``(n_cells, n_genes)`` each.
        ``method`` as in :meth:`get_counterfactual_expression` (same default). ``rows=(start, stop)``
        restricts the work to those cells (positions), reading only them from on-disk data: the
        building block of lazy genomap stacks over every cell."""
        self._check_method(method)
        self._check_kind("fe", ("fe",))
        self._check_kind("re", ("re",))
        prep = self._prepare_rows(adata, rows)
        unscale = self.recipe.unscale
        out = {"original": np.asarray(prep.X_log, dtype=np.float32),
               "fe": unscale(self._run("fe", prep, "recon")).astype(np.float32, copy=False),
               "re": unscale(self._run("re", prep, "recon")).astype(np.float32, copy=False),
               "batch": np.asarray(prep.batch)}
        batches = list(batches or [])
        if batches:
            cfs = self._counterfactuals(prep, [self._batch_index(b) for b in batches], method)
            for b, cf in zip(batches, cfs):
                out[f"cf:{b}"] = unscale(cf).astype(np.float32, copy=False)
        return out

    def get_version(self, version: str, adata=None, rows=None, method: str = CF_DEFAULT) -> np.ndarray:
        """One version of the cells, ``(n_cells, n_genes)`` float32 in log1p units: ``"original"``
        (the preprocessed input), ``"fe"``/``"re"`` (reconstructions) or ``"cf:<batch>"`` (the
        counterfactual to that batch, ``method`` as in :meth:`get_counterfactual_expression`).
        ``rows=(start, stop)`` restricts to those cells, reading only them from on-disk data."""
        version = str(version)
        prep = self._prepare_rows(adata, rows)
        if version == "original":
            return np.asarray(prep.X_log, dtype=np.float32)
        if version in ("fe", "fec", "re"):
            self._check_kind(version, _KINDS_LATENT)
            return self.recipe.unscale(self._run(version, prep, "recon")).astype(np.float32, copy=False)
        if version.startswith("cf:"):
            out = self._counterfactuals(prep, [self._batch_index(version[3:])], method)[0]
            return self.recipe.unscale(out).astype(np.float32, copy=False)
        raise ScMEDALError(f"unknown version {version!r}; use 'original', 'fe', 're' or 'cf:<batch>' with a batch "
                           f"among {self.batches[:5]}{'...' if len(self.batches) > 5 else ''}.")

    # ------------------------------------------------------------------ AnnData
    def summary(self) -> dict:
        """JSON-safe description: genes, batches, labels, keys, preset, config, trained kinds, versions."""
        s = {"genes": self.genes, "batches": self.batches, "batch_key": self.recipe.batch_key,
             "preset": self.preset, "seed": self.seed, "trained": list(self._trained),
             "config": self.config, "versions": _versions(), "n_genes": int(self.recipe.n_genes)}
        if self.labels is not None:
            s["labels"] = self.labels
        if self.recipe.label_key is not None:
            s["label_key"] = self.recipe.label_key
        for k, h in self.history.items():
            s.setdefault("best_epoch", {})[k] = h["best_epoch"]
        s["health"] = self.health
        if self.derived is not None:
            s["derived"] = self.derived
        return s

    def write_to_adata(self, adata) -> None:
        """Add ``obsm["X_scmedal_fe"]``, ``obsm["X_scmedal_re"]`` (and ``"X_scmedal_fec"`` when trained)
        for every cell of ``adata`` (aligned through the recipe; no cell is dropped) and
        ``uns["scmedal"]`` (JSON-safe summary). ``adata`` is modified in place (only these keys)."""
        prep = self.recipe.transform(adata)
        if prep.X.shape[0] != adata.n_obs:
            raise DataError(f"alignment returned {prep.X.shape[0]} rows for {adata.n_obs} cells; cannot write "
                            f"latents without dropping cells.")
        if not self._trained:
            raise ScMEDALError("the model is not trained yet; call model.train() before write_to_adata().")
        results = {k: self._run(k, prep, "latent") for k in self._trained}
        for k, z in results.items():
            adata.obsm[f"X_scmedal_{k}"] = z
        s = self.summary()
        s["config"] = {k: v for k, v in s["config"].items() if v is not None}
        adata.uns["scmedal"] = json_safe(s, drop_none=True)  # a copy; h5ad cannot store None

    # ------------------------------------------------------------------ save / load
    def save(self, path) -> Path:
        """Write one safetensors file (all networks' tensors + JSON metadata) atomically: a temp file
        in the same folder is written, fsync'ed and renamed over ``path``; an error mid-save leaves an
        existing file untouched (napari_scmedal.modelfile). Raises ModelFileError for a missing or
        unwritable folder. Returns the path."""
        tensors = {}
        for kind, net in self.nets.items():
            for k, v in net.state_dict().items():
                tensors[f"{kind}.{k}"] = v.detach().to("cpu").contiguous()
        anchors = self._cf_anchors
        if anchors is None and (self._prepared is not None or self._plan is not None) and \
                {"fe", "re"} <= set(self._trained):
            anchors = self._anchors()
        if anchors is not None:  # reference cells of the counterfactuals, "balanced" statistics
            for k in ("fe", "re", "batch", "group", "mean", "logmean", "count", "alpha", "remean"):
                if k in anchors:
                    tensors[f"cf.{k}"] = torch.as_tensor(np.ascontiguousarray(anchors[k]))
        meta = {
            "format": FILE_FORMAT, "format_version": FILE_VERSION, "preset": self.preset, "seed": self.seed,
            "config": self.config, "recipe": self.recipe.to_dict(), "genes": self.genes,
            "batches": self.batches, "labels": self.labels, "networks": sorted(self.nets),
            "trained": list(self._trained), "history": self.history, "splits": self.splits,
            "versions": _versions(), "layout": None if self.layout is None else self.layout.to_dict(),
            "health": self.health, "derived": self.derived,
            "cf_groups": None if anchors is None else anchors.get("groups"),
        }
        return write_model_file(path, tensors, meta)

    @classmethod
    def load(cls, path, device=None, threads: int | None = None) -> "ScMEDAL":
        """Load a model written by :meth:`save`. Never unpickles, never trusts the metadata: the
        configuration and the preprocessing recipe are validated and the tensor shapes they imply are
        checked against the file's header before any network is built. Raises :class:`ModelFileError`
        for a missing, truncated, corrupt, foreign, inconsistent or newer-version file. The loaded model
        carries no training data: pass ``adata=`` to the inference methods."""
        from .data.recipe import Recipe
        from .models.health import NOT_CHECKED

        path = Path(path)
        meta, shapes = read_model_file(path)
        try:
            recipe = Recipe.from_dict(meta["recipe"])
            config = validate_config(dict(meta["config"]), ModelFileError, f"{path}: the stored ")
            seed = meta["seed"]
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ModelFileError(f"{path}: the stored seed {seed!r} is not a whole number; the file is damaged.")
            expected = _make_networks(recipe, config, seed, "meta")  # shapes only, nothing allocated
            if sorted(expected) != sorted(meta["networks"]):
                raise ModelFileError(f"{path}: the file lists networks {meta['networks']} but its configuration "
                                     f"builds {sorted(expected)}; the file is inconsistent (re-save the model).")
            check_shapes(path, {f"{kind}.{k}": tuple(v.shape) for kind, net in expected.items()
                                for k, v in net.state_dict().items()}, shapes, ("fe.", "fec.", "re."))
            obj = cls.__new__(cls)
            obj._init_common(recipe, config, meta["preset"], seed, device, threads)
            obj.history = meta.get("history") or {}
            obj._trained = [k for k in (meta.get("trained") or []) if k in expected]
            stored = meta.get("health")
            obj.health = ({k: dict(NOT_CHECKED) for k in obj._trained} if not isinstance(stored, dict)
                          else {k: stored.get(k, dict(NOT_CHECKED)) for k in obj._trained})
            obj.derived = meta.get("derived")
            obj.splits = meta.get("splits") or {}
        except ModelFileError:
            raise
        except Exception as e:  # malformed metadata
            raise ModelFileError(f"{path}: the model metadata is malformed ({type(e).__name__}: {e}); the file "
                                 f"is damaged or was not written by napari-scmedal. Re-save or retrain.") from None
        obj._build_networks()
        tensors = read_tensors(path)
        for kind, net in obj.nets.items():
            prefix = f"{kind}."
            net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
            net.to(obj.device).eval()
        if any(k.startswith("cf.") for k in tensors):
            obj._cf_anchors = anchors_from_tensors(path, tensors, int(obj.config["latent"]), len(obj.batches),
                                                   obj.recipe.n_genes, meta.get("cf_groups"))
        if meta.get("layout") is not None:
            from .genomap import GenomapLayout

            try:
                obj.layout = GenomapLayout.from_dict(meta["layout"])
            except Exception as e:
                raise ModelFileError(f"{path}: the stored genomap layout cannot be read ({e}); re-save the "
                                     f"model.") from None
        return obj


def _make_networks(recipe, config: dict, seed: int, device) -> dict[str, torch.nn.Module]:
    """The FE, RE (and FEC) networks a recipe and configuration define, seeded, in eval mode on ``device``
    (``torch.device("meta")`` gives their tensor shapes without allocating them)."""
    c = config
    G, B = recipe.n_genes, len(recipe.batches)
    K = len(recipe.labels) if recipe.labels else 0
    hidden, latent = tuple(c["hidden"]), int(c["latent"])
    meta = torch.device(device).type == "meta"
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if meta else contextlib.nullcontext()), \
            (_NoInit() if meta else contextlib.nullcontext()):
        torch.manual_seed(seed)
        nets: dict[str, torch.nn.Module] = {
            "fe": FE(G, B, None, hidden, latent),
            "re": RE(G, B, hidden, latent, prior_sd=c["prior_sd"], kl_estimator=c["kl_estimator"]),
        }
        if K >= 2 and c["train_fec"]:
            nets["fec"] = FE(G, B, K, hidden, latent)
    for net in nets.values():
        set_bn_momentum(net, c["bn_momentum"])
        net.to(device).eval()
    return nets


class _NoInit(torch.overrides.TorchFunctionMode):
    """Skips the ``torch.nn.init`` initialisers while networks are built on the meta device (shapes only, no
    values to fill). torch's meta ``normal_`` would import torch._dynamo (about 2 s of imports holding the GIL:
    the window froze when the model widget loaded the model its training process had written)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


class _InMemoryLazy:
    """An in-memory AnnData as a lazily transformed :class:`Prepared` look-alike: ``block(a, b)``
    transforms only rows ``a:b`` (used for genomap stacks of every cell)."""

    def __init__(self, recipe, adata):
        self.recipe = recipe
        self.adata = adata
        idx, norm_idx, batch, label = recipe.align_adata(adata)
        self.batch, self.label = batch, label
        self.obs_names = adata.obs_names

    @property
    def n_obs(self) -> int:
        return int(self.adata.n_obs)

    def block(self, start: int, stop: int):
        return self.recipe.transform(self.adata[int(start):int(stop)])

    def subset(self, idx):
        return self.recipe.transform(self.adata[np.asarray(idx)])
