"""The versions of a cell's expression and the checks of the arguments that name them.

A *version* is one of ``"original"`` (the preprocessed input), ``"fe"`` / ``"fec"`` / ``"re"`` (the
networks' reconstructions) or ``"cf:<batch>"`` (the counterfactual into that batch). Images and
tables show them under display names (``"FE reconstruction"``, ``"Counterfactual -> b"``, ...).
The model, lazy genomap stacks, comparisons and the CLI all check their batch, version and
counterfactual-method arguments here, so each mistake gets one message with its fix.

Pure core: imports nothing from the rest of the package except its errors.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

from .errors import DataError, ScMEDALError

__all__ = [
    "BASE_VERSIONS",
    "CF_DEFAULT",
    "CF_METHODS",
    "CF_NEIGHBOURS",
    "FE_MINUS_ORIGINAL",
    "FE_RECON",
    "LATENT_KINDS",
    "ORIGINAL",
    "OWN_BATCH",
    "RE_RECON",
    "batch_position",
    "cf_key",
    "cf_minus_original_name",
    "cf_minus_own_name",
    "check_method",
    "check_target_batches",
    "check_version",
    "counterfactual_name",
    "version_key",
]

#: Version keys that are not counterfactuals.
BASE_VERSIONS = ("original", "fe", "fec", "re")
#: Networks with a latent space and a reconstruction.
LATENT_KINDS = ("fe", "fec", "re")
#: Counterfactual methods (docs/model.md, "Counterfactuals"). "balanced" (default): the cell's RE reconstruction
#: changed by the batch change of its cell type (or FE-latent group); "matched": RE-latent shift between FE-latent
#: neighbours; "reference": METHOD.md's literal one-hot swap (overshoots).
CF_METHODS = ("balanced", "matched", "reference")
#: The default counterfactual method.
CF_DEFAULT = "balanced"
#: Neighbours (in the FE latent) per batch whose RE latents are averaged by the "matched" method.
CF_NEIGHBOURS = 20

ORIGINAL = "Original"
FE_RECON = "FE reconstruction"
RE_RECON = "RE reconstruction"
FE_MINUS_ORIGINAL = "FE - Original"
OWN_BATCH = "own batch"


def cf_key(batch) -> str:
    """Version key of the counterfactual into ``batch`` (``"cf:<batch>"``)."""
    return f"cf:{batch}"


def counterfactual_name(batch) -> str:
    """Display name of the counterfactual image for target batch ``batch``."""
    return f"Counterfactual -> {batch}"


def cf_minus_original_name(batch) -> str:
    """Display name of the difference counterfactual into ``batch`` minus the original."""
    return f"{counterfactual_name(batch)} - {ORIGINAL}"


def cf_minus_own_name(batch) -> str:
    """Display name of the difference counterfactual into ``batch`` minus the counterfactual into the own batch."""
    return f"{counterfactual_name(batch)} - Counterfactual -> {OWN_BATCH}"


def version_key(name: str) -> str:
    """Version key of a display name (``"FE reconstruction"`` -> ``"fe"``, ``"Counterfactual -> b"`` ->
    ``"cf:b"``); a key, or a difference's name, is returned as it is."""
    keys = {ORIGINAL: "original", FE_RECON: "fe", RE_RECON: "re"}
    v = str(name)
    if v in keys:
        return keys[v]
    prefix = counterfactual_name("")
    if v.startswith(prefix) and " - " not in v:
        return cf_key(v[len(prefix):])
    return v


def _shown(batches: Sequence[str]) -> list[str]:
    batches = list(batches)
    return batches if len(batches) <= 20 else batches[:20] + ["..."]


def check_method(method) -> str:
    """Return ``method`` if it is a counterfactual method, else raise with the choices.

    Raises
    ------
    ScMEDALError
        For anything not in :data:`CF_METHODS`.
    """
    if method not in CF_METHODS:
        raise ScMEDALError(f"unknown counterfactual method {method!r}; use 'balanced' (default), 'matched' "
                           f"(shift in the RE latent) or 'reference' (METHOD.md's literal one-hot swap, which "
                           f"overshoots); see docs/model.md, 'Counterfactuals'.")
    return method


def check_target_batches(known: Iterable, requested=None, what: str = "target batch(es)") -> list[str]:
    """The requested target batches as strings, in order, without repeats.

    Parameters
    ----------
    known
        The model's batches.
    requested
        One batch name, a sequence of names, or ``None`` for all of ``known``.
    what
        How the message names the argument (e.g. ``"--counterfactuals batch(es)"``).

    Raises
    ------
    DataError
        When a name is not among ``known`` (the message lists them), or none is requested.
    """
    known = [str(b) for b in known]
    if requested is None:
        return known
    batches = [str(b) for b in ([requested] if isinstance(requested, str) else requested)]
    unknown = [b for b in batches if b not in known]
    if unknown:
        raise DataError(f"Unknown {what} {unknown}; the model knows these batches: {_shown(known)}.")
    if not batches:
        raise DataError(f"Choose at least one {what} from {_shown(known)}.")
    return list(dict.fromkeys(batches))


def batch_position(known: Sequence, target_batch=None, batch_index=None) -> int:
    """Position of one target batch, given by name (``target_batch``) or by position (``batch_index``).

    Names only for ``target_batch``, so a batch called ``"1"`` is never confused with position 1.

    Raises
    ------
    DataError
        When both or neither are given, the name is unknown, or the position is out of range.
    """
    names = [str(b) for b in known]
    shown = _shown(names)
    if (target_batch is None) == (batch_index is None):
        raise DataError("give the target batch either by name (target_batch='...') or by position "
                        f"(batch_index=0..{len(names) - 1}), not both or neither; batches: {shown}.")
    if batch_index is not None:
        if isinstance(batch_index, bool) or not isinstance(batch_index, numbers.Integral) or \
                not 0 <= int(batch_index) < len(names):
            raise DataError(f"batch_index={batch_index!r} is not a position 0..{len(names) - 1} among the "
                            f"model's batches {shown}.")
        return int(batch_index)
    if str(target_batch) in names:
        return names.index(str(target_batch))
    is_int = not isinstance(target_batch, bool) and isinstance(target_batch, numbers.Integral)
    hint = f" For the batch at position {int(target_batch)} pass batch_index={int(target_batch)}." if is_int else ""
    raise DataError(f"unknown target batch {target_batch!r}; target_batch is a batch name and the model knows "
                    f"these batches: {shown}.{hint}")


def check_version(model, version, method: str = CF_DEFAULT) -> str:
    """Validate a version key (and ``method`` for counterfactuals) against ``model``; return it as a str.

    Parameters
    ----------
    model
        Anything with ``batches`` and ``trained_kinds`` (a :class:`~napari_scmedal.ScMEDAL`).
    version
        ``"original"``, ``"fe"``, ``"fec"``, ``"re"`` or ``"cf:<batch>"``.
    method
        The counterfactual method (checked for ``"cf:"`` versions only).

    Raises
    ------
    DataError
        For an unknown batch in ``"cf:<batch>"``.
    ScMEDALError
        For anything else that is not a version, an unknown method, or a network that is not trained.
    """
    if not isinstance(version, str):
        raise ScMEDALError(f"version must be a string such as 'original', 'fe', 're' or 'cf:<batch>', "
                           f"got {version!r}.")
    trained = list(model.trained_kinds)
    batches = [str(b) for b in model.batches]
    if version in BASE_VERSIONS:
        if version != "original" and version not in trained:
            raise ScMEDALError(f"version {version!r} needs the trained {version.upper()} network, but this model "
                               f"has {trained or 'no trained network'}; call model.train() first (or use "
                               f"version='original', which needs no training).")
        return version
    if version.startswith("cf:"):
        batch = version[3:]
        if batch not in batches:
            raise DataError(f"unknown target batch {batch!r} in version {version!r}; the model knows these "
                            f"batches: {_shown(batches)}. Write 'cf:<one of them>'.")
        check_method(method)
        need = ["re"] if method == "reference" else ["fe", "re"]
        missing = [k for k in need if k not in trained]
        if missing:
            raise ScMEDALError(f"counterfactuals ({method!r}) need the trained {' and '.join(k.upper() for k in need)} "
                               f"networks; {', '.join(k.upper() for k in missing)} not trained yet. Call "
                               f"model.train() first.")
        return version
    raise ScMEDALError(f"unknown version {version!r}; use 'original', 'fe', 're' or 'cf:<batch>' with a batch "
                       f"among {batches[:5]}{' ...' if len(batches) > 5 else ''}.")
