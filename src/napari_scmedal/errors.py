"""Exceptions raised by napari-scmedal.

Every error a user can cause carries a message that names the problem *and* the fix.
All derive from :class:`ScMEDALError`; the data and file errors are also ``ValueError``
so generic ``except ValueError`` code keeps working.
"""


class ScMEDALError(Exception):
    """Base class of all napari-scmedal errors."""


class DataError(ScMEDALError, ValueError):
    """The input AnnData cannot be used as given (missing key, NaN, one batch, ...)."""


class RecipeMismatchError(DataError):
    """A new AnnData does not fit a trained model's recipe (missing genes, unknown batches)."""


class ModelFileError(ScMEDALError, ValueError):
    """A model file is missing, corrupt, foreign or from an incompatible version."""


class TrainingError(ScMEDALError, RuntimeError):
    """Training failed (for example a NaN or inf loss); the best weights so far are kept."""


class LayoutError(ScMEDALError, ValueError):
    """A genomap layout cannot be computed or applied (e.g. more genes than pixels)."""


class TrainingHealthWarning(UserWarning):
    """A trained network failed a health check (napari_scmedal.models.health): its reconstructions, its
    validation loss, its best epoch or its heads say it did not train well. The message names the
    problem and the fix; ``model.health`` holds the measurements."""


class ExtrapolationWarning(UserWarning):
    """Counterfactuals of cells whose cell type has (almost) no training cells in the target batch: their
    batch change is borrowed from the other types (``model.counterfactual_extrapolated`` flags them)."""
