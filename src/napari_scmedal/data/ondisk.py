"""Out-of-core data under one import path: the public names of :mod:`.source` (row-block reading of an
``.h5ad`` file), :mod:`.stream` (streaming preprocessing) and :mod:`.lazy` (model-ready rows read on demand).

Kept so that ``from napari_scmedal.data.ondisk import stream_prepare`` and the like go on working; new code may
import from those modules directly (docs/scaling.md).
"""

from __future__ import annotations

from .lazy import LazyPrepared, PreparedLike, RowBlocks
from .normalize import seurat_hvg
from .source import DEFAULT_CHUNK_CELLS, H5adSource, is_on_disk, open_source, view_rows
from .stream import OnDiskTraining, stream_prepare

__all__ = ["DEFAULT_CHUNK_CELLS", "H5adSource", "LazyPrepared", "OnDiskTraining", "PreparedLike", "RowBlocks",
           "is_on_disk", "open_source", "seurat_hvg", "stream_prepare", "view_rows"]
