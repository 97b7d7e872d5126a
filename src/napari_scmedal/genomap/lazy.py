"""Lazy genomap stacks of every cell: a dask array computed chunk by chunk on demand.

>>> from napari_scmedal.genomap import genomap_stack
>>> stack = genomap_stack(model, version="cf:batch3")        # (n_cells, rows, cols), nothing computed yet
>>> stack[1234].compute()                                      # runs the model on cells 1216..1279 only

Each chunk of ``chunk_cells`` cells is one call of ``model.get_version(version, adata, rows=(a, b))``
(which reads only those rows, from the file for on-disk data) followed by ``layout.project``. Building
the stack does only cheap work: the genomap layout (``genomap.ensure_layout``: once per model, on a
sample of 2,000 cells), the number of cells and, for an explicit ``adata``, the alignment of its
metadata to the model's recipe (so a mismatch fails here, not later in a viewer's slicing thread).

Memory: a stack keeps at most ``cache_chunks`` computed chunks (least recently used dropped), so
scrolling through the cells one by one costs one model call per chunk and memory bounded by
``cache_chunks * chunk_cells * rows * cols * itemsize`` (4 x 64 x 54 x 54 x 4 bytes = 3 MB by default),
whatever the number of cells. The model is shared by the stacks of one model through one lock: chunks
can be computed from any thread (napari's slicing threads, dask's threaded scheduler) and are computed
one at a time per model (torch, the model's lazily built anchors and its thread setting are not meant
for concurrent use).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, ScMEDALError
from ..versions import CF_DEFAULT, check_version
from .ensure import layout_columns, resolve_layout

if TYPE_CHECKING:
    from dask.typing import Graph

    from ..model._protocols import VersionsModel

__all__ = ["LazyGenomaps", "difference_stack", "genomap_stack", "stack_source"]

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_SOURCES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # stack name -> its LazyGenomaps


def _model_lock(model) -> threading.RLock:
    """One re-entrant lock per model object, shared by all its stacks."""
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
        except TypeError:  # not weak-referenceable: keep it on the object
            lock = getattr(model, "_genomap_stack_lock", None)
            if lock is None:
                lock = threading.RLock()
                model._genomap_stack_lock = lock
        return lock


def _resolve_adata(model, adata):
    """The data the chunks read: None (the model's cells), an in-memory AnnData, or an on-disk source
    opened once. Raises the recipe's errors for data that does not fit the model."""
    if adata is None:
        return None, model.n_cells(None)
    from ..data.ondisk import is_on_disk, open_source

    if is_on_disk(adata):
        if getattr(adata, "is_view", False):  # a backed view: some rows of its file, resolved by the model per call
            model.recipe.align(adata.obs, adata.var_names, var=adata.var)
            return adata, int(adata.n_obs)
        src = open_source(adata, model.recipe.layer)  # opened once (obs and var names read once)
        model.recipe.align(src.obs, src.var_names, var=src.var)
        return src, int(src.n_obs)
    if not hasattr(adata, "obs") or not hasattr(adata, "var_names"):
        raise DataError(f"adata must be an AnnData, a path to an .h5ad file or a backed AnnData, got "
                        f"{type(adata).__name__}.")
    model.recipe.align_adata(adata)
    return adata, int(adata.n_obs)


class LazyGenomaps:
    """The chunk function behind a lazy stack: ``chunk(a, b)`` -> ``(b - a, rows, cols)`` genomaps of
    cells ``a:b`` of one version, with a small LRU cache of computed chunks. Thread-safe."""

    def __init__(self, model, adata, version, method, layout, n_cells, chunk_cells, dtype,
                 cache_chunks) -> None:
        self.model = model
        self.adata = adata
        self.version = version
        self.method = method
        self.layout = layout
        self.columns = layout_columns(layout, model.genes)
        self.n_cells = int(n_cells)
        self.chunk_cells = int(chunk_cells)
        self.dtype = np.dtype(dtype)
        self.cache_chunks = int(cache_chunks)
        self.calls = 0  # model calls made (chunks computed, cache misses)
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self._model_lock = _model_lock(model)

    def _cached(self, key):
        with self._cache_lock:
            out = self._cache.get(key)
            if out is not None:
                self._cache.move_to_end(key)
            return out

    def chunk(self, start: int, stop: int) -> np.ndarray:
        key = (int(start), int(stop))
        out = self._cached(key)
        if out is not None:
            return out
        with self._model_lock:
            out = self._cached(key)  # computed by another thread while this one waited
            if out is not None:
                return out
            X = self.model.get_version(self.version, adata=self.adata, rows=key, method=self.method)
            self.calls += 1
            X = np.asarray(X, dtype=np.float32)
            if X.shape[0] != key[1] - key[0]:
                raise ScMEDALError(f"model.get_version returned {X.shape[0]} rows for cells {key[0]}:{key[1]}; "
                                   "the data changed since the stack was built. Build the stack again.")
            imgs = self.layout.project(np.ascontiguousarray(X[:, self.columns]), n_threads=1)
            if imgs.dtype != self.dtype:
                imgs = imgs.astype(self.dtype)
            imgs.setflags(write=False)  # shared between callers through the cache
            if self.cache_chunks > 0:
                with self._cache_lock:
                    self._cache[key] = imgs
                    while len(self._cache) > self.cache_chunks:
                        self._cache.popitem(last=False)
            return imgs

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    @property
    def cached_bytes(self) -> int:
        with self._cache_lock:
            return int(sum(a.nbytes for a in self._cache.values()))


def _as_dask(source: LazyGenomaps, name_prefix: str):
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    R, C = source.layout.shape
    n, c = source.n_cells, source.chunk_cells
    bounds = [(a, min(a + c, n)) for a in range(0, n, c)]
    name = f"{name_prefix}-{uuid.uuid4().hex}"
    dsk: Graph = {(name, i, 0, 0): (source.chunk, a, b) for i, (a, b) in enumerate(bounds)}
    sizes = tuple(b - a for a, b in bounds) or (0,)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=(sizes, (R,), (C,)), dtype=source.dtype,
                    meta=np.empty((0, 0, 0), dtype=source.dtype))


def genomap_stack(model: VersionsModel, adata=None, version: str = "original", *, chunk_cells: int = 64,
                  method: str = CF_DEFAULT, layout=None, dtype=np.float32, cache_chunks: int = 4):
    """Genomaps of every cell as a lazy ``dask.array.Array`` of shape ``(n_cells, rows, cols)``.

    Parameters
    ----------
    model
        A trained (or loaded) :class:`~napari_scmedal.ScMEDAL`.
    adata
        ``None`` (the model's training cells, in memory or on disk), an in-memory AnnData, a path to an
        ``.h5ad`` file or a backed AnnData (rows read from the file chunk by chunk).
    version
        ``"original"`` (preprocessed input; needs no trained network), ``"fe"``, ``"re"`` (``"fec"``)
        reconstructions, or ``"cf:<batch>"``: the counterfactual to that batch (``method`` as in
        :meth:`~napari_scmedal.ScMEDAL.get_counterfactual_expression`). log1p units.
    chunk_cells
        Cells per chunk (one model call each); chunks are ``(chunk_cells, rows, cols)``.
    layout
        A :class:`GenomapLayout` to use (validated, not attached); default: the model's, computed once
        by :func:`napari_scmedal.genomap.ensure_layout` (seed 0) and attached to the model.
    dtype
        Floating dtype of the images (NaN on empty pixels), float32 by default.
    cache_chunks
        Computed chunks kept (LRU) so that scrolling within a chunk does not rerun the model; 0 = none.

    Nothing is computed per cell until the array (or a slice of it) is computed; computing cell ``k``
    runs only the chunk holding ``k``. The chunk function is thread-safe (one lock per model).
    :func:`stack_source` gives the stack's layout, version and counters.
    """
    if isinstance(chunk_cells, bool) or not isinstance(chunk_cells, (int, np.integer)) or chunk_cells < 1:
        raise ScMEDALError(f"chunk_cells must be a whole number >= 1 (cells per chunk), got {chunk_cells!r}; "
                           "64 is a good default for scrolling.")
    if isinstance(cache_chunks, bool) or not isinstance(cache_chunks, (int, np.integer)) or cache_chunks < 0:
        raise ScMEDALError(f"cache_chunks must be a whole number >= 0, got {cache_chunks!r}.")
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ScMEDALError(f"dtype must be a floating type (empty pixels are NaN), got {dt}; use np.float32 "
                           "or np.float16.")
    version = check_version(model, version, method)
    data, n = _resolve_adata(model, adata)
    layout = resolve_layout(model, layout, adata if data is None else data)
    source = LazyGenomaps(model, data, version, method, layout, n, int(chunk_cells), dt, int(cache_chunks))
    arr = _as_dask(source, "genomaps-" + version.replace(":", "-").replace(" ", "_")[:40])
    _SOURCES[arr.name] = source
    return arr


def stack_source(stack) -> LazyGenomaps | None:
    """The :class:`LazyGenomaps` behind a stack made by :func:`genomap_stack` (None for other arrays):
    its ``layout``, ``version``, ``calls`` (model calls so far) and ``cached_bytes``."""
    return _SOURCES.get(getattr(stack, "name", None))


def difference_stack(model, adata=None, version_a: str = "fe", version_b: str = "original", **kwargs):
    """Lazy ``genomap_stack(version_a) - genomap_stack(version_b)`` on the same layout (e.g. a
    counterfactual minus the original: the batch effect of every cell). Same keyword arguments."""
    layout = kwargs.pop("layout", None)
    version_a = check_version(model, version_a, kwargs.get("method", CF_DEFAULT))
    version_b = check_version(model, version_b, kwargs.get("method", CF_DEFAULT))
    a = genomap_stack(model, adata, version_a, layout=layout, **kwargs)
    source = stack_source(a)
    assert source is not None  # genomap_stack registers every stack it makes (alive while the stack is)
    b = genomap_stack(model, adata, version_b, layout=source.layout, **kwargs)
    return a - b
