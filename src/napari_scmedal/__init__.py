"""napari-scmedal: scMEDAL batch-effect models, counterfactuals and genomaps."""
__version__ = "0.1.0"

__all__ = ["ScMEDAL", "TrainingHealthWarning", "__version__"]


def __getattr__(name):
    # lazy: importing the package stays cheap (no torch) and Qt-free
    if name == "ScMEDAL":
        from .model import ScMEDAL

        return ScMEDAL
    if name == "TrainingHealthWarning":
        from .errors import TrainingHealthWarning

        return TrainingHealthWarning
    raise AttributeError(f"module 'napari_scmedal' has no attribute {name!r}")
