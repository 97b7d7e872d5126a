"""The model's files and summaries: save and load, ``summary()`` and ``write_to_adata()``.

:class:`ModelFile` (a mixin of :class:`~napari_scmedal.model.ScMEDAL`) turns the model into the tensors and
metadata of one safetensors file and back; the file format itself (the atomic write, the header checks)
is :mod:`napari_scmedal.modelfile`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .._utils import json_safe
from ..errors import ModelFileError, ScMEDALError
from ..modelfile import (
    FILE_FORMAT,
    FILE_VERSION,
    anchors_from_tensors,
    check_shapes,
    read_model_file,
    read_tensors,
    write_model_file,
)
from ..models.defaults import validate_config
from ._config import make_networks, software_versions
from ._state import _State

__all__ = ["ModelFile"]

_Model = TypeVar("_Model", bound="ModelFile")


class ModelFile(_State):
    """The model's file and AnnData outputs."""

    def summary(self) -> dict:
        """A JSON-safe description of the model.

        Returns
        -------
        dict
            Genes, batches, labels, keys, preset, seed, config, trained kinds, best epochs, health,
            derived settings and the software versions.
        """
        s: dict[str, Any] = {"genes": self.genes, "batches": self.batches, "batch_key": self.recipe.batch_key,
             "preset": self.preset, "seed": self.seed, "trained": list(self._trained),
             "config": self.config, "versions": software_versions(), "n_genes": int(self.recipe.n_genes)}
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
        """Write the latents and the model's summary into ``adata``, in place (only these keys).

        Adds ``obsm["X_scmedal_fe"]``, ``obsm["X_scmedal_re"]`` (and ``"X_scmedal_fec"`` when trained)
        for every cell of ``adata`` (aligned through the recipe; no cell is dropped) and
        ``uns["scmedal"]`` (the JSON-safe :meth:`summary`).

        Parameters
        ----------
        adata
            An in-memory AnnData with the model's genes and batch column.

        Raises
        ------
        ScMEDALError
            When no network is trained.
        """
        if not self._trained:
            raise ScMEDALError("the model is not trained yet; call model.train() before write_to_adata().")
        prep = self.recipe.transform(adata)  # one row per cell: the recipe never drops cells
        results = {k: self._run(k, prep, "latent") for k in self._trained}
        for k, z in results.items():
            adata.obsm[f"X_scmedal_{k}"] = z
        s = self.summary()
        s["config"] = {k: v for k, v in s["config"].items() if v is not None}
        adata.uns["scmedal"] = json_safe(s, drop_none=True)  # a copy; h5ad cannot store None

    def save(self, path) -> Path:
        """Write one safetensors file (all networks' tensors + JSON metadata) atomically.

        A temp file in the same folder is written, fsync'ed and renamed over ``path``; an error mid-save
        leaves an existing file untouched (:func:`napari_scmedal.modelfile.write_model_file`).

        Parameters
        ----------
        path
            The file to write (e.g. ``"model.scmedal.safetensors"``).

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        ModelFileError
            For a missing or unwritable folder.
        """
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
            "versions": software_versions(), "layout": None if self.layout is None else self.layout.to_dict(),
            "health": self.health, "derived": self.derived,
            "cf_groups": None if anchors is None else anchors.get("groups"),
        }
        return write_model_file(path, tensors, meta)

    @classmethod
    def load(cls: type[_Model], path, device=None, threads: int | None = None) -> _Model:
        """Load a model written by :meth:`save`.

        Never unpickles, never trusts the metadata: the configuration and the preprocessing recipe are
        validated and the tensor shapes they imply are checked against the file's header before any
        network is built. The loaded model carries no training data: pass ``adata=`` to the inference
        methods.

        Parameters
        ----------
        path
            The model file.
        device
            ``None`` = CUDA when available, else CPU; or e.g. ``"cpu"``, ``"cuda:0"``.
        threads
            CPU threads used while inferring (``torch.set_num_threads``); ``None`` leaves it.

        Returns
        -------
        ScMEDAL
            The model, its networks in eval mode on ``device``.

        Raises
        ------
        ModelFileError
            For a missing, truncated, corrupt, foreign, inconsistent or newer-version file.
        """
        path = Path(path)
        meta, shapes = read_model_file(path)
        try:
            obj = cls._from_meta(path, meta, shapes, device, threads)
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
            from ..genomap._layout import GenomapLayout

            try:
                obj.layout = GenomapLayout.from_dict(meta["layout"])
            except Exception as e:
                raise ModelFileError(f"{path}: the stored genomap layout cannot be read ({e}); re-save the "
                                     f"model.") from None
        return obj

    @classmethod
    def _from_meta(cls, path: Path, meta: dict, shapes: dict, device, threads):
        """A model without networks from a file's checked metadata (tensor shapes compared with ``shapes``)."""
        from ..data.recipe import Recipe
        from ..models.health import NOT_CHECKED

        recipe = Recipe.from_dict(meta["recipe"])
        config = validate_config(dict(meta["config"]), ModelFileError, f"{path}: the stored ")
        seed = meta["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ModelFileError(f"{path}: the stored seed {seed!r} is not a whole number; the file is damaged.")
        expected = make_networks(recipe, config, seed, "meta")  # shapes only, nothing allocated
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
        return obj
