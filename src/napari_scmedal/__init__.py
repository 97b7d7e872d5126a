"""napari-scmedal: scMEDAL batch-effect models, counterfactuals and genomaps."""
__version__ = "0.1.0"
