"""What the rest of the package uses of a model, as a :class:`typing.Protocol`.

Comparisons (:mod:`napari_scmedal.compare`), genomap stacks (:mod:`napari_scmedal.genomap`), gene sets and
figures accept any object with these attributes: a :class:`~napari_scmedal.model.ScMEDAL`, or a small test
double (:class:`ModelLike`; :class:`VersionsModel` adds the batched versions API a real model has).
Type hints there name these protocols instead of importing the model class, so those modules do
not depend on the model's implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ModelLike", "VersionsModel"]


@runtime_checkable
class ModelLike(Protocol):
    """A trained model as comparisons, genomap stacks and figures see it.

    Required: the attributes and methods below. Optional (looked up with ``getattr``, so test doubles may
    leave them out): ``predict_versions`` (the batched path; else ``get_reconstruction`` and
    ``get_counterfactual_expression`` per version), ``n_cells`` and ``_prepare`` (the model's own cells
    without an AnnData), ``_training_adata`` (else ``adata`` / ``_adata``), ``trained_kinds`` and
    ``set_layout`` (when ``layout`` is read-only).
    """

    #: The preprocessing recipe: ``batch_key``, ``label_key``, ``layer``, ``transform``, ``align``, ...
    recipe: Any
    #: The genomap layout attached to the model, or None.
    layout: Any

    @property
    def genes(self) -> list[str]:
        """The model's genes, in the column order of every expression array."""

    @property
    def batches(self) -> list[str]:
        """The batches the model knows."""

    def get_reconstruction(self, kind: str = "fe", adata=None, scaled: bool = False) -> np.ndarray:
        """``(n_cells, n_genes)`` reconstruction by ``kind`` in log1p units."""

    def get_counterfactual_expression(self, target_batch=None, adata=None, *args, **kwargs) -> np.ndarray:
        """``(n_cells, n_genes)`` counterfactual into ``target_batch`` in log1p units."""


@runtime_checkable
class VersionsModel(ModelLike, Protocol):
    """A :class:`ModelLike` with the batched versions API (what a real :class:`ScMEDAL` offers)."""

    @property
    def trained_kinds(self) -> list[str]:
        """The trained networks (``"fe"``, ``"fec"``, ``"re"``)."""

    def predict_versions(self, adata=None, batches: Sequence[str] | None = None, method: str = ...,
                         rows=None) -> dict[str, np.ndarray]:
        """``{"original", "fe", "re", "batch", "cf:<b>"...}`` for the cells."""

    def get_version(self, version: str, adata=None, rows=None, method: str = ...) -> np.ndarray:
        """One version of the cells, ``(n_cells, n_genes)`` float32 in log1p units."""

    def n_cells(self, adata=None) -> int:
        """The number of cells the inference methods return rows for."""

    def _prepare(self, adata=None, lazy: bool = False) -> Any:
        """Model-ready rows of ``adata`` (the training cells when None)."""
