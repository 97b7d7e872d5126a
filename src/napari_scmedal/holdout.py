"""Counterfactual accuracy against held-out truth (also ``napari_scmedal.metrics.counterfactual_holdout``).

For a pair (cell type ``L``, target batch ``T``) the cells of ``L`` in ``T`` are removed and a model is
trained on everything else. The cells of ``L`` in every *other* batch (the source cells, pooled) are
then sent into ``T`` with each counterfactual method, and the mean prediction is compared with the
truth: the mean observed log1p-normalised expression of the held-out cells (which the model never
saw), or, for synthetic data, the exact expected expression of the source cells themselves measured
in ``T`` (``truth=`` callable, e.g. :func:`synthetic_truth`). The model is a black box: only
``model.get_counterfactual_expression(T, adata=..., method=...)`` and ``model.recipe.transform``.

Baselines, scored on the same genes in the same units (log1p-normalised, the model's genes):

* ``identity``: the source cells unchanged;
* ``mean_shift``: each source cell + mean(training cells of ``T``) - mean(training cells of its batch);
* ``balanced_shift``: the same difference averaged over the labels present (>= ``BALANCED_MIN_CELLS``
  training cells) in both batches -- the other cell types' mean shift (falls back to ``mean_shift``
  when the batches share no such label);
* any callable ``fn(ctx) -> (n_source, n_genes)`` (or ``(name, fn)``): ``ctx`` holds ``X_source``,
  ``batch_source``, ``X_train``, ``batch_train``, ``label_train`` (log1p, model genes; string arrays),
  ``target_batch``, ``genes``, ``seed``, ``adata_train`` and ``adata_source``.

Scores per pair and method (:func:`score_counterfactual`): ``r2_all`` (R^2 of the predicted against
the true per-gene means over all model genes), ``r2_top100`` (the same over the 100 genes whose true
mean differs most from the source mean), ``shift_corr`` (Pearson correlation of predicted - source
mean with true - source mean; NaN for ``identity``) and ``cell_rmse`` (per-cell truth only: RMSE of
each source cell's prediction against its own expected expression, mean over cells).
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import pandas as pd

from ._utils import is_cancelled
from .errors import DataError
from .models.health import r_squared

__all__ = ["counterfactual_holdout", "score_counterfactual", "shift_prediction", "synthetic_truth",
           "default_pairs", "COLUMNS", "BASELINES", "BALANCED_MIN_CELLS"]

#: The documented columns, in order (further columns: kind, train_s, health_ok, n_genes).
COLUMNS = ["label", "target_batch", "method", "r2_all", "r2_top100", "shift_corr", "cell_rmse",
           "n_source", "n_target", "seed"]
#: Built-in baselines.
BASELINES = ("identity", "mean_shift", "balanced_shift")
#: Training cells a label needs in both batches to count in ``balanced_shift``.
BALANCED_MIN_CELLS = 5
_RESERVED = {"self", "adata", "batch_key", "label_key", "seed", "progress", "cancel"}


# ---------------------------------------------------------------------------------------- scores


def _corr(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def score_counterfactual(pred_cells, truth_mean, source_mean, truth_cells=None, top: int = 100) -> dict:
    """Scores of one prediction: ``pred_cells`` (n_source, G) against ``truth_mean`` (G,), with the source
    cells' observed mean ``source_mean`` (G,) as the reference of shifts and of the top genes;
    ``truth_cells`` (n_source, G) adds ``cell_rmse``. Returns r2_all, r2_top100, shift_corr, cell_rmse."""
    pred_cells = np.asarray(pred_cells, dtype=np.float64)
    truth_mean = np.asarray(truth_mean, dtype=np.float64)
    source_mean = np.asarray(source_mean, dtype=np.float64)
    pred = pred_cells.mean(axis=0)
    true_shift = truth_mean - source_mean
    topg = np.argsort(-np.abs(true_shift), kind="stable")[:min(int(top), len(truth_mean))]
    out = {"r2_all": r_squared(pred, truth_mean), "r2_top100": r_squared(pred[topg], truth_mean[topg]),
           "shift_corr": _corr(pred - source_mean, true_shift), "cell_rmse": float("nan")}
    if truth_cells is not None:
        d = pred_cells - np.asarray(truth_cells, dtype=np.float64)
        out["cell_rmse"] = float(np.sqrt((d * d).mean(axis=1)).mean())
    return out


# ------------------------------------------------------------------------------------- baselines
def shift_prediction(X_source, batch_source, X_train, batch_train, target_batch, label_train=None,
                     balanced: bool = False, min_cells: int = BALANCED_MIN_CELLS) -> np.ndarray:
    """``X_source`` + per-source-batch shift toward ``target_batch`` (the ``mean_shift`` and, with
    ``balanced=True`` and ``label_train``, the ``balanced_shift`` baselines). Arrays of the training
    cells: ``X_train`` (n, G), ``batch_train``/``label_train`` (n,) strings."""
    X_source = np.asarray(X_source, dtype=np.float64)
    batch_source = np.asarray(batch_source).astype(str)
    batch_train = np.asarray(batch_train).astype(str)
    labels = None if label_train is None else np.asarray(label_train).astype(str)
    t = str(target_batch)
    out = X_source.copy()
    in_t = batch_train == t
    for s in np.unique(batch_source):
        rows, in_s = batch_source == s, batch_train == s
        if s == t:
            continue
        shift = None
        if balanced and labels is not None:
            diffs = [X_train[in_t & (labels == lab)].mean(0) - X_train[in_s & (labels == lab)].mean(0)
                     for lab in np.unique(labels[in_t | in_s])
                     if (in_t & (labels == lab)).sum() >= min_cells and (in_s & (labels == lab)).sum() >= min_cells]
            shift = np.mean(diffs, axis=0) if diffs else None
        if shift is None:
            if not in_t.any() or not in_s.any():
                raise DataError(f"no training cells of batch {t!r} or {s!r} to compute a mean shift; keep cells of "
                                "both batches in training.")
            shift = X_train[in_t].mean(0) - X_train[in_s].mean(0)
        out[rows] += shift
    return out


def _baseline(name, ctx) -> np.ndarray:
    if callable(name):
        return np.asarray(name(ctx), dtype=np.float64)
    if name == "identity":
        return np.asarray(ctx["X_source"], dtype=np.float64)
    if name in ("mean_shift", "balanced_shift"):
        return shift_prediction(ctx["X_source"], ctx["batch_source"], ctx["X_train"], ctx["batch_train"],
                                ctx["target_batch"], ctx["label_train"], balanced=name == "balanced_shift")
    raise DataError(f"unknown baseline {name!r}; use {list(BASELINES)} or a callable fn(ctx) -> (n_source, n_genes).")


def _baseline_items(baselines):
    items = []
    for b in baselines or ():
        if isinstance(b, tuple) and len(b) == 2 and callable(b[1]):
            items.append((str(b[0]), b[1]))
        elif callable(b):
            items.append((getattr(b, "__name__", "baseline"), b))
        elif b in BASELINES:
            items.append((b, b))
        else:
            _baseline(b, {})  # raises the helpful error
    return items


def synthetic_truth(n_draws: int = 32, seed: int = 0):
    """A ``truth=`` callable for :func:`make_synthetic` data: ``truth(adata_source, target_batch)`` ->
    DataFrame (cells x all genes) of :func:`~napari_scmedal.data.synthetic_truth.synthetic_expected_log`."""
    from .data.synthetic_truth import synthetic_expected_log

    def truth(adata_source, target_batch):
        return pd.DataFrame(synthetic_expected_log(adata_source, target_batch, n_draws=n_draws, seed=seed),
                            index=adata_source.obs_names, columns=adata_source.var_names.astype(str))

    return truth


def _truth_cells(truth, adata_source, target_batch, genes) -> np.ndarray:
    out = truth(adata_source, target_batch)
    if isinstance(out, pd.DataFrame):
        missing = [g for g in genes if g not in out.columns]
        if missing:
            raise DataError(f"the truth callable's table lacks {len(missing)} model genes (e.g. {missing[:3]}); "
                            "return all genes of the AnnData it is given.")
        out = out[genes].to_numpy()
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != adata_source.n_obs:
        raise DataError(f"the truth callable returned shape {out.shape}; expected one row per source cell "
                        f"({adata_source.n_obs}).")
    if out.shape[1] == adata_source.n_vars:  # all genes in var order
        return out[:, pd.Index(adata_source.var_names.astype(str)).get_indexer(genes)]
    if out.shape[1] == len(genes):
        return out
    raise DataError(f"the truth callable returned {out.shape[1]} columns; expected {adata_source.n_vars} "
                    f"(all genes, var order) or {len(genes)} (model genes, model order) or a DataFrame with gene columns.")


# ----------------------------------------------------------------------------------------- pairs
def _check_keys(adata, batch_key, label_key):
    if not hasattr(adata, "obs") or getattr(adata, "isbacked", False):
        raise DataError("counterfactual_holdout needs an in-memory AnnData (it trains one model per held-out pair "
                        "on a subset); read the file with napari_scmedal.data.read_h5ad(path).")
    cols = [str(c) for c in adata.obs.columns]
    for what, key, arg in (("batch", batch_key, "batch_key"), ("cell-type label", label_key, "label_key")):
        if key is None or key not in adata.obs.columns:
            raise DataError(f"{arg}={key!r} is not a column of adata.obs (available: {cols}). Pass the obs column "
                            f"holding the {what} of each cell as {arg}=...")


def default_pairs(obs, batch_key, label_key, min_cells: int = 30) -> list[tuple[str, str]]:
    """Every (label, batch) with >= ``min_cells`` cells whose label also has >= ``min_cells`` cells in the
    other batches and whose batch keeps >= ``min_cells`` cells of other labels (so it stays in training)."""
    tab = pd.crosstab(obs[label_key].astype(str), obs[batch_key].astype(str))
    pairs = []
    for lab in tab.index:
        for b in tab.columns:
            n = int(tab.at[lab, b])
            if n >= min_cells and int(tab.loc[lab].sum()) - n >= min_cells \
                    and int(tab[b].sum()) - n >= min_cells:
                pairs.append((str(lab), str(b)))
    return pairs


def _check_pairs(pairs, obs, batch_key, label_key):
    lab, bat = obs[label_key].astype(str).to_numpy(), obs[batch_key].astype(str).to_numpy()
    out = []
    for p in pairs:
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise DataError(f"each pair must be (label, target_batch); got {p!r}.")
        L, T = str(p[0]), str(p[1])
        if L not in set(lab):
            raise DataError(f"label {L!r} is not in obs[{label_key!r}] (known: {sorted(set(lab))[:10]}).")
        if T not in set(bat):
            raise DataError(f"batch {T!r} is not in obs[{batch_key!r}] (known: {sorted(set(bat))[:10]}).")
        held = (lab == L) & (bat == T)
        if not held.any() or not ((lab == L) & ~held).any() or not ((bat == T) & ~held).any():
            raise DataError(f"pair ({L!r}, {T!r}) needs cells of {L!r} in {T!r} ({int(held.sum())}), cells of {L!r} in "
                            f"other batches and other cells in {T!r} (kept for training); choose another pair.")
        out.append((L, T))
    return out


def _split_settings(settings: dict) -> tuple[dict, dict]:
    from .model import ScMEDAL

    bad = sorted(set(settings) & _RESERVED)
    if bad:
        raise DataError(f"{bad} are set by counterfactual_holdout itself; pass them as its own arguments.")
    train_params = set(inspect.signature(ScMEDAL.train).parameters) - _RESERVED
    ctor = {k: v for k, v in settings.items() if k not in train_params}
    return ctor, {k: v for k, v in settings.items() if k in train_params}


def _health_ok(model):
    flags = [h.get("ok") for h in (model.health or {}).values() if isinstance(h, dict)]
    if any(f is False for f in flags):
        return False
    return True if flags and all(f is True for f in flags) else None


# ------------------------------------------------------------------------------------------ main
def counterfactual_holdout(adata, batch_key, label_key, pairs=None, min_cells: int = 30, methods=("balanced",),
                           baselines=BASELINES, seed: int = 0, progress=None, cancel=None, truth=None,
                           **train_settings) -> pd.DataFrame:
    """Score counterfactual methods and baselines on held-out (label, target batch) pairs.

    ``adata``: in-memory AnnData (raw counts or log-normalised, as ``ScMEDAL`` accepts). ``pairs``: list of
    ``(label, target_batch)``; default :func:`default_pairs` with ``min_cells``. For each pair a model
    ``ScMEDAL(adata without the pair's cells, batch_key, label_key, seed=seed, **ctor settings).train(**train
    settings)`` is trained: ``train_settings`` are split by name between ``ScMEDAL.train``'s parameters
    (``max_epochs``, ``patience``, ``batch_size``, ``max_time``...) and the constructor (``preset``,
    ``n_genes``, ``hidden``, ``threads``...). ``methods``: strings passed unchanged as
    ``get_counterfactual_expression(..., method=...)``. ``baselines``: names in :data:`BASELINES` or callables
    (module docstring). ``truth``: None (observed mean of the held-out cells) or ``truth(adata_source,
    target_batch)`` -> per-source-cell truth (array over all genes in var order, or over the model genes
    in model order, or a DataFrame with gene columns), e.g. :func:`synthetic_truth`.
    ``progress(info)``: training epochs (``info["stage"] == "train"``, with the pair) and each finished
    pair (``"pair"``, with its rows and the trained ``model``). ``cancel`` (``threading.Event`` or callable): checked between pairs
    and passed to ``train``; a cancelled pair is not scored and the rows so far are returned.

    Returns one row per (pair, method or baseline): :data:`COLUMNS` plus ``kind`` ("model"/"baseline"),
    ``train_s``, ``health_ok`` (False if any network's health check failed) and ``n_genes``.
    """
    from .model import ScMEDAL

    _check_keys(adata, batch_key, label_key)
    obs = adata.obs
    if pairs is None:
        pairs = default_pairs(obs, batch_key, label_key, int(min_cells))
        if not pairs:
            tab = pd.crosstab(obs[label_key].astype(str), obs[batch_key].astype(str))
            big = tab.stack().sort_values(ascending=False).head(3)
            raise DataError(f"no (label, batch) pair qualifies with min_cells={min_cells}: a pair needs >= min_cells "
                            f"cells, its label >= min_cells cells in other batches and its batch >= min_cells other "
                            f"cells (largest groups: {', '.join(f'{k[0]}/{k[1]}: {v}' for k, v in big.items())}). "
                            f"Lower min_cells or pass pairs=[(label, batch), ...].")
    pairs = _check_pairs(pairs, obs, batch_key, label_key)
    if isinstance(methods, str):
        methods = [methods]
    items = _baseline_items(baselines)
    ctor_kw, train_kw = _split_settings(dict(train_settings))
    lab = obs[label_key].astype(str).to_numpy()
    bat = obs[batch_key].astype(str).to_numpy()
    rows: list[dict] = []
    t_all = time.perf_counter()
    for i, (L, T) in enumerate(pairs):
        if is_cancelled(cancel):
            break
        held = (lab == L) & (bat == T)
        src = (lab == L) & (bat != T)
        train_idx = np.flatnonzero(~held)
        info0 = {"pair": i, "n_pairs": len(pairs), "label": L, "target_batch": T}

        def fwd(info, _base=info0):
            if progress is not None:
                progress({**info, **_base, "stage": "train"})

        t0 = time.perf_counter()
        model = ScMEDAL(adata[train_idx].copy(), batch_key=batch_key, label_key=label_key, seed=seed, **ctor_kw)
        model.train(progress=fwd, cancel=cancel, **train_kw)
        train_s = time.perf_counter() - t0
        if is_cancelled(cancel):
            break
        genes = list(model.genes)
        X = model.recipe.transform(adata).X_log.astype(np.float64)
        a_src = adata[np.flatnonzero(src)].copy()
        X_src = X[src]
        src_mean = X_src.mean(axis=0)
        if truth is None:
            truth_cells, truth_mean = None, X[held].mean(axis=0)
        else:
            truth_cells = _truth_cells(truth, a_src, T, genes)
            truth_mean = truth_cells.mean(axis=0)
        common = {"label": L, "target_batch": T, "n_source": int(src.sum()), "n_target": int(held.sum()),
                  "seed": int(seed), "train_s": train_s, "health_ok": _health_ok(model), "n_genes": len(genes)}
        preds = [(str(m), "model", lambda m=m: model.get_counterfactual_expression(T, adata=a_src, method=m))
                 for m in methods]
        if items:
            ctx = {"X_source": X_src, "batch_source": bat[src], "X_train": X[train_idx], "batch_train": bat[train_idx],
                   "label_train": lab[train_idx], "target_batch": T, "genes": genes, "seed": int(seed),
                   "adata_train": adata[train_idx], "adata_source": a_src}
            preds += [(name, "baseline", lambda b=b: _baseline(b, ctx)) for name, b in items]
        new = []
        for name, kind, fn in preds:
            p = np.asarray(fn(), dtype=np.float64)
            if p.shape != X_src.shape:
                raise DataError(f"{kind} {name!r} returned shape {p.shape}; expected {X_src.shape} (source cells x "
                                "model genes).")
            new.append({**common, "method": name, "kind": kind,
                        **score_counterfactual(p, truth_mean, src_mean, truth_cells)})
        rows.extend(new)
        if progress is not None:
            progress({**info0, "stage": "pair", "pair": i + 1, "train_s": train_s,
                      "elapsed_s": time.perf_counter() - t_all, "rows": new, "model": model})
    extra = ["kind", "train_s", "health_ok", "n_genes"]
    return pd.DataFrame(rows, columns=COLUMNS + extra)
