"""Data layer: reading, validation, input-kind detection, normalisation, preprocessing, recipes and splits
(in memory, and out of core through :mod:`.ondisk`).

Pure Python (no Qt, no napari). See docs/data.md.
"""

from .io import read_h5ad, use_layer
from .lazy import PreparedLike
from .normalize import log_normalize, seurat_hvg, size_factors
from .preprocess import TrainingData, prepare_training
from .recipe import Prepared, Recipe
from .splits import stratified_split
from .synthetic import make_synthetic
from .validation import detect_input_kind, validate_adata

__all__ = [
    "read_h5ad",
    "use_layer",
    "detect_input_kind",
    "validate_adata",
    "prepare_training",
    "TrainingData",
    "Recipe",
    "Prepared",
    "stratified_split",
    "make_synthetic",
    "log_normalize",
    "size_factors",
    "seurat_hvg",
    "PreparedLike",
]
