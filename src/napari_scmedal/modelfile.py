"""Model files: one safetensors file holding every network's tensors and a JSON metadata block.

Writing is atomic (:func:`napari_scmedal._utils.atomic_output`: a temporary file in the same folder,
fsync'ed and renamed; leftovers of killed saves are removed by the next save to that path). Reading never
unpickles and never trusts the metadata: the header is parsed by ``safetensors.safe_open`` (which checks that
the tensors' shapes, dtypes and offsets cover the file exactly), the metadata is validated field by field
(:func:`napari_scmedal.models.defaults.validate_config`, :meth:`napari_scmedal.data.recipe.Recipe.from_dict`), and the
tensor shapes the configuration implies are compared with the header's shapes *before* any network is built,
so a file that lies about its layer sizes is refused in milliseconds without allocating them.
"""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ._utils import atomic_output
from .errors import ModelFileError

FILE_FORMAT = "napari-scmedal-model"
FILE_VERSION = 1
#: Largest JSON metadata written (safetensors refuses headers over 100 MB); past it the split's names are left out.
MAX_SPLIT_JSON = 60 * 1024 * 1024
_FIX = "Re-save or retrain the model."


# ---------------------------------------------------------------------------------------------- write
def write_model_file(path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically. Raises ModelFileError for a
    folder given as the path, a missing or unwritable folder; other OS errors (a full disk) propagate and
    leave an existing file untouched."""
    from safetensors.torch import save as st_save

    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give a file name such as {path / 'model.safetensors'}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise ModelFileError(f"cannot save to {path}: the folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise ModelFileError(f"cannot save to {path}: {parent} is a file, not a folder; choose another location.")
    text = json.dumps(meta)
    if len(text) > MAX_SPLIT_JSON:  # millions of cells: the split's cell names would overflow the header
        n = sum(len(v) for v in meta.get("splits", {}).values())
        meta = dict(meta, splits={}, splits_omitted=(
            f"{n} cell names did not fit the model file's header; the split is reproducible from the data with "
            f"split_seed={meta['config']['split_seed']}"))
        warnings.warn(f"the train/val/test cell names ({n} cells) are not stored in {path.name}: too many for "
                      f"the file header. The split is reproducible from the same data and split_seed.",
                      RuntimeWarning, stacklevel=3)
        text = json.dumps(meta)
    blob = st_save(tensors, metadata={"format": FILE_FORMAT, "format_version": str(FILE_VERSION), "scmedal": text})
    try:
        with atomic_output(path, suffix=".tmp") as tmp:
            with open(tmp, "wb") as f:
                f.write(blob)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ModelFileError(f"cannot save to {path}: the folder {parent} is not writable ({exc.strerror}); "
                                 f"choose another location or fix its permissions.") from None
        raise
    return path


# ---------------------------------------------------------------------------------------------- read
def read_model_file(path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The napari-scmedal metadata of a model file and the shape of every tensor in it, read from the
    header only (no tensor data). Raises ModelFileError for a missing, empty, truncated, corrupt, foreign or
    newer-version file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no model file at {path}; check the path (models are saved with model.save(path)).")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; pass the .safetensors file written by "
                             f"model.save().")
    size = path.stat().st_size
    if size < 8:
        raise ModelFileError(f"{path} is empty or truncated ({size} bytes); it is not a napari-scmedal model. {_FIX}")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            shapes = {k: tuple(int(d) for d in f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors' own header checks
        msg = str(e)
        if "not fully covered" in msg:
            why = f"is truncated or has trailing garbage ({size} bytes)"
        elif "header too large" in msg or "header too small" in msg:
            why = ("is not a napari-scmedal model file (no valid safetensors header); it may be truncated, corrupt "
                   "or another kind of file")
        else:
            why = f"has a corrupt header ({msg.split(': ', 1)[-1]}); it is not a readable napari-scmedal model"
        raise ModelFileError(f"{path} {why}. {_FIX}") from None
    if md.get("format") != FILE_FORMAT:
        raise ModelFileError(f"{path} is a safetensors file but not a napari-scmedal model (format marker "
                             f"{md.get('format')!r} instead of {FILE_FORMAT!r}); load it with the tool that wrote it.")
    try:
        version = int(md.get("format_version", "0"))
    except ValueError:
        version = -1
    if version > FILE_VERSION:
        raise ModelFileError(f"{path} was written by a newer napari-scmedal (model format {version}; this "
                             f"version reads up to {FILE_VERSION}). Upgrade napari-scmedal to load it.")
    if version < 1:
        raise ModelFileError(f"{path} has an invalid model format version {md.get('format_version')!r}; the file "
                             f"is damaged. {_FIX}")
    try:
        meta = json.loads(md["scmedal"])
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (KeyError, ValueError):
        raise ModelFileError(f"{path}: the napari-scmedal metadata is missing or corrupt. {_FIX}") from None
    return meta, shapes


def check_shapes(path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                 prefixes: tuple[str, ...]) -> None:
    """Compare the tensors whose names start with ``prefixes`` (the networks) with the shapes the stored
    configuration implies; the first problem is named (tensor, file shape, expected shape)."""
    have = {k: v for k, v in found.items() if k.startswith(prefixes)}
    missing = sorted(set(expected) - set(have))
    extra = sorted(set(have) - set(expected))
    if missing or extra:
        parts = ([f"missing tensor(s) {missing[:3]}"] if missing else []) + \
                ([f"unexpected tensor(s) {extra[:3]}"] if extra else [])
        raise ModelFileError(f"{path}: the weights do not fit the stored configuration ({'; '.join(parts)}); "
                             f"the file is damaged. {_FIX}")
    for k in sorted(expected):
        if tuple(expected[k]) != tuple(have[k]):
            raise ModelFileError(f"{path}: the weights do not fit the stored configuration (tensor {k!r} has shape "
                                 f"{list(have[k])} in the file, the configuration needs {list(expected[k])}); the "
                                 f"file is damaged. {_FIX}")


def read_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of the file on the CPU; NaN or inf weights are refused."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:
        raise ModelFileError(f"{path}: the weights cannot be read ({type(e).__name__}: {e}); the file is corrupt. "
                             f"{_FIX}") from None
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelFileError(f"{path}: tensor {k!r} contains NaN or inf values; the file is corrupt or the "
                                 f"model diverged. Retrain the model.")
    return tensors


def anchors_from_tensors(path, tensors: dict, latent: int, n_batches: int, n_genes: int,
                         groups_kind=None) -> dict[str, np.ndarray]:
    """The counterfactual anchors (``cf.fe``, ``cf.re``, ``cf.batch``) and, when present, the "balanced"
    statistics (``cf.group/mean/logmean/count/alpha``) of a file, checked against the configuration."""
    try:
        fe, re_, b = (tensors[f"cf.{k}"].numpy() for k in ("fe", "re", "batch"))
        ok = (fe.ndim == 2 and fe.shape[1] == latent and re_.shape == fe.shape and b.shape == (fe.shape[0],)
              and b.dtype == np.int64 and (b.size == 0 or (b.min() >= 0 and b.max() < n_batches)))
    except KeyError:
        ok = False
    if not ok:
        raise ModelFileError(f"{path}: the counterfactual anchors (cf.fe, cf.re, cf.batch) are incomplete or do "
                             f"not fit the stored configuration; the file is damaged. {_FIX}")
    out = {"fe": fe.astype(np.float32, copy=False), "re": re_.astype(np.float32, copy=False), "batch": b}
    stats = [k for k in ("group", "mean", "logmean", "count", "alpha") if f"cf.{k}" in tensors]
    if stats:  # the "balanced" counterfactual's statistics (files written before it have none)
        try:
            g, m, lm, c, al = (tensors[f"cf.{k}"].numpy() for k in ("group", "mean", "logmean", "count", "alpha"))
            k = c.shape[1] if c.ndim == 2 else -1
            ok = (len(stats) == 5 and groups_kind in ("labels", "clusters") and g.shape == b.shape
                  and al.shape == (1,) and 0.0 <= float(al[0]) <= 1.0
                  and g.dtype == np.int64 and c.shape == (n_batches, k) and m.shape == (n_batches, k, n_genes)
                  and lm.shape == m.shape and (g.size == 0 or (g.min() >= -1 and g.max() < k)))
        except KeyError:
            ok = False
        if not ok:
            raise ModelFileError(f"{path}: the counterfactual statistics (cf.group, cf.mean, cf.logmean, cf.count, "
                                 f"cf.alpha) are incomplete or do not fit the stored configuration; the file is "
                                 f"damaged. {_FIX}")
        out.update({"group": g, "groups": groups_kind, "mean": m.astype(np.float32, copy=False),
                    "logmean": lm.astype(np.float32, copy=False), "count": c, "alpha": al.astype(np.float32)})
        if "cf.remean" in tensors:  # the RE reconstructions' group means (files before the recentred base lack it)
            rm = tensors["cf.remean"].numpy()
            if rm.shape != m.shape or not np.isfinite(rm).all():
                raise ModelFileError(f"{path}: cf.remean does not fit the counterfactual statistics; the file is "
                                     f"damaged. {_FIX}")
            out["remean"] = rm.astype(np.float32, copy=False)
    return out


__all__ = ["FILE_FORMAT", "FILE_VERSION", "MAX_SPLIT_JSON", "write_model_file", "read_model_file", "check_shapes",
           "read_tensors", "anchors_from_tensors"]
