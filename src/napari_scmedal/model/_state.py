"""The state the mixins of :class:`~napari_scmedal.model.ScMEDAL` share, as seen by a type checker.

:class:`_State` is the common base of the mixins (:mod:`._data`, :mod:`._training`, :mod:`._inference`,
:mod:`._counterfactual`, :mod:`._anchors`, :mod:`._file`). At run time it is an empty class at the end of
the method resolution order: the attributes are set by ``ScMEDAL._init_common`` and ``ScMEDAL.__init__``,
the methods live in the mixin (or in :mod:`._scmedal`) that implements them. Under ``TYPE_CHECKING`` it
declares both, so that each mixin type-checks on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib

    import numpy as np
    import torch

    from ..data.recipe import Prepared, Recipe
    from ..data.stream import OnDiskTraining
    from ..distributed import Comm
    from ..genomap._layout import GenomapLayout

__all__: list[str] = []


class _State:
    """The attributes and cross-mixin methods of :class:`~napari_scmedal.model.ScMEDAL` (declarations only)."""

    if TYPE_CHECKING:
        # ---- set by ScMEDAL._init_common (a new model and a loaded one)
        recipe: Recipe
        config: dict[str, Any]
        preset: str
        seed: int
        device: torch.device
        threads: int | None
        history: dict[str, dict[str, Any]]
        health: dict[str, dict[str, Any]]
        derived: dict[str, Any] | None
        layout: GenomapLayout | None
        nets: dict[str, torch.nn.Module]
        splits: dict[str, list[str]]
        _trained: list[str]
        _adata: Any
        _prepared: Prepared | None
        _plan: OnDiskTraining | None
        _backed_adata: Any
        _ondisk_input: Any
        _split_idx: dict[str, np.ndarray]
        _cf_anchors: dict[str, np.ndarray] | None

        # ---- ScMEDAL (_scmedal.py)
        @staticmethod
        def _comm() -> Comm: ...

        def _threads(self) -> contextlib.AbstractContextManager[None]: ...

        def _init_common(self, recipe: Recipe, config: dict[str, Any], preset: str, seed: int, device: Any,
                         threads: int | None) -> None: ...

        def _build_networks(self) -> None: ...

        @property
        def backed(self) -> bool: ...

        @property
        def genes(self) -> list[str]: ...

        @property
        def batches(self) -> list[str]: ...

        @property
        def labels(self) -> list[str] | None: ...

        # ---- DataAccess (_data.py)
        def _training_adata(self, adata: Any = None) -> Any: ...

        def _prepare(self, adata: Any = None, lazy: bool = False) -> Any: ...

        def _prepare_rows(self, adata: Any, rows: Any) -> Any: ...

        # ---- Inference (_inference.py)
        def _check_kind(self, kind: str, allowed: Any) -> None: ...

        def _run(self, kind: str, prep: Any, what: Any, z_override: torch.Tensor | None = None,
                 batch_size: int = 4096) -> Any: ...

        # ---- Counterfactuals (_counterfactual.py)
        def _check_method(self, method: Any) -> str: ...

        def _counterfactuals(self, prep: Any, codes: Any, method: str, *, scaled: bool = False,
                             batch_size: int = 4096, outputs: dict | None = None
                             ) -> tuple[list[np.ndarray], list[np.ndarray] | None]: ...

        # ---- Anchors (_anchors.py)
        def _anchors(self) -> dict[str, np.ndarray]: ...
