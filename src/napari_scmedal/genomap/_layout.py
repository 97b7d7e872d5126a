"""The genomap layout object: gene <-> pixel lookup, projection into images, (de)serialisation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._utils import json_safe as _json_safe
from ..errors import LayoutError

__all__ = ["LAYOUT_FORMAT", "LAYOUT_VERSION", "GenomapLayout", "grid_shape"]

LAYOUT_FORMAT = "napari-scmedal.genomap-layout"
LAYOUT_VERSION = 1
GEOMETRIES = ("euclidean", "radial")

# rows of a sparse or very tall matrix converted to dense at a time in project()
_PROJECT_CHUNK_ELEMENTS = 1_000_000  # ~4 MB float32 per chunk: stays in cache


def grid_shape(n_genes: int) -> tuple[int, int]:
    """The genomap grid of ``n_genes`` genes: the smallest square that fits, less any empty rows.

    ``(rows, k)`` with ``k = ceil(sqrt(n))`` columns and the fewest rows that hold every gene
    (2,916 -> (54, 54), 3,000 -> (55, 55), 300 -> (17, 18), 90 -> (9, 10)). Every default in the
    package (compute_layout, ensure_layout, the model widget) uses this rule.
    """
    n = int(n_genes)
    if n < 1:
        raise LayoutError(f"A genomap needs at least one gene, got {n_genes}. Pass a matrix with gene columns.")
    k = math.isqrt(n)
    if k * k < n:
        k += 1
    return (-(-n // k), k)


def _check_shape(shape) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise LayoutError(f"shape must be two positive integers (rows, columns), got {shape!r}; "
                          "for example shape=(54, 54).") from None
    if r < 1 or c < 1:
        raise LayoutError(f"shape must be two positive integers (rows, columns), got {shape!r}; "
                          "for example shape=(54, 54).")
    return r, c


class GenomapLayout:
    """A one-to-one assignment of genes to the pixels of a ``rows x cols`` grid.

    Attributes
    ----------
    shape : (rows, cols)
    genes : list of gene names, in the column order of the matrix the layout was computed on
    pixel_of_gene : (n_genes, 2) int64 array, the (row, column) of each gene
    geometry : ``"euclidean"`` or ``"radial"`` (how the layout was computed)
    info : dict of JSON-safe facts about the computation (iterations, timings, objective)
    grid : (rows, cols) int64 array, the gene index at each pixel, -1 on empty pixels
    mask : (rows, cols) bool array, True on pixels that hold a gene
    """

    def __init__(self, shape, genes: Sequence[str], pixel_of_gene, geometry: str = "euclidean",
                 info: dict | None = None):
        self.shape = _check_shape(shape)
        self.genes = [str(g) for g in genes]
        pog = np.asarray(pixel_of_gene)
        n = len(self.genes)
        if pog.ndim != 2 or pog.shape != (n, 2):
            raise LayoutError(f"pixel_of_gene must have shape ({n}, 2) (one row, column per gene), "
                              f"got {pog.shape}. Recompute the layout with compute_layout().")
        if n and not np.issubdtype(pog.dtype, np.integer):
            if not np.all(np.isfinite(pog)) or not np.all(pog == np.round(pog)):
                raise LayoutError("pixel_of_gene must hold integer row and column indices. "
                                  "Recompute the layout with compute_layout().")
        pog = pog.astype(np.int64)
        rows, cols = self.shape
        if n > rows * cols:
            raise LayoutError(f"{n} genes do not fit a {rows} x {cols} grid ({rows * cols} pixels); "
                              f"use shape={grid_shape(n)} or larger.")
        if n and (pog.min() < 0 or pog[:, 0].max() >= rows or pog[:, 1].max() >= cols):
            raise LayoutError(f"pixel_of_gene has positions outside the {rows} x {cols} grid. "
                              "The layout is corrupt: recompute it with compute_layout().")
        if len(set(self.genes)) != n:
            dup = sorted({g for g in self.genes if self.genes.count(g) > 1})[:5]
            raise LayoutError(f"Gene names must be unique; repeated: {dup}. Make them unique "
                              "(e.g. adata.var_names_make_unique()) and recompute the layout.")
        flat = pog[:, 0] * cols + pog[:, 1]
        grid = np.full(rows * cols, -1, dtype=np.int64)
        grid[flat] = np.arange(n)
        if n and np.count_nonzero(grid >= 0) != n:
            raise LayoutError("Two genes share one pixel: the layout is not one-to-one. "
                              "Recompute it with compute_layout().")
        if geometry not in GEOMETRIES:
            raise LayoutError(f"Unknown geometry {geometry!r}; use one of {GEOMETRIES}.")
        self.geometry = geometry
        self.pixel_of_gene = pog
        self.pixel_of_gene.flags.writeable = False
        self._flat = flat
        self.grid = grid.reshape(rows, cols)
        self.grid.flags.writeable = False
        self.mask = self.grid >= 0
        self.mask.flags.writeable = False
        self._index = {g: i for i, g in enumerate(self.genes)}
        self.info = dict(info or {})

    # ------------------------------------------------------------------ lookup
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    def gene_at(self, row: int, col: int) -> str | None:
        """Gene name at pixel (row, col); None on an empty pixel or outside the grid."""
        r, c = int(row), int(col)
        if not (0 <= r < self.shape[0] and 0 <= c < self.shape[1]):
            return None
        i = self.grid[r, c]
        return None if i < 0 else self.genes[i]

    def pixel_of(self, gene: str) -> tuple[int, int]:
        """(row, column) of a gene; LayoutError if the gene is not in the layout."""
        i = self._index.get(str(gene))
        if i is None:
            raise LayoutError(f"Gene {gene!r} is not in this genomap layout ({self.n_genes} genes). "
                              "Check the spelling, or use layout.genes to list the genes it holds.")
        r, c = self.pixel_of_gene[i]
        return int(r), int(c)

    def index_of(self, gene: str) -> int:
        """Column index of a gene in the layout's gene order."""
        self.pixel_of(gene)
        return self._index[str(gene)]

    # -------------------------------------------------------------- projection
    def project(self, X, chunk_size: int | None = None, out: np.ndarray | None = None,
                n_threads: int | None = None) -> np.ndarray:
        """Scatter each row of ``X`` (cells x the layout's genes, in ``genes`` order) into an image.

        Returns a float32 array of shape ``(n_cells, rows, cols)``; empty pixels are NaN. Values are
        copied unchanged (no rescaling). Dense arrays and scipy sparse matrices are accepted; sparse
        or very large inputs are converted in row chunks of ``chunk_size`` rows. ``out``: an optional
        C-contiguous float32 array of shape ``(n_cells, rows, cols)`` to write into (reused buffers
        avoid the cost of fresh memory when projecting many batches). ``n_threads``: worker
        threads for large inputs (numpy releases the GIL in the gather; default: up to 4, at most
        the CPU count; 1 = no threads).
        """
        if sp.issparse(X):
            X = X.tocsr()
        elif not isinstance(X, np.ndarray):
            X = np.asarray(X)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_genes:
            raise LayoutError(f"project() needs a cells x genes matrix with {self.n_genes} columns in the "
                              f"layout's gene order, got shape {tuple(X.shape)}. Select the layout's genes "
                              "first, e.g. adata[:, layout.genes].X.")
        n = X.shape[0]
        rows, cols = self.shape
        npix = rows * cols
        full = self.n_genes == npix
        # gene index for every pixel (0 for empty ones, overwritten with NaN afterwards)
        src = np.where(self.grid.ravel() >= 0, self.grid.ravel(), 0).astype(np.intp)
        empty = np.flatnonzero(~self.mask.ravel())
        if out is None:
            out = np.empty((n, npix), dtype=np.float32)
        else:
            if (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n, rows, cols)
                    or not out.flags.c_contiguous):
                raise LayoutError(f"out must be a C-contiguous float32 array of shape {(n, rows, cols)}.")
            out = out.reshape(n, npix)
        if chunk_size is None:
            chunk_size = max(1, _PROJECT_CHUNK_ELEMENTS // max(npix, 1))
        chunk_size = max(1, int(chunk_size))
        # one gather per cache-sized chunk of rows (no Python loop over cells); indices are valid
        # by construction, so mode="clip" only skips numpy's per-element bounds check
        def gather(start: int) -> None:
            stop = min(n, start + chunk_size)
            block = X[start:stop]
            if sp.issparse(block):
                block = block.toarray()
            block = np.asarray(block, dtype=np.float32)
            oc = out[start:stop]
            np.take(block, src, axis=1, out=oc, mode="clip")
            if not full:
                oc[:, empty] = np.nan

        starts = range(0, n, chunk_size)
        if n_threads is None:
            n_threads = min(4, os.cpu_count() or 1)
        n_threads = max(1, min(int(n_threads), len(starts)))
        if n_threads == 1:
            for start in starts:
                gather(start)
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(gather, starts))
        return out.reshape(n, rows, cols)

    def values_at_pixels(self, images: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`project`: (n, rows, cols) images -> (n, n_genes) in gene order."""
        images = np.asarray(images)
        if images.shape[-2:] != self.shape:
            raise LayoutError(f"Images of shape {images.shape[-2:]} do not match this {self.shape} layout.")
        flat = images.reshape(images.shape[:-2] + (self.n_pixels,))
        return flat[..., self._flat]

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (stored in the model file); inverse of :meth:`from_dict`."""
        return {
            "format": LAYOUT_FORMAT,
            "version": LAYOUT_VERSION,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "geometry": self.geometry,
            "genes": list(self.genes),
            "pixel_of_gene": self.pixel_of_gene.tolist(),
            "info": _json_safe(self.info),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenomapLayout:
        """Rebuild a layout from :meth:`to_dict` output; LayoutError if it is not one."""
        if not isinstance(d, dict) or d.get("format") != LAYOUT_FORMAT:
            raise LayoutError("This is not a napari-scmedal genomap layout (missing or wrong 'format'). "
                              "Recompute the layout with compute_layout().")
        version = d.get("version")
        if not isinstance(version, int) or version > LAYOUT_VERSION:
            raise LayoutError(f"Genomap layout version {version!r} is newer than this napari-scmedal "
                              f"understands ({LAYOUT_VERSION}); upgrade napari-scmedal or recompute the layout.")
        try:
            shape, genes, pog = d["shape"], d["genes"], d["pixel_of_gene"]
        except KeyError as e:
            raise LayoutError(f"Genomap layout is missing {e}; recompute it with compute_layout().") from None
        pog = np.asarray(pog, dtype=np.int64).reshape(-1, 2) if len(pog) else np.zeros((0, 2), np.int64)
        return cls(shape, genes, pog, geometry=d.get("geometry", "euclidean"), info=d.get("info") or {})

    # ------------------------------------------------------------------ misc
    def __eq__(self, other) -> bool:
        if not isinstance(other, GenomapLayout):
            return NotImplemented
        return (self.shape == other.shape and self.genes == other.genes
                and np.array_equal(self.pixel_of_gene, other.pixel_of_gene) and self.geometry == other.geometry)

    def __repr__(self) -> str:
        return (f"GenomapLayout({self.n_genes} genes on {self.shape[0]} x {self.shape[1]}, "
                f"geometry={self.geometry!r})")


