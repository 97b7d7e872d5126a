"""Model-ready rows of an on-disk data set, read and transformed only when sliced.

:class:`LazyPrepared` behaves like a :class:`~napari_scmedal.data.Prepared` whose ``X``/``X_log`` are read
from the file block by block and transformed with the recipe (:meth:`Recipe.log_block`, the arithmetic of
every other path). :class:`PreparedLike` names what inference code may use of either.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .recipe import Prepared, Recipe, norm_rows, one_hot
from .source import DEFAULT_CHUNK_CELLS, H5adSource, open_source, view_rows

__all__ = ["LazyPrepared", "PreparedLike", "RowBlocks"]


@runtime_checkable
class PreparedLike(Protocol):
    """What the model's inference code uses of prepared data: a :class:`~napari_scmedal.data.Prepared`
    (in memory) or a :class:`LazyPrepared` (on disk, rows read when sliced).

    ``X`` (model space) and ``X_log`` (log1p units) are ``(n_obs, n_genes)`` float32 arrays or array-likes that
    slice by rows (``X[a:b]``, ``X[idx]``) and have a ``shape``; ``batch`` holds int64 batch codes,
    ``batch_onehot`` the ``(n_obs, n_batches)`` one-hot rows (sliceable), ``label`` int64 label codes (-1 =
    unknown) or None, ``obs_names`` the cell names.
    """

    X: object
    X_log: object
    batch: np.ndarray
    batch_onehot: object
    label: np.ndarray | None
    obs_names: pd.Index

    @property
    def n_obs(self) -> int:
        """Number of cells (rows)."""
        ...

    def subset(self, idx) -> Prepared:
        """Rows at positions ``idx`` (integers or a boolean mask) as an in-memory :class:`Prepared`."""
        ...


@runtime_checkable
class RowBlocks(PreparedLike, Protocol):
    """Prepared data that also read a contiguous range of rows at once (:meth:`LazyPrepared.block`)."""

    def block(self, start: int, stop: int) -> Prepared:
        """Rows ``start:stop`` (positions) as an in-memory :class:`Prepared`."""
        ...


class _Rows:
    """``prepared.X`` / ``prepared.X_log`` of a :class:`LazyPrepared`: slicing reads and transforms rows."""

    def __init__(self, owner: LazyPrepared, what: str):
        self._owner, self._what = owner, what

    @property
    def shape(self) -> tuple[int, int]:
        return (self._owner.n_obs, self._owner.recipe.n_genes)

    def __len__(self) -> int:
        return self._owner.n_obs

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None), *rest)]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._owner.n_obs)
            if step != 1:
                return getattr(self._owner.subset(np.arange(start, stop, step)), self._what)
            return getattr(self._owner.block(start, stop), self._what)
        if isinstance(key, (int, np.integer)):
            return getattr(self._owner.block(int(key), int(key) + 1), self._what)[0]
        return getattr(self._owner.subset(key), self._what)

    def __array__(self, dtype=None, copy=None):
        arr = getattr(self._owner.block(0, self._owner.n_obs), self._what)
        return arr if dtype is None else arr.astype(dtype, copy=False)


class LazyPrepared:
    """Model-ready rows of an on-disk data set, read on demand (a :class:`Prepared` look-alike, :class:`RowBlocks`).

    ``X`` and ``X_log`` slice like arrays (``X[a:b]`` reads rows ``a:b`` from the file and transforms
    them with the recipe; the last block is cached so ``X[a:b]`` then ``X_log[a:b]`` read once);
    ``batch``, ``batch_onehot`` (computed per slice), ``label`` and ``obs_names`` are in memory.
    :meth:`block` and :meth:`subset` return ordinary :class:`Prepared` objects.
    """

    def __init__(self, recipe: Recipe, source: H5adSource, rows, batch, label, obs_names, gene_idx, norm_idx,
                 chunk_cells: int = DEFAULT_CHUNK_CELLS):
        self.recipe = recipe
        self.source = source
        self.file_rows = np.asarray(rows, dtype=np.int64)
        self.batch = np.asarray(batch, dtype=np.int64)
        self.label = None if label is None else np.asarray(label, dtype=np.int64)
        self.obs_names = pd.Index(obs_names)
        self.gene_idx = np.asarray(gene_idx, dtype=np.int64)
        self.norm_idx = norm_idx
        self.chunk_cells = int(chunk_cells)
        self.X = _Rows(self, "X")
        self.X_log = _Rows(self, "X_log")
        self.batch_onehot = _OneHot(self)
        self.label_onehot = None
        self._cache: tuple | None = None

    @classmethod
    def from_source(cls, recipe: Recipe, data, layer=None, require_labels: bool = False,
                    chunk_cells: int = DEFAULT_CHUNK_CELLS) -> LazyPrepared:
        """Every cell of an on-disk data set (path, backed AnnData or source), aligned to ``recipe``
        (raises RecipeMismatchError like :meth:`Recipe.transform`)."""
        src = open_source(data, recipe.layer if layer is None else layer)
        rows, obs = view_rows(data, src, sort=False)  # a backed view: its cells, in the view's order
        idx, norm_idx, batch, label = recipe.align(obs, src.var_names, require_labels, var=src.var)
        return cls(recipe, src, rows, batch, label, pd.Index(obs.index.astype(str)), idx, norm_idx, chunk_cells)

    @property
    def n_obs(self) -> int:
        return int(self.file_rows.size)

    def __len__(self) -> int:
        return self.n_obs

    def _make(self, file_rows_block, positions) -> Prepared:
        sub, n_nonint, vmax = self.recipe.log_block(file_rows_block, self.gene_idx,
                                                    norm_rows(self.norm_idx, positions), self.source.where)
        if sub.shape[0]:
            self.recipe.check_kind(n_nonint, vmax, self.source.where)
        b = self.batch[positions]
        lab = None if self.label is None else self.label[positions]
        return Prepared(X=self.recipe.scale(sub), X_log=sub, batch=b, batch_onehot=one_hot(b, self.recipe.n_batches),
                        label=lab, label_onehot=None if lab is None else one_hot(lab, self.recipe.n_labels),
                        obs_names=self.obs_names[positions])

    def block(self, start: int, stop: int) -> Prepared:
        """Rows ``start:stop`` (positions) as a :class:`Prepared`, read from the file."""
        start, stop = int(start), int(min(stop, self.n_obs))
        cached = self._cache  # one read: another thread may replace it meanwhile
        if cached is not None and cached[0] == (start, stop):
            return cached[1]
        pos = np.arange(start, max(stop, start))
        fr = self.file_rows[pos]
        if fr.size and np.all(np.diff(fr) == 1):  # consecutive increasing file rows: one read
            raw = self.source.read(fr[0], fr[-1] + 1)
        else:
            raw = self.source.read_rows(fr, window=max(self.chunk_cells, 1))
        out = self._make(raw, pos)
        self._cache = ((start, stop), out)
        return out

    def subset(self, idx) -> Prepared:
        """Rows at positions ``idx`` (integers or boolean mask) as a :class:`Prepared`."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        raw = self.source.read_rows(self.file_rows[idx], window=max(self.chunk_cells, 1))
        return self._make(raw, idx)


class _OneHot:
    def __init__(self, owner: LazyPrepared):
        self._owner = owner

    @property
    def shape(self):
        return (self._owner.n_obs, self._owner.recipe.n_batches)

    def __getitem__(self, key):
        return one_hot(self._owner.batch[key], self._owner.recipe.n_batches)

    def __array__(self, dtype=None, copy=None):
        out = one_hot(self._owner.batch, self._owner.recipe.n_batches)
        return out if dtype is None else out.astype(dtype, copy=False)
