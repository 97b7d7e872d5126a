"""Evaluation metrics of METHOD.md section 4 and scIB-style kNN scores (numpy, scikit-learn).

* :func:`cluster_scores` -- 1/Davies-Bouldin, Calinski-Harabasz and silhouette (ASW) of a latent
  against one grouping (batch or label), on an optional seeded subsample.
* :func:`latent_scores` -- the same by batch and by label at once, plus the kNN scores: scaled iLISI
  by batch (1 = batches mixed), scaled cLISI by label (1 = types apart) and NMI/ARI of a k-means
  clustering against the labels (:func:`lisi`, :func:`ilisi`, :func:`clisi`, :func:`kmeans_nmi_ari`).
* :func:`mixed_effects_classification` -- random forest (100 trees, seed 42) on standardised FE,
  RE and FE+RE latents predicting any target (an obs column): mean accuracy and 95% t-interval over
  stratified k folds (default), over held-out batches, or on one train/test split; chance level
  from a majority-class dummy classifier on the same folds.
* :func:`evaluate_model` -- the section-4 table for a trained :class:`~napari_scmedal.ScMEDAL` on
  one of its splits, optionally with PCA and Harmony baselines on the same cells
  (:func:`baseline_latents`); :func:`metrics_rows` flattens it (CLI CSV, model widget).
* :func:`counterfactual_holdout` -- counterfactual accuracy against held-out truth, with baselines
  (defined in :mod:`napari_scmedal.holdout`, imported lazily here: that module trains models).

Batch-invariant latents (FE, FEC and the baselines) want low batch ASW/1/DB/CH, high iLISI and high
label scores; the RE latent wants the opposite by batch (:func:`metric_goal`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._metrics_baselines import BASELINES, baseline_latents, check_baselines, harmony_latent, pca_latent
from ._metrics_lisi import N_NEIGHBORS, clisi, ilisi, kmeans_nmi_ari, knn, lisi
from .errors import DataError
from .selection import subsample as _subsample_rows  # the parameter "subsample" shadows the name

__all__ = ["cluster_scores", "latent_scores", "mixed_effects_classification", "evaluate_model",
           "counterfactual_holdout", "metric_goal", "metrics_rows", "lisi", "ilisi", "clisi", "kmeans_nmi_ari",
           "baseline_latents", "pca_latent", "harmony_latent", "BASELINES"]

#: Display names of the latents in tables.
LATENT_NAMES = {"fe": "FE", "fec": "FEC", "re": "RE", "pca": "PCA", "harmony": "Harmony", "fe+re": "FE+RE"}


def __getattr__(name):
    # lazy: napari_scmedal.holdout imports the model (torch); no import cycle through this module
    if name == "counterfactual_holdout":
        from .holdout import counterfactual_holdout

        return counterfactual_holdout
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def metric_goal(latent: str, by: str, metric: str | None = None) -> str:
    """Which direction is better for a metric of ``latent`` grouped ``by`` ("batch", "label", ...).

    Only the RE latent should capture batches; FE, FEC and the baselines (PCA, Harmony) should remove
    them. By batch, 1/DB, CH and ASW (the row default, ``metric=None``) are low for a batch-free
    latent, while iLISI (``metric="ilisi"``) is high (batches mixed). By label every score (1/DB, CH,
    ASW, cLISI, NMI, ARI) is higher when cell types stay apart. Anything else: ``"higher"``.
    """
    latent, by, metric = str(latent).upper(), str(by), (metric or "").lower()
    captures = latent == "RE"
    if by == "batch":
        if metric == "ilisi":
            return "lower (batch captured)" if captures else "higher (batches mixed)"
        return "higher (batch captured)" if captures else "lower (batch removed)"
    if by == "label":
        return "higher (types apart)"
    return "higher"


def _known(groups: np.ndarray) -> np.ndarray:
    """Cells with a known group (not None, NaN or -1)."""
    if groups.dtype == object:
        return np.asarray([g is not None and g == g and g != -1 for g in groups.tolist()], dtype=bool)
    return np.asarray(groups != -1)


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
    keep = _known(groups)
    latent, groups = latent[keep], groups[keep]
    idx = _subsample_rows(latent.shape[0], subsample, seed)
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


def latent_scores(latent, batch, label=None, subsample: int | None = 10000, seed: int = 0,
                  n_neighbors: int = N_NEIGHBORS) -> dict:
    """Scores of one latent by batch and by label, on the same seeded subsample of cells.

    Returns ``{"batch": {...}, "label": {...} | None}``: each :func:`cluster_scores` (``inv_db``, ``ch``,
    ``asw``, ``n_cells``, ``n_groups``); ``batch`` adds ``ilisi`` (scaled iLISI, 1 = batches mixed) and
    ``label`` adds ``clisi`` (scaled cLISI, 1 = types apart), ``nmi`` and ``ari`` (k-means with one
    cluster per label, ``seed``). The LISI scores use ``n_neighbors`` neighbours (scIB: 90, perplexity 30).
    """
    latent = np.asarray(latent, dtype=np.float64)
    idx = _subsample_rows(latent.shape[0], subsample, seed)
    x, b = latent[idx], np.asarray(batch)[idx]
    out: dict[str, Any] = {"batch": cluster_scores(x, b, None)}
    keep_b = _known(b)
    neigh = knn(x[keep_b], n_neighbors)
    out["batch"]["ilisi"] = ilisi(x[keep_b], b[keep_b], neighbors=neigh)
    out["label"] = None
    if label is not None:
        lab = np.asarray(label)[idx]
        out["label"] = cluster_scores(x, lab, None)
        keep = _known(lab)
        same = bool(np.array_equal(keep, keep_b))
        out["label"]["clisi"] = clisi(x[keep], lab[keep], neighbors=neigh if same else knn(x[keep], n_neighbors))
        out["label"].update(kmeans_nmi_ari(x[keep], lab[keep], seed=seed))
    return out


def _interval(values) -> tuple[float, float] | None:
    """95% t-interval of the mean of ``values`` (None for fewer than two)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    half = float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return float(v.mean() - half), float(v.mean() + half)


def _fold_accuracies(X, y, folds, n_trees, seed) -> list[float]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    out = []
    for tr, te in folds:
        scaler = StandardScaler().fit(X[tr])
        clf = RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=1)
        clf.fit(scaler.transform(X[tr]), y[tr])
        out.append(float((clf.predict(scaler.transform(X[te])) == y[te]).mean()))
    return out


def _chance(y, folds) -> list[float]:
    from sklearn.dummy import DummyClassifier

    z = np.zeros((len(y), 1))
    return [float(DummyClassifier(strategy="most_frequent").fit(z[tr], y[tr]).score(z[te], y[te]))
            for tr, te in folds]


def mixed_effects_classification(fe, re, target, *, train_idx=None, test_idx=None, batch=None,
                                 held_out_batches: bool = False, n_folds: int = 5, n_trees: int = 100,
                                 seed: int = 42, cells=None) -> dict:
    """Random-forest accuracy on standardised ``FE``, ``RE`` and ``FE+RE`` latents, with chance level.

    Parameters
    ----------
    fe, re : array-like, shape (n_cells, n_dims)
        Latents of the same cells.
    target : array-like, shape (n_cells,)
        Labels to predict (e.g. a batch-level obs column such as diagnosis or protocol, or a cell type).
    train_idx, test_idx : array-like of int, optional
        The paper's protocol: fit on ``train_idx``, test on ``test_idx`` (one split, no interval).
    batch : array-like, optional
        One batch per cell; needed for ``held_out_batches``.
    held_out_batches : bool
        Grouped k-fold over batches (``n_folds`` at most the number of batches): test cells always come
        from batches unseen in training (the fairer protocol).
    n_folds : int
        Folds of the default stratified k-fold protocol (at most the smallest class size, at least 2)
        and of the held-out-batch protocol.
    n_trees, seed : int
        Random forest size and seed (also seeds the fold shuffle).
    cells : array-like of int, optional
        Only these cells (default all) enter the k-fold protocols.

    Returns
    -------
    dict
        ``{"fe", "re", "fe+re"}``: mean accuracy over folds; ``"ci"``: ``{name: [low, high]}`` 95%
        t-interval over folds (``None`` for one split); ``"folds"``: ``{name: [per-fold accuracy]}``;
        ``"chance"``, ``"chance_ci"``, ``"chance_folds"``: a majority-class
        :class:`~sklearn.dummy.DummyClassifier` on the same folds; ``"protocol"`` (``"kfold"``,
        ``"held_out_batches"`` or ``"train_test"``), ``"n_folds"``, ``"n_train"``, ``"n_test"``.

    Except with ``held_out_batches`` every batch is seen in training, so the accuracy of a batch-level
    target mostly measures batch recognition.
    """
    fe, re = np.asarray(fe, dtype=np.float64), np.asarray(re, dtype=np.float64)
    y = np.asarray(target).astype(str)
    if not (len(fe) == len(re) == len(y)):
        raise DataError(f"fe ({len(fe)}), re ({len(re)}) and target ({len(y)}) must describe the same cells.")
    feats = {"fe": fe, "re": re, "fe+re": np.hstack([fe, re])}
    pool = np.arange(len(y)) if cells is None else np.asarray(cells, dtype=np.int64)
    n_train = n_test = None
    if held_out_batches:
        from sklearn.model_selection import GroupKFold

        if batch is None:
            raise DataError("held_out_batches=True needs batch= (one batch per cell) to hold whole batches out.")
        groups = np.asarray(batch).astype(str)[pool]
        nb = len(np.unique(groups))
        if nb < 2:
            raise DataError("held-out-batch classification needs at least 2 batches.")
        folds = [(pool[tr], pool[te]) for tr, te in GroupKFold(n_splits=min(n_folds, nb)).split(pool, y[pool], groups)]
        protocol = "held_out_batches"
    elif train_idx is not None or test_idx is not None:
        if train_idx is None or test_idx is None:
            raise DataError("pass both train_idx= and test_idx= (cell indices) for the one-split protocol.")
        folds = [(np.asarray(train_idx), np.asarray(test_idx))]
        protocol, n_train, n_test = "train_test", int(len(folds[0][0])), int(len(folds[0][1]))
    else:
        from sklearn.model_selection import StratifiedKFold

        _, counts = np.unique(y[pool], return_counts=True)
        if len(counts) < 2:
            raise DataError(f"the target has one class ({y[pool][0]!r}) in these cells; nothing to classify.")
        if counts.min() < 2:
            raise DataError("every target class needs at least 2 cells for stratified k-fold classification; "
                            "drop the rare classes or use train_idx=/test_idx=.")
        skf = StratifiedKFold(n_splits=int(min(max(n_folds, 2), counts.min())), shuffle=True, random_state=seed)
        folds = [(pool[tr], pool[te]) for tr, te in skf.split(pool, y[pool])]
        protocol = "kfold"
    out: dict = {"folds": {}, "ci": {} if len(folds) > 1 else None}
    for name, f in feats.items():
        accs = _fold_accuracies(f, y, folds, n_trees, seed)
        out[name] = float(np.mean(accs))
        out["folds"][name] = accs
        interval = _interval(accs)  # one accuracy per fold: an interval whenever there are several folds
        if out["ci"] is not None and interval is not None:
            out["ci"][name] = list(interval)
    chance = _chance(y, folds)
    ci = _interval(chance)
    out.update(chance=float(np.mean(chance)), chance_folds=chance, chance_ci=None if ci is None else list(ci),
               protocol=protocol, n_folds=len(folds), n_train=n_train, n_test=n_test)
    return out


def evaluate_model(model, split: str = "test", *, subsample: int | None = 10000, seed: int = 0,
                   target: str | None = None, held_out_batches: bool = False, adata=None,
                   baselines=(), n_folds: int | None = 5) -> dict:
    """METHOD section-4 table for a trained model on one split of its training data.

    Parameters
    ----------
    model : ScMEDAL
        A trained model (or a loaded one with ``adata``).
    split : {"train", "val", "test"}
        The cells scored.
    subsample, seed : int
        At most ``subsample`` cells per score, drawn with ``seed`` (see :func:`latent_scores`).
    target : str, optional
        An obs column: adds the mixed-effects random-forest classification.
    held_out_batches : bool
        Classify with whole batches held out (grouped k-fold over all cells).
    adata : AnnData, optional
        The training AnnData; only needed for a loaded model.
    baselines : sequence of {"pca", "harmony"} or str
        Baseline latents fitted on every cell of the training AnnData with the model's genes and
        normalisation (:func:`baseline_latents`) and scored on the same cells as the model's latents.
        ``"harmony"`` needs the ``harmony`` extra (harmonypy).
    n_folds : int or None
        Folds of the stratified k-fold classification over the split's cells (mean and 95% interval);
        ``None``: the paper's one split (trained on ``train``, tested on ``split``).

    Returns
    -------
    dict
        ``{"split", "n_cells", "latents": {kind: latent_scores(...)}, "classification": ... | None,
        "baselines": [names]}`` where ``kind`` runs over the trained latents (``fe``, ``fec``, ``re``) and
        then the baselines. Scores by label need the model's ``label_key``.
    """
    baselines = check_baselines(baselines)  # before any work: unknown names, missing harmonypy
    ad_ = model._training_adata(adata)
    splits = model.splits
    if not splits:
        raise DataError("this model does not carry its train/val/test split (its file was saved without the cell "
                        "names: too many cells to list); evaluate with the model object returned by training, or "
                        "score chosen cells with napari_scmedal.metrics.latent_scores(model.get_latent_"
                        "representation(...), ...).")
    if split not in splits:
        raise DataError(f"unknown split {split!r}; choose one of {sorted(splits)}.")
    names = list(ad_.obs_names)
    pos = {n: i for i, n in enumerate(names)}
    try:
        idx = np.asarray([pos[n] for n in splits[split]], dtype=np.int64)
        tr_idx = np.asarray([pos[n] for n in splits["train"]], dtype=np.int64)
    except KeyError as e:
        raise DataError(f"cell {e.args[0]!r} of the model's {split} split is not in this AnnData; pass the AnnData "
                        f"the model was trained on.") from None
    batch = ad_.obs[model.recipe.batch_key].astype(str).to_numpy()
    label = ad_.obs[model.recipe.label_key].astype(str).to_numpy() if model.recipe.label_key else None
    table: dict[str, Any] = {"split": split, "n_cells": int(len(idx)), "latents": {}, "baselines": list(baselines)}
    lat = {k: model.get_latent_representation(k, adata=ad_) for k in model.trained_kinds}
    if baselines:
        lat.update(baseline_latents(model, ad_, baselines, seed=seed))
    for k, z in lat.items():
        table["latents"][k] = latent_scores(z[idx], batch[idx], None if label is None else label[idx],
                                            subsample=subsample, seed=seed)
    table["classification"] = None
    if target is not None:
        if target not in ad_.obs:
            raise DataError(f"target {target!r} is not an obs column; available: {list(ad_.obs.columns)}.")
        y = ad_.obs[target].astype(str).to_numpy()
        if held_out_batches:
            cls = mixed_effects_classification(lat["fe"], lat["re"], y, batch=batch, held_out_batches=True,
                                               n_folds=n_folds or 5)
        elif n_folds is None:
            cls = mixed_effects_classification(lat["fe"], lat["re"], y, train_idx=tr_idx, test_idx=idx)
        else:
            cls = mixed_effects_classification(lat["fe"], lat["re"], y, n_folds=n_folds, cells=idx)
        table["classification"] = {**cls, "target": target}
    return table


def metrics_rows(table: dict) -> list[dict]:
    """Flatten :func:`evaluate_model`'s table into long rows (the CLI's ``metrics.csv``, the model widget).

    One row per latent, grouping and metric: ``{"split", "latent", "grouping", "metric", "value",
    "better"}`` (``better``: :func:`metric_goal`). Classification adds one row per latent (``fe``, ``re``,
    ``fe+re``) with grouping ``"classify:<target>"``, metric ``"accuracy (<protocol>)"``, the mean accuracy
    as ``value`` and also ``ci_low``, ``ci_high`` (95% interval over folds, NaN for one split),
    ``chance`` (majority-class dummy on the same folds) and ``n_folds``.
    """
    rows = []
    split = table.get("split")
    for kind, scores in (table.get("latents") or {}).items():
        for grouping, vals in (scores or {}).items():
            for metric, value in (vals or {}).items():
                better = "" if metric in ("n_cells", "n_groups") else metric_goal(kind, grouping, metric)
                rows.append({"split": split, "latent": kind, "grouping": grouping, "metric": metric,
                             "value": value, "better": better})
    cls = table.get("classification")
    if cls:
        for k in ("fe", "re", "fe+re"):
            if k in cls:
                lo, hi = (cls.get("ci") or {}).get(k) or (float("nan"), float("nan"))
                rows.append({"split": split, "latent": k, "grouping": f"classify:{cls.get('target')}",
                             "metric": f"accuracy ({cls.get('protocol')})", "value": cls[k], "better": "higher",
                             "ci_low": lo, "ci_high": hi, "chance": cls.get("chance", float("nan")),
                             "n_folds": cls.get("n_folds", 1)})
    return rows
