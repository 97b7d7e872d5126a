"""Data layer: reading, validation, input-kind detection, preprocessing, recipes and splits.

Pure Python (no Qt, no napari). See docs/data.md.
"""

from .io import read_h5ad, use_layer
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
]
