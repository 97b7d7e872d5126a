"""The "balanced" counterfactual: a cell's expression as if measured in another batch (the default).

Measured against held-out truth (docs/benchmarks.md, "Counterfactual accuracy against truth"), the
literal method (swap the RE one-hot) and the RE-latent shifts lose to a plain mean shift, because the
RE decoder's output is dominated by its random effects. This method keeps what the networks do well
and estimates the batch change where the data can support it:

1. **Which cells are comparable** -- the cell's *group*: its cell-type label when the model was trained
   with labels and the cell's label is known; otherwise the majority group of its 15 nearest anchor cells
   in the batch-invariant FE latent (labels transfer across batches there; without labels the anchors'
   groups are k-means clusters of the FE latent).
2. **What the batch changes** -- per gene, from the source to the target batch:
   * the group's *own* change, the difference of its mean log1p expression between the two batches,
     trusted by the evidence ``w = n / (n + SHRINK_CELLS)`` (``n``: harmonic mean of the group's cell
     counts in the two batches; 0 when the group is absent from either);
   * the *borrowed* change, averaged over every group present in both batches (composition-free, unlike
     a global batch mean): ``alpha`` x a multiplicative estimate (the log ratio of mean normalised
     counts, applied to the cell's counts, so a gene's log change depends on its level as capture
     efficiency and depth do) plus ``1 - alpha`` x an additive one (the difference of mean log1p values,
     right where zeros do not scale, e.g. batch-specific dropout, corrected for level: ``h(level of the
     cell's group) - mean of h over those groups`` in the source batch, with ``h`` piecewise linear in the
     level, fitted to those groups' changes pooled over genes (:func:`level_change`; its linear slope is
     ``beta``)). ``alpha`` is chosen per
     model from the training data by leave-one-group-out prediction on the most-changed genes
     (:func:`choose_alpha`), the situation of a cell type that a batch lacks. A group absent from the target batch (``w = 0``) is *extrapolated*: flagged per
     cell and warned about.
3. **The counterfactual** -- ``base + w * own + (1 - w) * borrowed`` with ``base`` the cell's RE
   reconstruction (log1p units) *recentred on its group's observed mean in the source batch*
   (:func:`recentre`: the cell keeps its deviation from the group, the group's mean is the data's, not the
   decoder's, which is biased; on the held-out benchmark this is worth ~0.02 top-100 R^2). For the cell's
   own batch the change is zero and the result is its RE reconstruction (not recentred).

The statistics (``means`` of normalised counts and ``log_means`` of log1p values: batches x groups x
genes; ``counts``: batches x groups) come from the training and validation cells and are stored in the
model file with the anchors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .selection import limit_cells

__all__ = ["SHRINK_CELLS", "MIN_CELLS", "RECENTRE_CELLS", "PSEUDO", "KNN", "ALPHAS", "group_stats", "changes",
           "level_change", "recentre", "apply_change",
           "choose_alpha", "assign_groups", "cluster_anchors"]

#: Cells of a group in both batches at which the group's own change gets half the weight.
SHRINK_CELLS = 20
#: Fewest training cells of a group in a batch for the group to count as present there.
MIN_CELLS = 5
#: Pseudocount (normalised counts per 10,000) added to both means of a ratio.
PSEUDO = 0.01
#: Cells of a group given to :func:`apply_change` at which the recentring of their RE reconstructions on the
#: group's observed mean gets half its weight (when the reconstructions' training mean is not known).
RECENTRE_CELLS = 5
#: Interior knots (quantiles of the source levels) of the piecewise linear level term of the borrowed change.
LEVEL_KNOTS = 4
#: Ridge (per observation) of that fit.
LEVEL_RIDGE = 1e-2
#: Anchor neighbours (FE latent) voting for a cell's group when its label is unknown.
KNN = 15
#: Candidate shares of the multiplicative estimate (chosen per model by :func:`choose_alpha`).
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Training cells per batch and group kept to choose the share.
ALPHA_SAMPLE = 100
#: Batches whose cells are sampled to choose the share (their ordered pairs are tested).
ALPHA_BATCHES = 6


def group_stats(blocks, n_batches: int, n_groups: int, n_genes: int, samples: dict | None = None,
                sample_batches=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(means, log_means, counts)`` per batch and group from ``blocks``, an iterable of ``(X_log,
    batch_codes, group_codes)`` (groups < 0 are skipped): mean ``expm1(X_log)`` (normalised counts),
    mean ``X_log`` and the number of cells. ``samples``, when given, collects up to ``ALPHA_SAMPLE``
    log1p rows per (batch, group) (the first ones met) of the batches in ``sample_batches`` (all when
    None) for :func:`choose_alpha`."""
    sums = np.zeros((n_batches, n_groups, n_genes), dtype=np.float64)
    log_sums = np.zeros_like(sums)
    counts = np.zeros((n_batches, n_groups), dtype=np.int64)
    for x_log, batch, group in blocks:
        keep = np.asarray(group) >= 0
        if not keep.any():
            continue
        xl = np.asarray(x_log, dtype=np.float64)[keep]
        b, g = np.asarray(batch)[keep], np.asarray(group)[keep]
        np.add.at(sums, (b, g), np.expm1(xl))
        np.add.at(log_sums, (b, g), xl)
        np.add.at(counts, (b, g), 1)
        if samples is not None:
            for bb, gg in set(zip(b.tolist(), g.tolist())):
                if sample_batches is not None and bb not in sample_batches:
                    continue
                have = samples.setdefault((bb, gg), [])
                room = ALPHA_SAMPLE - sum(len(h) for h in have)
                if room > 0:
                    have.append(xl[(b == bb) & (g == gg)][:room].astype(np.float32))
    if samples is not None:
        for key in list(samples):
            if isinstance(samples[key], list):
                samples[key] = np.concatenate(samples[key]) if samples[key] else np.zeros((0, n_genes), np.float32)
    den = np.maximum(counts, 1)[..., None]
    return (sums / den).astype(np.float32), (log_sums / den).astype(np.float32), counts


def changes(means: np.ndarray, log_means: np.ndarray, counts: np.ndarray, source: int,
            target: int, recon_means: np.ndarray | None = None) -> dict:
    """The change that takes batch ``source`` to ``target``:

    * ``log_ratio`` / ``shift`` (genes): the balanced multiplicative change (log ratio of mean normalised
      counts) and additive change (difference of mean log1p values), averaged over the groups present
      in both batches;
    * ``own`` ((groups + 1) x genes): each group's own additive change (its observed mean log1p in
      ``target`` minus in ``source``; zero where absent) and ``weight`` (groups + 1): the evidence for it,
      ``n / (n + SHRINK_CELLS)``, 0 where the group is absent from either batch;
    * ``extrapolated`` (groups + 1): the group is absent from either batch, so its change is borrowed;
    * ``level`` ((groups + 1) x genes) and ``beta``: each group's mean log1p in ``source`` minus the
      average of the groups present in both batches (0 where the group has no cells in ``source``), and
      the slope of those groups' additive changes on their levels (pooled over genes); ``level_change``
      ((groups + 1) x genes, when at least two groups are present in both batches): the piecewise linear
      version of ``beta * level`` (:func:`level_change`). The borrowed additive change of a group is
      ``shift + level_change`` (``shift + beta * level`` for dicts without it).

    * ``source`` ((groups + 1) x genes) and ``anchored`` (groups + 1): each group's observed mean log1p in
      ``source`` and whether it has >= ``MIN_CELLS`` cells there (the level :func:`apply_change` recentres the
      RE reconstructions of the group's cells on); ``recon`` ((groups + 1) x genes, only with
      ``recon_means``: batches x groups x genes, the mean RE reconstruction of the same training cells): the
      reconstructions' own mean there (else :func:`apply_change` estimates it from the cells it is given).

    The last row stands for cells of no known group (index it with -1)."""
    n_groups, n_genes = counts.shape[1], means.shape[2]
    out: dict[str, Any] = {
        "log_ratio": np.zeros(n_genes), "shift": np.zeros(n_genes), "own": np.zeros((n_groups + 1, n_genes)),
        "weight": np.zeros(n_groups + 1), "extrapolated": np.zeros(n_groups + 1, dtype=bool),
        "level": np.zeros((n_groups + 1, n_genes)), "beta": 0.0,
        "source": np.zeros((n_groups + 1, n_genes)), "anchored": np.zeros(n_groups + 1, dtype=bool)}
    if source == target:
        return out
    seen_src = counts[source] >= MIN_CELLS
    out["anchored"][:n_groups] = seen_src
    out["source"][:n_groups] = np.where(seen_src[:, None], log_means[source].astype(np.float64), 0.0)
    if recon_means is not None:
        out["recon"] = np.zeros((n_groups + 1, n_genes))
        out["recon"][:n_groups] = np.where(seen_src[:, None], np.asarray(recon_means[source], np.float64), 0.0)
    ms, mt = means[source].astype(np.float64), means[target].astype(np.float64)
    ls, lt = log_means[source].astype(np.float64), log_means[target].astype(np.float64)
    ns, nt = counts[source].astype(np.float64), counts[target].astype(np.float64)
    present = (ns >= MIN_CELLS) & (nt >= MIN_CELLS)
    if present.any():
        out["log_ratio"] = np.log(mt[present].mean(0) + PSEUDO) - np.log(ms[present].mean(0) + PSEUDO)
        out["shift"] = lt[present].mean(0) - ls[present].mean(0)
        # level dependence of the additive change: across the groups present in both batches, how a gene's
        # change moves with its level in the source batch (one slope for all genes)
        ref = ls[present].mean(0)
        dm, ds = ls[present] - ref, (lt[present] - ls[present]) - out["shift"]
        den = float((dm * dm).sum())
        out["beta"] = float((dm * ds).sum() / den) if present.sum() >= 2 and den > 0 else 0.0
        seen = ns >= MIN_CELLS
        out["level"][:n_groups] = np.where(seen[:, None], ls - ref, 0.0)
        out["level_change"] = np.zeros((n_groups + 1, n_genes))
        if present.sum() >= 2:
            out["level_change"][:n_groups] = np.where(seen[:, None], level_change(ls[present], ds, ls), 0.0)
    else:  # no group in common: the batches' overall means (composition not balanced)
        ws, wt = ns[:, None] / max(ns.sum(), 1), nt[:, None] / max(nt.sum(), 1)
        out["log_ratio"] = np.log((wt * mt).sum(0) + PSEUDO) - np.log((ws * ms).sum(0) + PSEUDO)
        out["shift"] = (wt * lt).sum(0) - (ws * ls).sum(0)
    n_h = np.where(present, 2.0 * ns * nt / np.maximum(ns + nt, 1), 0.0)
    out["weight"][:n_groups] = n_h / (n_h + SHRINK_CELLS)
    out["own"][:n_groups] = np.where(present[:, None], lt - ls, 0.0)
    out["extrapolated"][:n_groups] = ~present
    out["extrapolated"][n_groups] = True
    return out


def _level_term(change: dict, groups):
    """The level term of the borrowed additive change of ``groups``: ``level_change`` (piecewise linear in
    the level), else ``beta * level`` (linear; dicts without it)."""
    if "level_change" in change:
        return change["level_change"][groups]
    return change["beta"] * change["level"][groups]


def recentre(base_log: np.ndarray, change: dict, groups: np.ndarray) -> np.ndarray:
    """The RE reconstructions ``base_log`` of cells of ``groups``, each group's recentred on its observed
    mean log1p in the source batch (``change["source"]``, groups with >= ``MIN_CELLS`` training cells
    there; others unchanged): ``base + lam * (observed - recon)`` where ``recon`` is the reconstructions'
    mean over the group's training cells (``change["recon"]``, ``lam = 1``) or, without it, over the
    group's cells given here (``lam = n / (n + RECENTRE_CELLS)``: a few cells estimate it poorly; one cell
    moves by a sixth of the way to the group's mean). Keeps each cell's deviation from its group (what the
    RE autoencoder denoises) and removes the reconstruction's bias of the group mean (what the held-out
    benchmark measures: ``benchmarks/bench_cf_holdout.py``)."""
    base = np.asarray(base_log, dtype=np.float64)
    anchored = change.get("anchored")
    if anchored is None or not anchored.any():
        return base
    groups = np.asarray(groups)
    out = base.copy()
    for k in np.unique(groups):
        if not anchored[k]:
            continue
        rows = groups == k
        if "recon" in change:
            lam, ref = 1.0, change["recon"][k]
        else:
            n = int(rows.sum())
            lam, ref = n / (n + RECENTRE_CELLS), base[rows].mean(0)
        out[rows] += lam * (change["source"][k] - ref)
    return out


def _level_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    return np.stack([x] + [np.maximum(0.0, x - k) for k in knots], axis=-1)


def level_change(levels: np.ndarray, deviations: np.ndarray, query: np.ndarray) -> np.ndarray:
    """How a gene's batch change moves with its level, pooled over genes: ``levels`` (groups x genes, mean
    log1p in the source batch) and ``deviations`` (the same groups' additive changes minus their average,
    per gene) fit ``deviation = h(level) - mean over the groups of h(level)`` with ``h`` piecewise linear
    (knots at ``LEVEL_KNOTS`` quantiles of ``levels``, ridge ``LEVEL_RIDGE``; linear ``h`` is ``beta``'s
    fit). Returns ``h(query) - mean over the groups of h(levels)`` (query rows x genes): the level term of
    the borrowed additive change (e.g. dropout, which takes more from low genes)."""
    levels = np.asarray(levels, dtype=np.float64)
    knots = np.quantile(levels, np.linspace(0.0, 1.0, LEVEL_KNOTS + 2)[1:-1]) if levels.size else np.zeros(0)
    b = _level_basis(levels, knots)
    b_mean = b.mean(0)
    f = (b - b_mean).reshape(-1, b.shape[-1])
    y = np.asarray(deviations, dtype=np.float64).reshape(-1)
    lhs = f.T @ f + LEVEL_RIDGE * max(len(y), 1) * np.eye(f.shape[1])
    theta = np.linalg.solve(lhs, f.T @ y)
    return (_level_basis(np.asarray(query, dtype=np.float64), knots) - b_mean) @ theta


def apply_change(base_log: np.ndarray, change: dict, groups: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Counterfactual rows (float32, log1p units) of cells with RE reconstructions ``base_log`` and
    groups ``groups`` (-1: none): ``base + w * own + (1 - w) * borrowed`` where ``base`` is recentred on the
    group's observed mean in the source batch (:func:`recentre`) and ``borrowed = alpha *
    (log1p(expm1(base) * ratio) - base) + (1 - alpha) * shift`` is the balanced change. A zero change
    (the own batch) returns ``base_log`` exactly (no recentring; the multiplicative part acts on
    ``max(base, 0)``)."""
    base = recentre(base_log, change, groups)
    w = change["weight"][groups][:, None]
    borrowed = (1.0 - alpha) * (change["shift"][None, :] + _level_term(change, groups))
    if alpha:
        pos = np.maximum(base, 0.0)
        borrowed = borrowed + alpha * (np.log1p(np.expm1(pos) * np.exp(change["log_ratio"]))[...] - pos)
    return (base + w * change["own"][groups] + (1.0 - w) * borrowed).astype(np.float32)


def choose_alpha(samples: dict, means: np.ndarray, log_means: np.ndarray, counts: np.ndarray, seed: int = 0,
                 max_pairs: int = 30, max_groups: int = 10) -> tuple[float, dict]:
    """The multiplicative share ``alpha`` (one of :data:`ALPHAS`) that best predicts held-out groups:
    for batch pairs (s, t) and each group k present in both, k's cells in s (``samples[(s, k)]``, log1p
    rows) are sent to t with the change of the *other* groups only (leave-one-group-out, the situation
    of a cell type a batch lacks), and the squared error of the predicted mean against k's observed
    mean in t is summed over the genes that change most (the 100 largest differences, at most a tenth of the
    genes). Returns ``(alpha, {alpha: error})``; 0.5 when nothing can be tested.

    Which share wins depends on the data: on CellBench (protocol change, capture efficiency) the
    multiplicative estimate is better; with batch-specific dropout (zeros do not scale) the additive one."""
    rng = np.random.default_rng(seed)
    n_b = counts.shape[0]
    pairs = [(s, t) for s in range(n_b) for t in range(n_b) if s != t]
    if len(pairs) > max_pairs:
        pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    err = {a: 0.0 for a in ALPHAS}
    tested = 0
    for s, t in pairs:
        present = np.flatnonzero((counts[s] >= MIN_CELLS) & (counts[t] >= MIN_CELLS))
        if present.size < 2:
            continue
        if present.size > max_groups:
            present = np.sort(rng.choice(present, max_groups, replace=False))
        for k in present:
            xs = samples.get((s, int(k)))
            if xs is None or len(xs) == 0:
                continue
            held = counts.copy()
            held[t, k] = 0  # as if the target batch lacked group k (its source cells stay known)
            ch = changes(means, log_means, held, s, t)
            pos = np.maximum(np.asarray(xs, dtype=np.float64), 0.0)
            mult = np.log1p(np.expm1(pos) * np.exp(ch["log_ratio"])).mean(0)
            add = np.asarray(xs, dtype=np.float64).mean(0) + ch["shift"] + _level_term(ch, k)
            truth = log_means[t, k].astype(np.float64)
            # judged on the genes the batch changes most for this group (what a user looks at, and where the
            # two estimates differ): the 100 largest |target - source| differences (at most a tenth of genes)
            src_mean = np.asarray(xs, dtype=np.float64).mean(0)
            top = np.argsort(-np.abs(truth - src_mean))[:max(1, min(100, truth.size // 10))]
            for a in ALPHAS:
                err[a] += float((((a * mult[top] + (1 - a) * add[top]) - truth[top]) ** 2).sum())
            tested += 1
    if not tested:
        return 0.5, err
    return float(min(ALPHAS, key=lambda a: err[a])), err


#: Anchors (seeded subsample) that vote for the group of a cell of unknown label.
MAX_VOTERS = 4000


def assign_groups(fe_latent: np.ndarray, anchor_fe: np.ndarray, anchor_group: np.ndarray,
                  known: np.ndarray | None = None, centroids: bool = False) -> np.ndarray:
    """Each cell's group: ``known`` where it is >= 0, else the majority group of its ``KNN`` nearest
    anchors in the FE latent (ties: the nearest anchor's group; at most ``MAX_VOTERS`` anchors, a seeded
    subsample, vote). ``centroids=True`` (groups that are k-means clusters of the anchors): the group of
    the nearest cluster centre instead, as k-means assigns (fast for millions of cells)."""
    import torch

    n = fe_latent.shape[0]
    out = np.full(n, -1, dtype=np.int64) if known is None else np.asarray(known, dtype=np.int64).copy()
    todo = np.flatnonzero(out < 0)
    valid = np.flatnonzero(np.asarray(anchor_group) >= 0)
    if todo.size == 0 or valid.size == 0:
        return out
    groups_all = np.asarray(anchor_group)
    if centroids:
        ids = np.unique(groups_all[valid])
        centre = torch.as_tensor(np.stack([np.asarray(anchor_fe)[groups_all == g].mean(0) for g in ids]),
                                 dtype=torch.float32)
        for i in range(0, todo.size, 65536):
            rows = todo[i:i + 65536]
            q = torch.as_tensor(np.asarray(fe_latent)[rows], dtype=torch.float32)
            out[rows] = ids[torch.cdist(q, centre).argmin(1).numpy()]
        return out
    valid = limit_cells(valid, MAX_VOTERS, seed=0)
    step = int(max(64, min(4096, 2e7 // valid.size)))  # distance matrix <= ~80 MB
    a = torch.as_tensor(np.asarray(anchor_fe)[valid], dtype=torch.float32)
    groups = groups_all[valid]
    k = min(KNN, valid.size)
    n_groups = int(groups.max()) + 1
    for i in range(0, todo.size, step):
        rows = todo[i:i + step]
        q = torch.as_tensor(np.asarray(fe_latent)[rows], dtype=torch.float32)
        nn_idx = torch.cdist(q, a).topk(k, dim=1, largest=False).indices.numpy()
        g = groups[nn_idx]
        votes = np.zeros((rows.size, n_groups))
        np.add.at(votes, (np.repeat(np.arange(rows.size), k), g.ravel()), 1.0)
        votes[np.arange(rows.size), g[:, 0]] += 0.5  # ties go to the nearest anchor
        out[rows] = votes.argmax(1)
    return out


def cluster_anchors(anchor_fe: np.ndarray, seed: int = 0) -> np.ndarray:
    """k-means groups of the anchors' FE latent for models trained without labels
    (k = clamp(anchors / 100, 2, 12))."""
    from sklearn.cluster import KMeans

    n = anchor_fe.shape[0]
    if n < 4:
        return np.zeros(n, dtype=np.int64)
    k = int(min(12, max(2, n // 100)))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(np.asarray(anchor_fe)).astype(np.int64)
