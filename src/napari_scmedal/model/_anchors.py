"""The reference cells and statistics of the counterfactuals, computed from the training cells.

:class:`Anchors` (a mixin of :class:`~napari_scmedal.model.ScMEDAL`) keeps up to
:data:`~napari_scmedal.model.CF_ANCHORS_PER_BATCH` training cells per batch (their FE and RE latents: the
reference cells of the "matched" method and the voters of the "balanced" method's groups) and the
"balanced" method's per batch and group statistics (:mod:`napari_scmedal.counterfactual`). They are
computed on first use after training and stored in the model file.
"""

from __future__ import annotations

import numpy as np

from ..counterfactual import ALPHA_BATCHES, assign_groups, choose_alpha, cluster_anchors, group_stats
from ..errors import ScMEDALError
from ._state import _State

__all__ = ["CF_ANCHORS_PER_BATCH", "Anchors"]

#: Training cells per batch kept as anchors (FE + RE latents) for "matched"; stored in the model file.
CF_ANCHORS_PER_BATCH = 1000


class Anchors(_State):
    """The counterfactuals' anchors and statistics: :meth:`_anchors` and how they are computed."""

    def _anchors(self) -> dict[str, np.ndarray]:
        """FE and RE latents (and batch codes) of up to ``CF_ANCHORS_PER_BATCH`` training cells per
        batch (the reference cells of the "matched" counterfactual and the voters of the "balanced" one's
        groups), and the "balanced" statistics (``_group_stats``). Computed on first use after training
        and saved in the model file."""
        if self._cf_anchors is None:
            self._check_kind("fe", ("fe",))
            self._check_kind("re", ("re",))
            if self._prepared is None and self._plan is None:
                raise ScMEDALError("this model file has no counterfactual anchors (it was saved by an older "
                                   "version) and carries no training data; retrain and save it again, or pass "
                                   "method='reference'.")
            self._cf_anchors = self._compute_anchors()
        return self._cf_anchors

    def _compute_anchors(self) -> dict[str, np.ndarray]:
        prep = self._prepare(None)
        idx = np.asarray(self._split_idx.get("train", np.zeros(0, np.int64)), dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        keep = []
        for c in range(len(self.batches)):
            cells = idx[np.asarray(prep.batch)[idx] == c]
            if len(cells) == 0:  # no training cell of this batch: use all of its cells
                cells = np.flatnonzero(np.asarray(prep.batch) == c)
            if len(cells) > CF_ANCHORS_PER_BATCH:
                cells = np.sort(rng.choice(cells, CF_ANCHORS_PER_BATCH, replace=False))
            keep.append(cells)
        sub = prep.subset(np.concatenate(keep))
        out = {"fe": self._run("fe", sub, "latent"), "re": self._run("re", sub, "latent"),
               "batch": np.asarray(sub.batch, dtype=np.int64)}
        # the balanced counterfactual's statistics: training and validation cells (descriptive means, more
        # cells per batch and type; the test split stays untouched)
        stat_idx = np.sort(np.concatenate([idx, np.asarray(self._split_idx.get("val", np.zeros(0, np.int64)),
                                                           dtype=np.int64)]))
        out.update(self._group_stats(prep, stat_idx, sub, out["fe"]))
        return out

    def _group_stats(self, prep, idx, anchors, anchor_fe) -> dict:
        """The "balanced" counterfactual's statistics (napari_scmedal.counterfactual) over the training
        cells ``idx``: anchor groups (labels, or k-means clusters of the FE latent without labels) and the
        mean normalised / log1p expression and cell count per batch and group."""
        labels = self.recipe.labels
        a_label = getattr(anchors, "label", None)
        if labels and a_label is not None:
            kind, a_group, n_groups = "labels", np.asarray(a_label, dtype=np.int64), len(labels)
        else:
            kind, a_group = "clusters", cluster_anchors(anchor_fe, self.seed)
            n_groups = int(a_group.max()) + 1 if a_group.size else 1

        nb, G = len(self.batches), self.recipe.n_genes
        re_sum = np.zeros((nb, n_groups, G))  # the same cells' mean RE reconstruction (log1p), per batch and group
        re_cnt = np.zeros((nb, n_groups))

        def blocks():
            for i in range(0, len(idx), 8192):
                sub = prep.subset(idx[i:i + 8192])
                known = np.asarray(sub.label) if kind == "labels" else None
                groups = assign_groups(self._run("fe", sub, "latent"), anchor_fe, a_group, known,
                                       centroids=kind == "clusters")
                b = np.asarray(sub.batch)
                ok = groups >= 0
                rec = self.recipe.unscale(self._run("re", sub, "recon"))
                np.add.at(re_sum, (b[ok], groups[ok]), rec[ok])
                np.add.at(re_cnt, (b[ok], groups[ok]), 1.0)
                yield np.asarray(sub.X_log), b, groups

        samples: dict = {}
        pick = set(np.random.default_rng(self.seed).choice(nb, min(nb, ALPHA_BATCHES), replace=False).tolist())
        mean, logmean, count = group_stats(blocks(), nb, n_groups, self.recipe.n_genes, samples, pick)
        alpha, _ = choose_alpha(samples, mean, logmean, count, seed=self.seed)
        # the counterfactual's base is recentred on each group's observed mean (counterfactual.recentre): the
        # reconstructions' mean comes from these training cells, so a cell's counterfactual never depends on
        # which other cells are in the same call
        remean = (re_sum / np.maximum(re_cnt, 1.0)[..., None]).astype(np.float32)
        return {"group": a_group, "groups": kind, "mean": mean, "logmean": logmean, "count": count,
                "alpha": np.asarray([alpha], dtype=np.float32), "remean": remean}
