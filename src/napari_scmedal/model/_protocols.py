"""What the rest of the package uses of a model, as a :class:`typing.Protocol`.

Comparisons (:mod:`napari_scmedal.compare`), genomap stacks (:mod:`napari_scmedal.genomap`), gene sets and
figures accept any object with these attributes: a :class:`~napari_scmedal.model.ScMEDAL`, or a small test
double (:class:`ModelLike`, what :func:`~napari_scmedal.compare.compare_cells` needs; :class:`VersionsModel`
adds what lazy genomap stacks need).
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

    Every version of a cell comes from :meth:`predict_versions` (the model's one versions path); there are
    no fallbacks, so a test double implements exactly these members.
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

    def predict_versions(self, adata=None, batches: Sequence[str] | None = None, method: str = ...,
                         rows=None) -> dict[str, np.ndarray]:
        """``{"original", "fe", "re", "batch", "cf:<b>"...}`` for the cells, log1p units."""

    def _training_adata(self, adata=None) -> Any:
        """``adata``, or the model's training AnnData (an error with the fix when it has none)."""


@runtime_checkable
class VersionsModel(ModelLike, Protocol):
    """A :class:`ModelLike` that also serves lazy stacks and layouts on its own cells (a real :class:`ScMEDAL`)."""

    @property
    def trained_kinds(self) -> list[str]:
        """The trained networks (``"fe"``, ``"fec"``, ``"re"``)."""

    def get_version(self, version: str, adata=None, rows=None, method: str = ...) -> np.ndarray:
        """One version of the cells, ``(n_cells, n_genes)`` float32 in log1p units."""

    def n_cells(self, adata=None) -> int:
        """The number of cells the inference methods return rows for."""

    def _prepare(self, adata=None, lazy: bool = False) -> Any:
        """Model-ready rows of ``adata`` (the training cells when None)."""
