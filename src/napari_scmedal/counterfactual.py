"""The "balanced" counterfactual: a cell's expression as if measured in another batch (the default).

Measured against held-out truth (docs/benchmarks.md, "Counterfactuals against held-out truth"), the
literal method (swap the RE one-hot) and the RE-latent shifts lose to a plain mean shift, because the
RE decoder's output is dominated by its random effects. This method keeps what the networks do well
and estimates the batch change where the data can support it:

1. **Which cells are comparable** -- the cell's *group*: its cell-type label when the model was trained
   with labels and the cell's label is known; otherwise the majority group of its 15 nearest anchor cells
   in the batch-invariant FE latent (labels transfer across batches there; without labels the anchors'
   groups are k-means clusters of the FE latent).
2. **What the batch changes** -- per gene, two estimates of the change from the source to the target
   batch, each within the group (``own``) and averaged over every group present in both batches
   (``balanced``: composition-free, unlike a global batch mean), blended by the evidence
   ``w = n / (n + SHRINK_CELLS)`` (``n``: harmonic mean of the group's cell counts in the two batches):
   a *multiplicative* one, the log ratio of mean normalised expression (counts per 10,000, not logs),
   and an *additive* one, the difference of mean log1p expression. A group absent from the target
   batch has ``w = 0``: its prediction is *extrapolated* from the other groups (flagged per cell, and
   warned about).
3. **The counterfactual** -- the mean of ``log1p(expm1(base) * ratio)`` and ``base + shift``, where
   ``base`` is the cell's RE reconstruction (log1p units). The multiplicative estimate acts like capture
   efficiency and depth do, so a gene's log change depends on its level (log1p compresses low values);
   the additive one is robust where mean counts are tiny. Their mean beat both alone, and every baseline,
   on CellBench held-out Drop-seq targets (docs/model.md, "Counterfactuals"). For the cell's own batch
   the change is zero and the result is its RE reconstruction.

The statistics (``means`` of normalised counts and ``log_means`` of log1p values: batches x groups x
genes; ``counts``: batches x groups) come from the training split and are stored in the model file with
the anchors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHRINK_CELLS", "MIN_CELLS", "PSEUDO", "KNN", "group_stats", "changes", "apply_change",
           "assign_groups", "cluster_anchors"]

#: Cells of a group in both batches at which the group's own ratio gets half the weight.
SHRINK_CELLS = 20
#: Fewest training cells of a group in a batch for the group to count as present there.
MIN_CELLS = 5
#: Pseudocount (normalised counts per 10,000) added to both means of a ratio.
PSEUDO = 0.01
#: Anchor neighbours (FE latent) voting for a cell's group when its label is unknown.
KNN = 15


def group_stats(blocks, n_batches: int, n_groups: int, n_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(means, log_means, counts)`` per batch and group from ``blocks``, an iterable of ``(X_log,
    batch_codes, group_codes)`` (groups < 0 are skipped): mean ``expm1(X_log)`` (normalised counts),
    mean ``X_log`` and the number of cells."""
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
    den = np.maximum(counts, 1)[..., None]
    return (sums / den).astype(np.float32), (log_sums / den).astype(np.float32), counts


def _blend(own: np.ndarray, bal: np.ndarray, ns: np.ndarray, nt: np.ndarray, present: np.ndarray) -> np.ndarray:
    n_h = np.where(present, 2.0 * ns * nt / np.maximum(ns + nt, 1), 0.0)
    w = (n_h / (n_h + SHRINK_CELLS))[:, None]
    return np.where(present[:, None], w * own + (1 - w) * bal[None, :], bal[None, :])


def changes(means: np.ndarray, log_means: np.ndarray, counts: np.ndarray, source: int,
            target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log_ratio, shift, extrapolated)`` taking batch ``source`` to ``target``, per group ((groups + 1)
    x genes; the last row is the balanced change, for cells of no known group: index it with -1): the
    multiplicative change (log ratio of mean normalised counts), the additive change (difference of
    mean log1p values), and whether the group is absent from either batch (its change then comes from
    the other groups only)."""
    n_groups, n_genes = counts.shape[1], means.shape[2]
    if source == target:
        z = np.zeros((n_groups + 1, n_genes))
        return z, z, np.zeros(n_groups + 1, dtype=bool)
    ms, mt = means[source].astype(np.float64), means[target].astype(np.float64)
    ls, lt = log_means[source].astype(np.float64), log_means[target].astype(np.float64)
    ns, nt = counts[source].astype(np.float64), counts[target].astype(np.float64)
    present = (ns >= MIN_CELLS) & (nt >= MIN_CELLS)
    if present.any():
        bal_r = np.log(mt[present].mean(0) + PSEUDO) - np.log(ms[present].mean(0) + PSEUDO)
        bal_s = lt[present].mean(0) - ls[present].mean(0)
    else:  # no group in common: the batches' overall means (composition not balanced)
        ws, wt = ns[:, None] / max(ns.sum(), 1), nt[:, None] / max(nt.sum(), 1)
        bal_r = np.log((wt * mt).sum(0) + PSEUDO) - np.log((ws * ms).sum(0) + PSEUDO)
        bal_s = (wt * lt).sum(0) - (ws * ls).sum(0)
    log_ratio = _blend(np.log(mt + PSEUDO) - np.log(ms + PSEUDO), bal_r, ns, nt, present)
    shift = _blend(lt - ls, bal_s, ns, nt, present)
    return (np.vstack([log_ratio, bal_r[None, :]]), np.vstack([shift, bal_s[None, :]]),
            np.append(~present, True))


def apply_change(base_log: np.ndarray, log_ratio: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Mean of the multiplicative ``log1p(expm1(base) * exp(log_ratio))`` and the additive
    ``base + shift`` estimates, row by row (float32, log1p units). A zero change returns ``base``
    exactly (the multiplicative part acts on ``max(base, 0)``; a reconstruction's small negative values
    are carried through unchanged)."""
    base = np.asarray(base_log, dtype=np.float64)
    pos = np.maximum(base, 0.0)
    mult = np.log1p(np.expm1(pos) * np.exp(log_ratio)) + (base - pos)
    return (0.5 * mult + 0.5 * (base + shift)).astype(np.float32)


def assign_groups(fe_latent: np.ndarray, anchor_fe: np.ndarray, anchor_group: np.ndarray,
                  known: np.ndarray | None = None) -> np.ndarray:
    """Each cell's group: ``known`` where it is >= 0, else the majority group of its ``KNN`` nearest
    anchors in the FE latent (ties: the nearest anchor's group)."""
    import torch

    n = fe_latent.shape[0]
    out = np.full(n, -1, dtype=np.int64) if known is None else np.asarray(known, dtype=np.int64).copy()
    todo = np.flatnonzero(out < 0)
    valid = np.flatnonzero(np.asarray(anchor_group) >= 0)
    if todo.size == 0 or valid.size == 0:
        return out
    a = torch.as_tensor(np.asarray(anchor_fe)[valid], dtype=torch.float32)
    groups = np.asarray(anchor_group)[valid]
    k = min(KNN, valid.size)
    n_groups = int(groups.max()) + 1
    for i in range(0, todo.size, 4096):
        rows = todo[i:i + 4096]
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
