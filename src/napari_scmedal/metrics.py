"""Evaluation metrics of METHOD.md section 4 (pure Python: numpy, scikit-learn).

* :func:`cluster_scores` -- 1/Davies-Bouldin, Calinski-Harabasz and silhouette (ASW) of a latent
  against one grouping (batch or label), on an optional seeded subsample.
* :func:`latent_scores` -- the same by batch and by label at once.
* :func:`mixed_effects_classification` -- random forest (100 trees, seed 42) on standardised FE,
  RE and FE+RE latents predicting any target (an obs column), trained on one set of cells and
  tested on another, or with the fairer held-out-batch protocol (leave whole batches out).
* :func:`evaluate_model` -- the section-4 table for a trained :class:`~napari_scmedal.ScMEDAL` on
  one of its splits (used by the GUI and the CLI ``evaluate``).
* :func:`counterfactual_holdout` -- counterfactual accuracy against held-out truth, with baselines
  (defined in :mod:`napari_scmedal.holdout`, imported lazily here: that module trains models).

Batch-invariant latents (FE, FEC) want low batch scores and high label scores; the RE latent
wants high batch scores.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

__all__ = ["cluster_scores", "latent_scores", "mixed_effects_classification", "evaluate_model",
           "counterfactual_holdout", "metric_goal"]


def __getattr__(name):
    # lazy: napari_scmedal.holdout imports the model (torch); no import cycle through this module
    if name == "counterfactual_holdout":
        from .holdout import counterfactual_holdout

        return counterfactual_holdout
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def metric_goal(latent: str, by: str) -> str:
    """Which direction is better for a metrics row: FE/FEC by batch low (mixed), RE by batch high, labels high."""
    latent, by = str(latent).upper(), str(by)
    if by == "batch":
        return "lower (batch removed)" if latent in ("FE", "FEC") else "higher (batch captured)"
    if by == "label":
        return "higher (types apart)"
    return "higher"


def _subsample(n: int, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(size), replace=False))


def cluster_scores(latent, groups, subsample: int | None = 10000, seed: int = 0) -> dict[str, float]:
    """``{"inv_db", "ch", "asw", "n_cells", "n_groups"}`` of ``latent`` (n, d) grouped by ``groups`` (n,).

    ``subsample``: at most this many cells (the paper uses 10,000 test cells), drawn with ``seed``.
    Raises :class:`DataError` when fewer than two groups are present.
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    latent = np.asarray(latent, dtype=np.float64)
    groups = np.asarray(groups)
    if latent.ndim != 2 or latent.shape[0] != groups.shape[0]:
        raise DataError(f"latent has shape {latent.shape} but groups has {groups.shape[0]} entries; pass one "
                        f"group per latent row.")
    keep = np.asarray([g is not None and g == g and g != -1 for g in groups.tolist()]) if groups.dtype == object \
        else (groups != -1)
    latent, groups = latent[keep], groups[keep]
    idx = _subsample(latent.shape[0], subsample, seed)
    x, g = latent[idx], groups[idx]
    k = len(np.unique(g))
    if k < 2 or k >= len(g):
        raise DataError(f"clustering scores need between 2 and n_cells-1 groups; got {k} groups for {len(g)} cells. "
                        f"Use a larger subsample or a grouping with at least two categories.")
    db = davies_bouldin_score(x, g)
    return {"inv_db": float(1.0 / db) if db > 0 else float("inf"),
            "ch": float(calinski_harabasz_score(x, g)),
            "asw": float(silhouette_score(x, g)),
            "n_cells": int(len(g)), "n_groups": int(k)}


def latent_scores(latent, batch, label=None, subsample: int | None = 10000, seed: int = 0) -> dict:
    """``{"batch": cluster_scores(latent, batch), "label": cluster_scores(latent, label) | None}``
    with the same subsample for both."""
    latent = np.asarray(latent)
    idx = _subsample(latent.shape[0], subsample, seed)
    out = {"batch": cluster_scores(latent[idx], np.asarray(batch)[idx], None)}
    out["label"] = None if label is None else cluster_scores(latent[idx], np.asarray(label)[idx], None)
    return out


def _rf_accuracy(X_train, y_train, X_test, y_test, n_trees, seed):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    clf = RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=1)
    clf.fit(scaler.transform(X_train), y_train)
    return float((clf.predict(scaler.transform(X_test)) == y_test).mean())


def mixed_effects_classification(fe, re, target, *, train_idx=None, test_idx=None, batch=None,
                                 held_out_batches: bool = False, n_folds: int = 5, n_trees: int = 100,
                                 seed: int = 42) -> dict:
    """Random-forest accuracy on standardised ``FE``, ``RE`` and ``FE+RE`` latents.

    ``fe``, ``re``: (n, d) latents of the same cells; ``target``: (n,) labels to predict (e.g. a
    batch-level obs column such as diagnosis or protocol, or a cell type).

    * Default protocol (the paper's): fit on ``train_idx``, test on ``test_idx``. Every batch is
      seen in training, so this mostly measures batch recognition.
    * ``held_out_batches=True`` (needs ``batch``): grouped k-fold over batches (``n_folds`` at most
      the number of batches), so test cells always come from batches unseen in training; returns
      the mean accuracy over folds.

    Returns ``{"fe": acc, "re": acc, "fe+re": acc, "protocol": ..., "n_train", "n_test"}``.
    """
    fe, re = np.asarray(fe, dtype=np.float64), np.asarray(re, dtype=np.float64)
    y = np.asarray(target).astype(str)
    if not (len(fe) == len(re) == len(y)):
        raise DataError(f"fe ({len(fe)}), re ({len(re)}) and target ({len(y)}) must describe the same cells.")
    feats = {"fe": fe, "re": re, "fe+re": np.hstack([fe, re])}
    if held_out_batches:
        from sklearn.model_selection import GroupKFold

        if batch is None:
            raise DataError("held_out_batches=True needs batch= (one batch per cell) to hold whole batches out.")
        batch = np.asarray(batch).astype(str)
        nb = len(np.unique(batch))
        if nb < 2:
            raise DataError("held-out-batch classification needs at least 2 batches.")
        folds = list(GroupKFold(n_splits=min(n_folds, nb)).split(fe, y, batch))
        out = {k: float(np.mean([_rf_accuracy(f[tr], y[tr], f[te], y[te], n_trees, seed) for tr, te in folds]))
               for k, f in feats.items()}
        out.update(protocol="held_out_batches", n_folds=len(folds), n_train=None, n_test=None)
        return out
    if train_idx is None or test_idx is None:
        raise DataError("pass train_idx= and test_idx= (cell indices), or held_out_batches=True with batch=.")
    tr, te = np.asarray(train_idx), np.asarray(test_idx)
    out = {k: _rf_accuracy(f[tr], y[tr], f[te], y[te], n_trees, seed) for k, f in feats.items()}
    out.update(protocol="train_test", n_train=int(len(tr)), n_test=int(len(te)))
    return out


def evaluate_model(model, split: str = "test", *, subsample: int | None = 10000, seed: int = 0,
                   target: str | None = None, held_out_batches: bool = False, adata=None) -> dict:
    """METHOD section-4 table for a trained model on one split of its training data.

    Returns ``{"split", "n_cells", "latents": {kind: latent_scores(...)}, "classification": ... | None}``
    where ``kind`` runs over the trained latents (``fe``, ``re``, ``fec``). Scores by label need the
    model's ``label_key``. ``target`` (an obs column) adds the mixed-effects random-forest
    classification trained on the ``train`` split and tested on ``split`` (or held-out batches).
    ``adata`` is only needed for a loaded model (the training AnnData it was trained on).
    """
    from .errors import DataError as _DE

    ad_ = model._training_adata(adata)
    splits = model.splits
    if not splits:
        raise _DE("this model does not carry its train/val/test split (its file was saved without the cell names: "
                  "too many cells to list); evaluate with the model object returned by training, or score chosen "
                  "cells with napari_scmedal.metrics.latent_scores(model.get_latent_representation(...), ...).")
    if split not in splits:
        raise _DE(f"unknown split {split!r}; choose one of {sorted(splits)}.")
    names = list(ad_.obs_names)
    pos = {n: i for i, n in enumerate(names)}
    try:
        idx = np.asarray([pos[n] for n in splits[split]], dtype=np.int64)
        tr_idx = np.asarray([pos[n] for n in splits["train"]], dtype=np.int64)
    except KeyError as e:
        raise _DE(f"cell {e.args[0]!r} of the model's {split} split is not in this AnnData; pass the AnnData the "
                  f"model was trained on.") from None
    batch = ad_.obs[model.recipe.batch_key].astype(str).to_numpy()
    label = ad_.obs[model.recipe.label_key].astype(str).to_numpy() if model.recipe.label_key else None
    table = {"split": split, "n_cells": int(len(idx)), "latents": {}}
    lat = {k: model.get_latent_representation(k, adata=ad_) for k in model.trained_kinds}
    for k, z in lat.items():
        table["latents"][k] = latent_scores(z[idx], batch[idx], None if label is None else label[idx],
                                            subsample=subsample, seed=seed)
    table["classification"] = None
    if target is not None:
        if target not in ad_.obs:
            raise _DE(f"target {target!r} is not an obs column; available: {list(ad_.obs.columns)}.")
        y = ad_.obs[target].astype(str).to_numpy()
        if held_out_batches:
            table["classification"] = mixed_effects_classification(lat["fe"], lat["re"], y, batch=batch,
                                                                   held_out_batches=True)
        else:
            table["classification"] = mixed_effects_classification(lat["fe"], lat["re"], y, train_idx=tr_idx,
                                                                   test_idx=idx)
        table["classification"]["target"] = target
    return table
