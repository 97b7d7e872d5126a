"""Data layer: reading, validation, input-kind detection, preprocessing, recipes and splits.

Pure Python (no Qt, no napari). See docs/data.md.
"""

from .io import read_h5ad
from .synthetic import make_synthetic

__all__ = ["read_h5ad", "make_synthetic"]
