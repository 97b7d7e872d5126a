"""Validation of an AnnData before training, and the raw-counts / log-normalised detection rule.

The input-kind rule (``detect_input_kind``), documented in docs/data.md:

* every stored value is a non-negative integer (exactly, as stored)  ->  ``"counts"``
  (raw counts: they will be normalised to 10,000 per cell and log1p-transformed);
* otherwise                                                           ->  ``"lognorm"``
  (already log-normalised: used as given, never normalised twice).

It is overridable everywhere with ``input_kind="counts"`` or ``"lognorm"``. In ``"auto"`` mode,
:func:`validate_adata` additionally refuses non-integer data whose maximum exceeds
``LOGNORM_MAX`` (50): log1p of anything normalised to 10^4 .. 10^6 per cell stays below ~14, so such
data is normalised-but-not-logged or otherwise transformed, and would be misread either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError

INPUT_KINDS = ("auto", "counts", "lognorm")
LOGNORM_MAX = 50.0
_CHUNK_ROWS = 4096
_MAX_LISTED = 5


def _first(names, n: int = _MAX_LISTED) -> str:
    names = [str(x) for x in names]
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def resolve_layer(adata, layer: str | None = None):
    """``(adata, layer)`` to read from: ``layer="raw"`` (when no layer has that name) means the counts in
    ``adata.raw``, returned as an AnnData whose ``X`` is ``adata.raw.X`` (not copied), with ``adata.obs`` and
    the genes of ``adata.raw.var``; other layers pass through."""
    if layer != "raw" or "raw" in adata.layers:
        return adata, layer
    raw = getattr(adata, "raw", None)
    if raw is None:
        available = sorted(adata.layers.keys())
        raise DataError(f"layer='raw' but the AnnData has no .raw (and no layer named 'raw'). Available layers: "
                        f"{available or 'none'}. Pass one of these, or layer=None to use X.")
    import anndata as ad

    return ad.AnnData(X=raw.X, obs=adata.obs, var=raw.var), None


def get_matrix(adata, layer: str | None = None):
    """The expression matrix to use: ``adata.layers[layer]`` or ``adata.X`` (never copied). ``adata.raw``
    has its own genes: callers pass ``layer="raw"`` through :func:`resolve_layer` first."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        available = sorted(adata.layers.keys())
        raw = ", or 'raw' for adata.raw" if getattr(adata, "raw", None) is not None else ""
        raise DataError(
            f"Layer {layer!r} not found in the AnnData. Available layers: {available or 'none'}{raw}. "
            "Pass one of these as layer=..., or layer=None to use X."
        )
    return adata.layers[layer]


def iter_values(X, chunk_rows: int = _CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Yield the stored values of ``X`` as 1-D arrays, a block of rows at a time.

    Sparse matrices yield their stored (non-zero-structure) entries; dense arrays (and row-sliceable
    backed datasets) yield row blocks, so memory stays bounded by one block.
    """
    if sp.issparse(X):
        if X.format != "csr":
            X = X.tocsr()
        indptr = X.indptr
        for start in range(0, X.shape[0], chunk_rows):
            stop = min(start + chunk_rows, X.shape[0])
            yield np.asarray(X.data[indptr[start]:indptr[stop]])
        return
    n = X.shape[0]
    for start in range(0, n, chunk_rows):
        block = X[start:min(start + chunk_rows, n)]
        if sp.issparse(block):
            yield np.asarray(block.data)
        else:
            yield np.asarray(block).ravel()


def _summary(X) -> dict:
    """One pass over the values: non-finite, negative, non-integer counts and the finite maximum."""
    n_nan = n_inf = n_neg = n_nonint = 0
    vmax = -np.inf
    vmin = np.inf
    is_int_dtype = np.issubdtype(np.dtype(X.dtype), np.integer) or np.dtype(X.dtype) == bool
    for v in iter_values(X):
        if v.size == 0:
            continue
        if is_int_dtype:
            vmin = min(vmin, float(v.min()))
            vmax = max(vmax, float(v.max()))
            n_neg += int(np.count_nonzero(v < 0))
            continue
        nan = np.isnan(v)
        inf = np.isinf(v)
        n_nan += int(nan.sum())
        n_inf += int(inf.sum())
        fin = v[~(nan | inf)] if (n_nan or n_inf) else v
        if fin.size:
            vmin = min(vmin, float(fin.min()))
            vmax = max(vmax, float(fin.max()))
            n_neg += int(np.count_nonzero(fin < 0))
            n_nonint += int(np.count_nonzero(fin != np.round(fin)))
    return {"nan": n_nan, "inf": n_inf, "negative": n_neg, "non_integer": n_nonint,
            "min": 0.0 if vmin == np.inf else vmin, "max": 0.0 if vmax == -np.inf else vmax}


def detect_input_kind(X) -> str:
    """Return ``"counts"`` if every stored value of ``X`` is a non-negative integer, else ``"lognorm"``.

    See the module docstring and docs/data.md. An all-zero matrix counts as ``"counts"``.
    """
    s = _summary(X)
    if s["nan"] or s["inf"] or s["negative"] or s["non_integer"]:
        return "lognorm"
    return "counts"


def check_unique(names, what: str, attr: str) -> None:
    """Raise DataError naming the repeated ``what`` names (cell or gene) of ``adata.<attr>`` and the fix."""
    names = pd.Index(names)
    if not names.is_unique:
        dup = names[names.duplicated()].unique()
        raise DataError(f"{len(dup)} {what} names occur more than once in adata.{attr}: {_first(dup)}. "
                        f"Make them unique first with adata.{attr}_make_unique().")


def _check_key(adata, key: str, what: str) -> pd.Series:
    if key is None or key not in adata.obs.columns:
        cols = [str(c) for c in adata.obs.columns]
        raise DataError(
            f"The {what} key {key!r} is not a column of adata.obs. Available obs columns: "
            f"{cols if cols else 'none (adata.obs is empty)'}. "
            f"Pass one of them as {what}_key=..., or add the column to adata.obs."
        )
    col = adata.obs[key]
    missing = int(col.isna().sum())
    if missing:
        raise DataError(
            f"{missing} of {adata.n_obs} cells have no value in adata.obs[{key!r}] (NaN). "
            f"Fill them in or drop those cells, e.g. adata = adata[adata.obs[{key!r}].notna()].copy()."
        )
    return col


def check_batches(batch: pd.Series, batch_key: str, min_cells_per_batch: int, stage: str = "") -> None:
    """Raise DataError if there are fewer than 2 batches or a batch has too few cells."""
    counts = batch.astype(str).value_counts()
    if len(counts) < 2:
        only = list(counts.index)
        raise DataError(
            f"Found {len(counts)} batch{'es' if len(counts) != 1 else ''} {only} in adata.obs[{batch_key!r}]"
            f"{stage}; scMEDAL needs at least 2 batches to model a batch effect. "
            "Pass the obs column that holds the batch (sample, donor, run, protocol) as batch_key."
        )
    small = counts[counts < min_cells_per_batch].sort_values()
    if len(small):
        listed = ", ".join(f"{k!r} ({v} cells)" for k, v in list(small.items())[:_MAX_LISTED])
        more = f" and {len(small) - _MAX_LISTED} more" if len(small) > _MAX_LISTED else ""
        raise DataError(
            f"{len(small)} batch{'es have' if len(small) > 1 else ' has'} fewer than {min_cells_per_batch} cells"
            f"{stage}, too few to split into train/validation/test: {listed}{more}. "
            "Remove or merge these batches before training, e.g. "
            f"adata = adata[~adata.obs[{batch_key!r}].isin([...])].copy()."
        )


def validate_adata(
    adata,
    batch_key: str,
    label_key: str | None = None,
    layer: str | None = None,
    input_kind: str = "auto",
    n_genes: int | None = None,
    min_cells_per_batch: int = 5,
) -> str:
    """Check that ``adata`` can be used for training; return the input kind ``"counts"|"lognorm"``.

    Raises :class:`~napari_scmedal.errors.DataError` (message names the problem and the fix) for:
    empty data, a missing batch or label key, missing batch/label values, fewer than 2 batches, a
    batch with fewer than ``min_cells_per_batch`` cells, duplicate gene or cell names, a missing layer,
    NaN or inf values, negative values, non-integer values with ``input_kind="counts"``, non-integer
    values too large to be log-normalised (auto mode), and fewer genes than ``n_genes``.
    """
    adata, layer = resolve_layer(adata, layer)  # "raw": adata.raw with its own genes
    validate_metadata(adata, batch_key, label_key=label_key, input_kind=input_kind, n_genes=n_genes,
                      min_cells_per_batch=min_cells_per_batch)
    X = get_matrix(adata, layer)
    if X is None:
        raise DataError("adata.X is None. Put the expression matrix in X or pass layer=... naming the layer holding it.")
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    return check_value_summary(_summary(X), where, input_kind)


def validate_metadata(adata, batch_key: str, label_key: str | None = None, input_kind: str = "auto",
                      n_genes: int | None = None, min_cells_per_batch: int = 5) -> None:
    """The checks of :func:`validate_adata` that need only ``obs``/``var`` (no expression values):
    used as is by the out-of-core reader, which checks the values while it streams them."""
    if input_kind not in INPUT_KINDS:
        raise DataError(f"input_kind={input_kind!r} is not one of {list(INPUT_KINDS)}. Use 'auto' unless "
                        "you know the data is raw counts ('counts') or log1p-normalised ('lognorm').")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(
            f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes). "
            "Check the file and any subsetting done before; training needs cells and genes."
        )
    check_unique(adata.obs_names, "cell", "obs_names")
    batch = _check_key(adata, batch_key, "batch")
    if label_key is not None:
        _check_key(adata, label_key, "label")
    check_batches(batch, batch_key, min_cells_per_batch)

    check_unique(adata.var_names, "gene", "var_names")
    if n_genes is not None and n_genes > adata.n_vars:
        raise DataError(
            f"Requested n_genes={n_genes} highly variable genes but the data has only {adata.n_vars} genes. "
            f"Pass n_genes={adata.n_vars} or fewer (the genomap then uses a smaller grid)."
        )


def merge_summaries(a: dict, b: dict) -> dict:
    """Combine two value summaries (see :func:`_summary`) of disjoint parts of one matrix."""
    out = {k: a[k] + b[k] for k in ("nan", "inf", "negative", "non_integer")}
    out["min"] = min(a["min"], b["min"])
    out["max"] = max(a["max"], b["max"])
    return out


def check_value_summary(s: dict, where: str, input_kind: str = "auto") -> str:
    """Raise DataError for non-finite/negative/wrong-kind values summarised in ``s``; return the input kind.

    ``s`` is a value summary (``_summary`` of the whole matrix, or the :func:`merge_summaries` of its
    row blocks, as the out-of-core reader does); ``where`` names the matrix in messages.
    """
    if s["nan"] or s["inf"]:
        raise DataError(
            f"{where} contains {s['nan']} NaN and {s['inf']} infinite values. "
            "Remove or impute them (e.g. replace with 0) before training; scMEDAL needs finite expression values."
        )
    if s["negative"]:
        raise DataError(
            f"{where} contains {s['negative']} negative values (minimum {s['min']:.4g}). Expected raw counts or "
            "log1p-normalised data, which are never negative; the data looks scaled or centred. "
            "Pass the raw counts (e.g. layer='counts' or adata.raw.to_adata())."
        )
    if input_kind == "counts":
        if s["non_integer"]:
            raise DataError(
                f"input_kind='counts' but {where} contains {s['non_integer']} non-integer values "
                f"(maximum {s['max']:.4g}); raw counts must be integers. Pass the raw count matrix "
                "(e.g. layer='counts'), or input_kind='lognorm' if the data is already log1p-normalised."
            )
        return "counts"
    if input_kind == "lognorm":
        return "lognorm"
    if s["non_integer"] == 0:
        return "counts"
    if s["max"] > LOGNORM_MAX:
        raise DataError(
            f"{where} has non-integer values up to {s['max']:.4g}: neither raw counts (integers) nor "
            f"log-normalised data (log1p values stay below {LOGNORM_MAX:g}). It may be normalised but not "
            "log-transformed. Pass raw counts (e.g. layer='counts'), apply scanpy.pp.log1p first, or force "
            "input_kind='lognorm' if you are sure."
        )
    return "lognorm"


__all__ = ["detect_input_kind", "validate_adata", "resolve_layer", "validate_metadata", "check_value_summary", "merge_summaries",
           "get_matrix", "iter_values", "check_batches", "check_unique",
           "INPUT_KINDS", "LOGNORM_MAX"]
