"""How the model reaches the cells it works on: its training cells, or data given to an inference method.

:class:`DataAccess` (a mixin of :class:`~napari_scmedal.model.ScMEDAL`) turns ``adata=None`` (the training
cells, in memory or out of core), an AnnData, a backed AnnData or an .h5ad path into model-ready rows
(:class:`~napari_scmedal.data.preprocess.Prepared` or a lazy look-alike that reads rows when sliced), and
restricts them to ``rows=(start, stop)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ._state import _State

__all__ = ["DataAccess"]

_NO_DATA = ("this model was loaded from a file and does not carry its training data; pass adata= (an AnnData "
            "with the model's genes and batch column")


class DataAccess(_State):
    """The model's data access: ``_training_adata``, ``_prepare``, ``_prepare_rows`` and ``n_cells``."""

    def _training_adata(self, adata=None):
        """``adata`` when given, else the AnnData the model was trained on (backed for out-of-core training)."""
        if adata is not None:
            return adata
        if self._plan is not None:  # trained out of core: the backed data (read-only), its kept cells
            if self._backed_adata is None:
                if self.recipe.layer is not None:
                    raise DataError("this model was trained out of core from a layer; pass adata= (e.g. "
                                    "napari_scmedal.data.read_h5ad(path, layer=...)) to use it here.")
                base = self._ondisk_input
                if base is None:
                    import anndata as ad

                    base = ad.read_h5ad(self._plan.source.path, backed="r")
                names = self._plan.obs_names
                if base.n_obs != len(names) or not pd.Index(base.obs_names.astype(str)).equals(names):
                    base = base[np.asarray(names)]
                self._backed_adata = base
            return self._backed_adata
        if self._adata is None:
            raise DataError(f"{_NO_DATA}).")
        return self._adata

    def _prepare(self, adata=None, lazy: bool = False):
        """Model-ready rows: the training cells (``adata=None``) or ``adata`` aligned through the recipe.
        On-disk data (a path, a backed AnnData, the out-of-core training file) and ``lazy=True`` give a
        :class:`~napari_scmedal.data.lazy.LazyPrepared` that reads rows when sliced."""
        from ..data.ondisk import LazyPrepared, is_on_disk

        if adata is None:
            if self._plan is not None:
                return self._plan.lazy()
            if self._prepared is None:
                raise DataError(f"{_NO_DATA}, e.g. the data it was trained on).")
            return self._prepared
        if not lazy:  # one-shot use: nothing is kept (an on-disk source closes when dropped)
            return LazyPrepared.from_source(self.recipe, adata) if is_on_disk(adata) else self.recipe.transform(adata)
        # row-range calls (genomap stacks) reuse the view of the same data: the whole data set's metadata is
        # matched to the recipe once. A path is keyed by the file's identity and modification time (a
        # rewritten file gets a new view), an object by its id and shape.
        key: tuple[Any, ...]
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

    def _prepare_rows(self, adata, rows):
        """:meth:`_prepare` of ``adata``, restricted to the cells ``rows=(start, stop)`` (all when None)."""
        if rows is None:
            return self._prepare(adata)
        start, stop = (int(r) for r in rows)
        prep = self._prepare(adata, lazy=True)  # cached per data: a path is not reopened per range
        n = prep.n_obs
        if not 0 <= start <= stop <= n:
            raise DataError(f"rows=({start}, {stop}) is outside the {n} cells; pass 0 <= start <= stop <= {n}.")
        return prep.block(start, stop) if hasattr(prep, "block") else prep.subset(np.arange(start, stop))

    def n_cells(self, adata=None) -> int:
        """Number of cells the inference methods return rows for.

        Parameters
        ----------
        adata
            An AnnData, a backed AnnData or an .h5ad path; ``None`` for the training cells.

        Returns
        -------
        int
            The number of rows of every array the inference methods return for ``adata``.
        """
        if adata is None:
            if self._plan is not None:
                return self._plan.n_obs
            if self._prepared is not None:
                return self._prepared.n_obs
            self._prepare(None)  # raises the "no training data" error
        return int(adata.n_obs) if hasattr(adata, "n_obs") else self._prepare(adata).n_obs


class _InMemoryLazy:
    """An in-memory AnnData as a lazily transformed :class:`Prepared` look-alike: ``block(a, b)``
    transforms only rows ``a:b`` (used for genomap stacks of every cell)."""

    def __init__(self, recipe, adata):
        self.recipe = recipe
        self.adata = adata
        _, _, batch, label = recipe.align_adata(adata)
        self.batch, self.label = batch, label
        self.obs_names = adata.obs_names

    @property
    def n_obs(self) -> int:
        return int(self.adata.n_obs)

    def block(self, start: int, stop: int):
        return self.recipe.transform(self.adata[int(start):int(stop)])

    def subset(self, idx):
        return self.recipe.transform(self.adata[np.asarray(idx)])
