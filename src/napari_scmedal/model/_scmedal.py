"""The :class:`ScMEDAL` class: construction, its settings and properties.

The class is put together from mixins, one per concern: :mod:`._data` (reaching the cells),
:mod:`._training`, :mod:`._inference` (latents and versions), :mod:`._counterfactual` and :mod:`._anchors`
(the counterfactual methods and their reference statistics) and :mod:`._file` (save, load, summaries).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError, ScMEDALError
from ..models import resolve_device
from ._anchors import Anchors
from ._config import make_config, make_networks
from ._counterfactual import Counterfactuals
from ._data import DataAccess
from ._file import ModelFile
from ._inference import Inference
from ._training import Training

if TYPE_CHECKING:
    from ..distributed import Comm

__all__ = ["ScMEDAL"]


class ScMEDAL(DataAccess, Training, Inference, Counterfactuals, Anchors, ModelFile):
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
    progress
        Called with ``{"pass": 1 | 2, "done", "total"}`` after each block of the two streaming passes when the
        data is read out of core (:class:`napari_scmedal.progress.ProgressBars` shows them); unused in memory.
    **hyperparameters
        Override any preset entry (e.g. ``lr=5e-4``, ``fe_w_recon=2000``, ``hidden=[256, 64]``).
    """

    def __init__(self, adata, batch_key: str = "batch", label_key: str | None = None, n_genes: int = 2916,
                 layer: str | None = None, seed: int = 0, preset: str = "auto", device=None,
                 threads: int | None = None, backed: bool | None = None, chunk_cells: int | None = None,
                 progress: Callable[[dict], None] | None = None, **hyperparameters) -> None:
        from ..data import prepare_training
        from ..data.ondisk import DEFAULT_CHUNK_CELLS, is_on_disk, stream_prepare

        config = make_config(preset, hyperparameters)
        on_disk = is_on_disk(adata)
        if backed and not on_disk:
            raise DataError("backed=True trains out of core from a file: pass the path of the .h5ad file (or "
                            "anndata.read_h5ad(path, backed='r')) instead of an in-memory AnnData.")
        if on_disk and backed is False:  # on disk, but the user wants it in memory
            from ..data import read_h5ad

            adata = adata.to_memory() if getattr(adata, "isbacked", False) else read_h5ad(
                getattr(adata, "path", None) or adata)
            on_disk = False
        if on_disk:
            comm = self._comm()
            plan = stream_prepare(adata, batch_key, label_key=label_key, n_genes=n_genes, layer=layer,
                                        input_kind=config["input_kind"], split_seed=config["split_seed"],
                                        split_fractions=tuple(config["split_fractions"]),
                                        chunk_cells=int(chunk_cells or DEFAULT_CHUNK_CELLS), comm=comm,
                                        progress=progress)
            recipe, splits, names = plan.recipe, plan.splits, plan.obs_names
        else:
            plan = None
            td = prepare_training(adata, batch_key, label_key=label_key, n_genes=n_genes, layer=layer,
                                  input_kind=config["input_kind"], split_seed=config["split_seed"],
                                  split_fractions=tuple(config["split_fractions"]))
            recipe, splits, names = td.recipe, td.splits, td.prepared.obs_names
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
    def _comm() -> Comm:
        from ..distributed import Comm

        return Comm()

    def _init_common(self, recipe, config, preset, seed, device, threads) -> None:
        """The state shared by a new model and a loaded one (no data, no networks yet)."""
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

    def _build_networks(self) -> None:
        self.nets: dict[str, torch.nn.Module] = make_networks(self.recipe, self.config, self.seed, self.device)

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """``torch.set_num_threads(self.threads)`` while inside (nothing when ``threads`` is None)."""
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    # ------------------------------------------------------------------ properties
    @property
    def backed(self) -> bool:
        """True when the model trains out of core from an on-disk .h5ad (see docs/scaling.md)."""
        return self._plan is not None

    @property
    def genes(self) -> list[str]:
        """The model's genes, in the order of every expression array it returns."""
        return list(self.recipe.genes)

    @property
    def batches(self) -> list[str]:
        """The batches (random-effect levels) the model knows, in the order of their codes."""
        return list(self.recipe.batches)

    @property
    def labels(self) -> list[str] | None:
        """The cell-type labels the model was trained with, or None."""
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
