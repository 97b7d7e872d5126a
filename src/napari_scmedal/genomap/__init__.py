"""Genomaps: gene layouts on a 2-D grid (Gromov-Wasserstein) and per-cell genomap images.

Pure core (numpy, scipy, POT); see docs/genomap.md.

>>> from napari_scmedal.genomap import compute_layout
>>> layout = compute_layout(X, shape=(54, 54), genes=gene_names, geometry="euclidean", seed=0)
>>> images = layout.project(X)          # (n_cells, 54, 54) float32, NaN on empty pixels

Modules: ``_layout`` (GenomapLayout, grid_shape), ``_compute`` (compute_layout), ``_quality``,
``ensure`` (a model's layout and z-score reference, computed once), ``limits`` (contrast limits),
``lazy`` (lazy stacks of every cell).
"""

from ._compute import compute_layout, gene_correlation, pixel_coordinates, radial_rings
from ._layout import GenomapLayout, grid_shape
from ._quality import layout_quality, zscore_stack
from .ensure import ensure_layout, layout_columns, resolve_layout, zscore_reference
from .lazy import difference_stack, genomap_stack, stack_source
from .limits import robust_limits, stack_limits, symmetric_limits

__all__ = [
    "GenomapLayout",
    "compute_layout",
    "difference_stack",
    "ensure_layout",
    "gene_correlation",
    "genomap_stack",
    "grid_shape",
    "layout_columns",
    "layout_quality",
    "pixel_coordinates",
    "radial_rings",
    "resolve_layout",
    "robust_limits",
    "stack_limits",
    "stack_source",
    "symmetric_limits",
    "zscore_reference",
    "zscore_stack",
]
