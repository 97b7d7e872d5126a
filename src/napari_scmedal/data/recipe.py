"""The preprocessing recipe: what a trained model expects, re-appliable to new data.

A :class:`Recipe` records the genes (in model order), the normalisation, the global min-max scaling
with *training-split* statistics, and the batch/label categories. ``recipe.transform(adata)`` turns
any AnnData holding those genes (extra genes and any gene order are fine) into a :class:`Prepared`
ready for the model; ``to_dict``/``from_dict`` store it as JSON-safe data inside model files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import json_safe as _json_safe
from ..errors import DataError, ModelFileError, RecipeMismatchError
from .normalize import LibrarySizes, log_normalize, size_factors
from .validation import LOGNORM_MAX, _first, check_unique, get_matrix, resolve_layer

RECIPE_FORMAT = "napari-scmedal-recipe"
RECIPE_VERSION = 1
_CHUNK_ROWS = 8192
_UNSET = object()


@dataclass
class Prepared:
    """Model-ready arrays for a set of cells (rows in the order of ``obs_names``).

    ``X``: float32 (n, G), min-max scaled with the recipe's training statistics (model space; values of
    new data may fall slightly outside [0, 1]). ``X_log``: float32 (n, G), log1p-normalised expression of
    the recipe genes. ``batch``: int64 codes into ``recipe.batches``; ``batch_onehot``: float32 (n, B).
    ``label``: int64 codes into ``recipe.labels`` (-1 = unknown) or None; ``label_onehot``: float32
    (n, K) (all-zero rows for unknown labels) or None. ``obs_names``: pandas Index of cell names.
    """

    X: np.ndarray
    X_log: np.ndarray
    batch: np.ndarray
    batch_onehot: np.ndarray
    label: np.ndarray | None
    label_onehot: np.ndarray | None
    obs_names: pd.Index

    @property
    def n_obs(self) -> int:
        return int(self.X.shape[0])

    def __len__(self) -> int:
        return self.n_obs

    def subset(self, idx) -> "Prepared":
        """Rows ``idx`` (integer indices or boolean mask) as a new Prepared (arrays copied)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Prepared(
            X=self.X[idx], X_log=self.X_log[idx], batch=self.batch[idx], batch_onehot=self.batch_onehot[idx],
            label=None if self.label is None else self.label[idx],
            label_onehot=None if self.label_onehot is None else self.label_onehot[idx],
            obs_names=self.obs_names[idx],
        )


def norm_rows(norm_idx, sel):
    """``norm_idx`` for the rows ``sel`` of the aligned cells (column positions are the same for every row;
    user library sizes are per row)."""
    return norm_idx.rows(sel) if isinstance(norm_idx, LibrarySizes) else norm_idx


def _text_columns(var):
    """``(name, values as a string Index)`` of the ``var`` columns that can hold gene identifiers."""
    for col in ([] if var is None else var.columns):
        vals = var[col]
        if vals.dtype == object or isinstance(vals.dtype, (pd.CategoricalDtype, pd.StringDtype)):
            yield str(col), pd.Index(vals.astype(str))


def one_hot(codes: np.ndarray, n: int) -> np.ndarray:
    """float32 one-hot rows; codes of -1 give all-zero rows."""
    out = np.zeros((len(codes), n), dtype=np.float32)
    ok = codes >= 0
    out[np.flatnonzero(ok), codes[ok]] = 1.0
    return out


@dataclass
class Recipe:
    """How data were prepared for a model (see module docstring and docs/data.md).

    ``genes``: model genes in order; ``batches``/``labels``: sorted category lists (``labels`` None
    without a label key); ``input_kind``: ``"counts"`` (normalised to ``target_sum`` then log1p) or
    ``"lognorm"`` (used as given, ``target_sum`` None); ``layer``: where the data were read (None = X);
    ``scale_min``/``scale_max``: global min and max of the training split's log data;
    ``normalization_genes``: genes whose total is the library size (the genes that passed the gene
    filter at training; None for lognorm input).
    """

    genes: list[str]
    batch_key: str
    label_key: str | None
    batches: list[str]
    labels: list[str] | None
    input_kind: str
    layer: str | None
    target_sum: float | None
    scale_min: float
    scale_max: float
    normalization_genes: list[str] | None = None
    min_genes_per_cell: int = 10
    min_cells_per_gene: int = 3
    extra: dict = field(default_factory=dict)
    #: Inference option, not stored: an ``obs`` column of per-cell library sizes (total counts) used
    #: instead of the normalisation genes' sum, for data that lack some of them (``model.size_factor_key``).
    size_factor_key: str | None = field(default=None, compare=False)

    # ----------------------------------------------------------------- basic properties
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_batches(self) -> int:
        return len(self.batches)

    @property
    def n_labels(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    # ----------------------------------------------------------------- scaling
    def scale(self, X_log):
        """Map log1p-normalised values into model space: ``(X - scale_min) / (scale_max - scale_min)``."""
        X_log = np.asarray(X_log, dtype=np.float32)
        span = np.float32(self.scale_max - self.scale_min)
        return (X_log - np.float32(self.scale_min)) / span

    def unscale(self, X_scaled):
        """Inverse of :meth:`scale`: model space back to log1p-normalised units."""
        X_scaled = np.asarray(X_scaled, dtype=np.float32)
        span = np.float32(self.scale_max - self.scale_min)
        return X_scaled * span + np.float32(self.scale_min)

    # ----------------------------------------------------------------- categories
    def batch_codes(self, values) -> np.ndarray:
        """int64 codes of batch values into ``self.batches``; unknown values raise RecipeMismatchError."""
        vals = pd.Series(np.asarray(values, dtype=object)).astype(str)
        lookup = {b: i for i, b in enumerate(self.batches)}
        codes = vals.map(lookup)
        if codes.isna().any():
            unknown = sorted(vals[codes.isna()].unique())
            n_cells = int(codes.isna().sum())
            raise RecipeMismatchError(
                f"{len(unknown)} batch{'es' if len(unknown) > 1 else ''} in obs[{self.batch_key!r}] "
                f"({n_cells} cells) were not seen in training: {_first(unknown)}. The model knows "
                f"{self.n_batches} batches: {_first(self.batches)}. Keep only known batches "
                f"(adata[adata.obs[{self.batch_key!r}].isin(model.batches)]) or retrain including the new ones."
            )
        return codes.to_numpy(dtype=np.int64)

    def label_codes(self, values, require_labels: bool = False) -> np.ndarray:
        """int64 codes of labels into ``self.labels``; unknown or missing -> -1 (error if require_labels)."""
        if self.labels is None:
            raise RecipeMismatchError("This recipe has no labels (trained without label_key); "
                                      "train with a label_key to use cell-type labels.")
        s = pd.Series(np.asarray(values, dtype=object))
        missing = s.isna()
        lookup = {lab: i for i, lab in enumerate(self.labels)}
        codes = s.astype(str).map(lookup)
        codes[missing] = np.nan
        if require_labels and codes.isna().any():
            unknown = sorted(s[codes.isna() & ~missing].astype(str).unique())
            raise RecipeMismatchError(
                f"{int(codes.isna().sum())} cells have labels in obs[{self.label_key!r}] that the model does not "
                f"know ({len(unknown)} unknown: {_first(unknown)}; {int(missing.sum())} missing). Known labels: "
                f"{_first(self.labels)}. Drop those cells, or call with require_labels=False to mark them -1."
            )
        return codes.fillna(-1).to_numpy(dtype=np.int64)

    # ----------------------------------------------------------------- transform
    def transform(self, adata, require_labels: bool = False, layer=_UNSET) -> Prepared:
        """Prepare a new AnnData exactly as the training data were prepared.

        Genes are aligned by name to ``self.genes`` (extra genes dropped, any order accepted); raw
        counts are normalised to ``target_sum`` over the ``normalization_genes`` present and
        log1p-transformed; the result is scaled with the training statistics. One row per cell of
        ``adata`` (no cell filtering). ``layer`` defaults to the recipe's layer.

        Raises RecipeMismatchError for missing genes, unknown batches, a missing batch key, data of
        the wrong kind (counts vs log-normalised), or (with ``require_labels``) missing/unknown labels.
        """
        layer = self.layer if layer is _UNSET else layer
        adata, layer = resolve_layer(adata, layer)
        idx, norm_idx, batch, label = self.align(adata.obs, adata.var_names, require_labels, var=adata.var)
        try:
            X = get_matrix(adata, layer)
        except DataError as exc:
            raise RecipeMismatchError(f"{exc} (The model was trained on {'layer ' + repr(self.layer) if self.layer else 'X'}; "
                                      "pass layer=... to transform to read another one.)") from exc
        X_log = np.empty((adata.n_obs, self.n_genes), dtype=np.float32)
        where = f"adata.layers[{layer!r}]" if layer else "adata.X"
        n_nonint = 0
        vmax = 0.0
        for start in range(0, adata.n_obs, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, adata.n_obs)
            sub, k, m = self.log_block(X[start:stop], idx, norm_rows(norm_idx, slice(start, stop)), where)
            n_nonint += k
            vmax = max(vmax, m)
            X_log[start:stop] = sub
        self.check_kind(n_nonint, vmax, where)
        return Prepared(
            X=self.scale(X_log), X_log=X_log, batch=batch, batch_onehot=one_hot(batch, self.n_batches),
            label=label, label_onehot=None if label is None else one_hot(label, self.n_labels),
            obs_names=pd.Index(adata.obs_names.copy()),
        )

    def align_adata(self, adata, require_labels: bool = False):
        """:meth:`align` for an AnnData read the way :meth:`transform` reads it (``layer="raw"`` means the
        genes of ``adata.raw``; gene identifiers matched through ``var`` columns)."""
        adata, _ = resolve_layer(adata, self.layer)
        return self.align(adata.obs, adata.var_names, require_labels, var=adata.var)

    def gene_names(self, var_names, var=None) -> pd.Index:
        """The names to match the recipe's genes against: ``var_names``, or -- when they lack some of the
        model's genes -- the one ``var`` column that holds every one of them with unique values (e.g. the
        data are indexed by Ensembl IDs with a symbol column, and the model was trained on symbols)."""
        names = pd.Index(pd.Index(var_names).astype(str))
        if var is None or not names.is_unique or names.get_indexer(self.genes).min(initial=0) >= 0:
            return names  # (duplicate names: align's check names them)
        for _, cand in _text_columns(var):
            if cand.is_unique and cand.get_indexer(self.genes).min(initial=0) >= 0:
                return cand
        return names

    def _best_gene_column(self, var) -> tuple[str, int] | None:
        best = None
        for col, cand in _text_columns(var):
            n = int(pd.Index(self.genes).isin(cand).sum())
            if n and (best is None or n > best[1]):
                best = (col, n)
        return best

    def align(self, obs, var_names, require_labels: bool = False, var=None):
        """Match a data set's cells and genes to the recipe without reading expression values.

        Returns ``(idx, norm_idx, batch, label)``: column positions of the recipe genes in ``var_names``
        (or in the ``var`` column that holds them, :meth:`gene_names`), sorted positions of the
        normalisation genes (None = all columns; per-cell :class:`LibrarySizes` with
        ``size_factor_key``), int64 batch codes and label codes (or None). Raises RecipeMismatchError
        for a missing batch key, missing genes or normalisation genes, unknown batches and (with
        ``require_labels``) missing/unknown labels.
        """
        if self.batch_key not in obs.columns:
            raise RecipeMismatchError(
                f"The model's batch key {self.batch_key!r} is not a column of adata.obs "
                f"(available: {[str(c) for c in obs.columns]}). Add it (values among "
                f"{_first(self.batches)}) so cells can be matched to the model's batches."
            )
        names = self.gene_names(var_names, var)
        if names.equals(pd.Index(pd.Index(var_names).astype(str))):
            check_unique(names, "gene", "var_names")
        idx = names.get_indexer(self.genes)
        if np.any(idx < 0):
            missing = [g for g, i in zip(self.genes, idx) if i < 0]
            best = self._best_gene_column(var)
            hint = (f" The var column {best[0]!r} holds {best[1]} of them: if it has the identifiers the model "
                    f"was trained on, use it (adata.var_names = adata.var[{best[0]!r}].astype(str); "
                    "adata.var_names_make_unique())." if best and best[1] > idx.size // 2 else "")
            raise RecipeMismatchError(
                f"{len(missing)} of the model's {self.n_genes} genes are missing from the data: {_first(missing)}. "
                "Use data with the same gene identifiers as training (e.g. symbols vs Ensembl IDs in var_names; a "
                "var column holding all of them is used automatically); genes absent from a panel cannot be "
                f"filled in.{hint}"
            )
        batch = self.batch_codes(obs[self.batch_key].to_numpy())
        if self.label_key is not None and self.label_key in obs.columns:
            label = self.label_codes(obs[self.label_key].to_numpy(), require_labels=require_labels)
        elif self.label_key is not None and require_labels:
            raise RecipeMismatchError(
                f"require_labels=True but the label key {self.label_key!r} is not a column of adata.obs "
                f"(available: {[str(c) for c in obs.columns]}). Add it or use require_labels=False."
            )
        elif self.label_key is None and require_labels:
            raise RecipeMismatchError("require_labels=True but the model was trained without labels.")
        else:
            label = None

        norm_idx: np.ndarray | LibrarySizes | None = None
        if self.input_kind == "counts" and self.size_factor_key is not None:
            norm_idx = self._library_sizes(obs)
        elif self.input_kind == "counts" and self.normalization_genes is not None:
            ni = names.get_indexer(self.normalization_genes)
            if np.any(ni < 0):
                n_miss = int(np.sum(ni < 0))
                raise RecipeMismatchError(
                    f"{n_miss} of the model's {len(self.normalization_genes)} normalisation genes are missing from "
                    f"the data (e.g. {_first([g for g, i in zip(self.normalization_genes, ni) if i < 0])}): each "
                    "cell's library size would be summed over fewer genes than in training and every value would "
                    "shift. Pass the full gene set (not adata[:, model.genes]), or name an obs column of per-cell "
                    "total counts with size_factor_key= (model.size_factor_key = 'total_counts'; CLI "
                    "--size-factor-key), which is then used instead.")
            sorted_idx = np.sort(ni)
            # every gene counts: no column slicing needed
            norm_idx = None if sorted_idx.size == len(names) else sorted_idx
        return idx, norm_idx, batch, label

    def _library_sizes(self, obs) -> LibrarySizes:
        key = self.size_factor_key
        if key not in obs.columns:
            raise RecipeMismatchError(f"size_factor_key={key!r} is not a column of adata.obs (available: "
                                      f"{[str(c) for c in obs.columns][:10]}). Name the column of per-cell total counts.")
        try:
            vals = pd.to_numeric(obs[key], errors="raise").to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise RecipeMismatchError(f"obs[{key!r}] (size_factor_key) must hold numbers: per-cell total counts."
                                      ) from None
        bad = ~np.isfinite(vals) | (vals <= 0)
        if bad.any():
            raise RecipeMismatchError(f"obs[{key!r}] (size_factor_key) has {int(bad.sum())} cells with a missing, "
                                      "infinite, zero or negative total; give every cell its positive total count.")
        return LibrarySizes(vals)

    def log_block(self, block, idx, norm_idx, where: str = "adata.X"):
        """log1p-normalised recipe genes of one block of rows (all genes of the source, any format).

        ``idx``: column positions of the recipe genes in ``block``; ``norm_idx``: sorted column
        positions of the normalisation genes (None = every column) or the rows' :class:`LibrarySizes`.
        Returns ``(X_log float32 (n, G), number of non-integer values, maximum value)`` and raises DataError
        for NaN/inf or negative values. The per-cell arithmetic of every path that produces model inputs (the in-memory preprocessing,
        :meth:`transform` and the out-of-core reader), normalising with
        :func:`~napari_scmedal.data.normalize.log_normalize`, so they agree bit for bit.
        """
        sub = block[:, idx]
        sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
        sub = sub.astype(np.float32, copy=False)
        if not np.all(np.isfinite(sub)):
            raise DataError(f"{where} contains NaN or infinite values in the model's genes. "
                            "Remove or impute them before applying the model.")
        if np.any(sub < 0):
            raise DataError(f"{where} contains negative values in the model's genes; expected "
                            f"{'raw counts' if self.input_kind == 'counts' else 'log1p-normalised data'}. "
                            "Pass unscaled data (e.g. layer='counts').")
        n_nonint = int(np.count_nonzero(sub != np.round(sub)))
        vmax = float(sub.max(initial=0.0))
        if self.input_kind == "counts":
            assert self.target_sum is not None  # a counts recipe always has one (make_recipe, from_dict's checks)
            sub = log_normalize(sub, size_factors(block, norm_idx, self.target_sum, where))
        return sub, n_nonint, vmax

    def check_kind(self, n_nonint: int, vmax: float, where: str = "adata.X") -> None:
        """Raise RecipeMismatchError when data look like the other input kind than the recipe's."""
        if self.input_kind == "counts" and n_nonint:
            raise RecipeMismatchError(
                f"The model was trained on raw counts but {where} has {n_nonint} non-integer values in its genes "
                "(already normalised?). Pass the raw counts (e.g. layer='counts')."
            )
        if self.input_kind == "lognorm" and n_nonint == 0 and vmax > 1:
            raise RecipeMismatchError(
                f"The model was trained on log-normalised data but {where} holds only integers up to {vmax:g} "
                "(raw counts?). Normalise first: scanpy.pp.normalize_total(adata, target_sum=1e4); "
                "scanpy.pp.log1p(adata)."
            )
        if self.input_kind == "lognorm" and vmax > LOGNORM_MAX:
            raise RecipeMismatchError(
                f"The model was trained on log-normalised data but {where} has values up to {vmax:.4g}, "
                "too large for log1p data. Pass log1p-normalised data."
            )

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-safe dict (str, int, float, None, lists, dicts only)."""
        return {
            "format": RECIPE_FORMAT,
            "version": RECIPE_VERSION,
            "genes": [str(g) for g in self.genes],
            "batch_key": str(self.batch_key),
            "label_key": None if self.label_key is None else str(self.label_key),
            "batches": [str(b) for b in self.batches],
            "labels": None if self.labels is None else [str(x) for x in self.labels],
            "input_kind": str(self.input_kind),
            "layer": None if self.layer is None else str(self.layer),
            "target_sum": None if self.target_sum is None else float(self.target_sum),
            "scale_min": float(self.scale_min),
            "scale_max": float(self.scale_max),
            "normalization_genes": None if self.normalization_genes is None
            else [str(g) for g in self.normalization_genes],
            "min_genes_per_cell": int(self.min_genes_per_cell),
            "min_cells_per_gene": int(self.min_cells_per_gene),
            "extra": _json_safe(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Rebuild a Recipe from :meth:`to_dict` output; raises ModelFileError if it is not one."""
        if not isinstance(d, dict) or d.get("format") != RECIPE_FORMAT:
            raise ModelFileError("The stored preprocessing recipe is missing or not a napari-scmedal recipe. "
                                 "The model file may be corrupt or from another tool; retrain or re-save it.")
        if int(d.get("version", 0)) > RECIPE_VERSION:
            raise ModelFileError(f"The recipe has version {d.get('version')}, newer than this napari-scmedal "
                                 f"understands ({RECIPE_VERSION}). Upgrade napari-scmedal.")
        required = ["genes", "batch_key", "label_key", "batches", "labels", "input_kind", "layer",
                    "target_sum", "scale_min", "scale_max"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelFileError(f"The stored recipe lacks {missing}. The model file is corrupt; retrain or re-save it.")
        _validate_recipe_dict(d)
        return cls(
            genes=list(d["genes"]), batch_key=d["batch_key"], label_key=d["label_key"],
            batches=list(d["batches"]), labels=None if d["labels"] is None else list(d["labels"]),
            input_kind=d["input_kind"], layer=d["layer"],
            target_sum=None if d["target_sum"] is None else float(d["target_sum"]),
            scale_min=float(d["scale_min"]), scale_max=float(d["scale_max"]),
            normalization_genes=None if d.get("normalization_genes") is None else list(d["normalization_genes"]),
            min_genes_per_cell=int(d.get("min_genes_per_cell", 10)),
            min_cells_per_gene=int(d.get("min_cells_per_gene", 3)),
            extra=dict(d.get("extra") or {}),
        )


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _str_list(v, min_len: int = 0) -> bool:
    return isinstance(v, list) and len(v) >= min_len and all(isinstance(x, str) for x in v) and len(set(v)) == len(v)


def _validate_recipe_dict(d: dict) -> None:
    """Type and range of every stored recipe field; ModelFileError naming the first bad one (a recipe whose
    values would give NaN latents or silently wrong inputs, e.g. ``scale_min == scale_max``, is refused)."""
    kind = d["input_kind"]
    checks = [
        ("genes", _str_list(d["genes"], 1), "a non-empty list of distinct gene names"),
        ("batch_key", isinstance(d["batch_key"], str) and d["batch_key"] != "", "a column name"),
        ("label_key", d["label_key"] is None or isinstance(d["label_key"], str), "None or a column name"),
        ("batches", _str_list(d["batches"], 2), "a list of at least two distinct batch names"),
        ("labels", d["labels"] is None or _str_list(d["labels"], 1), "None or a list of distinct labels"),
        ("input_kind", kind in ("counts", "lognorm"), "'counts' or 'lognorm'"),
        ("layer", d["layer"] is None or isinstance(d["layer"], str), "None or a layer name"),
        ("target_sum", (_is_num(d["target_sum"]) and d["target_sum"] > 0) if kind == "counts"
         else d["target_sum"] is None, "a positive number for counts, None for log-normalised input"),
        ("scale_min", _is_num(d["scale_min"]), "a finite number"),
        ("scale_max", _is_num(d["scale_max"]) and _is_num(d["scale_min"]) and d["scale_max"] > d["scale_min"],
         "a finite number larger than scale_min"),
        ("normalization_genes", d.get("normalization_genes") is None or _str_list(d["normalization_genes"], 1),
         "None or a non-empty list of gene names"),
        ("min_genes_per_cell", isinstance(d.get("min_genes_per_cell", 0), int)
         and not isinstance(d.get("min_genes_per_cell", 0), bool) and d.get("min_genes_per_cell", 0) >= 0,
         "a whole number >= 0"),
        ("min_cells_per_gene", isinstance(d.get("min_cells_per_gene", 0), int)
         and not isinstance(d.get("min_cells_per_gene", 0), bool) and d.get("min_cells_per_gene", 0) >= 0,
         "a whole number >= 0"),
        ("extra", d.get("extra") is None or isinstance(d["extra"], dict), "a mapping"),
    ]
    for name, ok, valid in checks:
        if not ok:
            value = repr(d.get(name))
            value = value if len(value) <= 60 else value[:57] + "..."
            raise ModelFileError(f"The stored recipe's {name} ({value}) is invalid: it must be {valid}. The model "
                                 f"file is damaged or was edited; retrain or re-save it.")


__all__ = ["Recipe", "Prepared", "one_hot", "norm_rows", "RECIPE_FORMAT", "RECIPE_VERSION"]
