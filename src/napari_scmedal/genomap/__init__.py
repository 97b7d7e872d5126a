"""Genomaps: gene layouts on a 2-D grid (Gromov-Wasserstein) and per-cell genomap images.

Pure core (numpy, scipy, POT); see docs/genomap.md.

>>> from napari_scmedal.genomap import compute_layout
>>> layout = compute_layout(X, shape=(54, 54), genes=gene_names, geometry="euclidean", seed=0)
>>> images = layout.project(X)          # (n_cells, 54, 54) float32, NaN on empty pixels
"""

from ._compute import compute_layout, gene_correlation, pixel_coordinates, radial_rings
from ._layout import GenomapLayout, square_shape
from ._quality import layout_quality, zscore_stack
from .lazy import difference_stack, genomap_stack, stack_limits, stack_source

__all__ = [
    "compute_layout",
    "GenomapLayout",
    "square_shape",
    "zscore_stack",
    "layout_quality",
    "gene_correlation",
    "radial_rings",
    "pixel_coordinates",
    "genomap_stack",
    "difference_stack",
    "stack_limits",
    "stack_source",
]
