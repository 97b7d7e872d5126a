"""The counterfactual methods: each cell's expression as if measured in another batch.

:class:`Counterfactuals` (a mixin of :class:`~napari_scmedal.model.ScMEDAL`) dispatches to the three
methods of :data:`~napari_scmedal.versions.CF_METHODS` (docs/model.md, "Counterfactuals"): "balanced" (the
default, :mod:`napari_scmedal.counterfactual`), "matched" (a shift in the RE latent between FE-latent
neighbours) and "reference" (METHOD.md's literal one-hot swap). The public entry points are the versions
methods of :mod:`napari_scmedal.model._inference`; this module only computes.
"""

from __future__ import annotations

import warnings
from typing import cast

import numpy as np
import torch

from ..counterfactual import apply_change, assign_groups, changes
from ..errors import ScMEDALError
from ..models import FE, RE
from ..versions import CF_NEIGHBOURS, batch_position, check_method
from ._state import _State

__all__ = ["Counterfactuals"]


class Counterfactuals(_State):
    """The counterfactual methods' computation over prepared cells."""

    def _check_method(self, method) -> str:
        """``method`` checked (:func:`~napari_scmedal.versions.check_method`); "balanced" falls back to
        "matched" (with a warning) for a model file saved before the "balanced" statistics existed."""
        check_method(method)
        if method == "balanced" and self._cf_anchors is not None and "mean" not in self._cf_anchors \
                and self._prepared is None and self._plan is None:
            warnings.warn("this model file was saved before the 'balanced' counterfactual existed and carries no "
                          "training data to compute it; using method='matched'. Retrain and save the model to "
                          "get the default method.", UserWarning, stacklevel=4)
            return "matched"
        return method

    def _counterfactuals(self, prep, codes, method: str, *, scaled: bool = False, batch_size: int = 4096,
                         outputs: dict | None = None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Counterfactuals of ``prep``'s cells, one ``(n, G)`` float32 array per target batch code, in model
        space when ``scaled`` else in log1p units; and the "balanced" method's per-cell extrapolation flags
        (``None`` for the other methods). ``outputs``: network outputs over ``prep`` already computed,
        ``{(kind, "recon" | "latent"): array}`` in model space, reused instead of running the network again.
        Each method's result is converted once, from the units it computes in. Arguments are checked by the
        caller (:meth:`_versions`)."""
        if method == "balanced":
            outs, flags = self._balanced(prep, codes, batch_size, outputs or {})
            return ([self.recipe.scale(x) for x in outs] if scaled else outs), flags
        if method == "matched":
            outs = self._matched(prep, codes, batch_size=batch_size)
        else:  # "reference": the whole RE autoencoder with the one-hot swapped
            outs = [self._run("re", prep, "recon", z_override=self._onehot(b), batch_size=batch_size) for b in codes]
        return (outs if scaled else [self.recipe.unscale(x).astype(np.float32, copy=False) for x in outs]), None

    def _onehot(self, code: int) -> torch.Tensor:
        z = torch.zeros(1, len(self.batches), device=self.device)
        z[0, code] = 1.0
        return z

    def _balanced(self, prep, codes, batch_size: int = 4096, outputs: dict | None = None):
        """("balanced") log1p counterfactuals and per-cell extrapolation flags for each target code."""
        outputs = outputs or {}
        st, groups = self._cf_groups(prep, batch_size, fe_latent=outputs.get(("fe", "latent")))
        rec = outputs.get(("re", "recon"))
        base = self.recipe.unscale(self._run("re", prep, "recon", batch_size=batch_size) if rec is None else rec)
        own = np.asarray(prep.batch)
        outs, flags = [], []
        for t in codes:
            out = np.empty_like(base)
            flag = np.zeros(len(own), dtype=bool)
            for s in np.unique(own):
                ch = changes(st["mean"], st["logmean"], st["count"], int(s), int(t), recon_means=st.get("remean"))
                for rows in np.array_split(np.flatnonzero(own == s), max(1, int(np.sum(own == s)) // batch_size + 1)):
                    g = groups[rows]
                    out[rows] = apply_change(base[rows], ch, g, float(st["alpha"][0]))
                    flag[rows] = ch["extrapolated"][g]
            outs.append(out)
            flags.append(flag)
        return outs, flags

    def counterfactual_extrapolated(self, target_batch=None, adata=None, *, batch_index=None) -> np.ndarray:
        """Which cells' ("balanced") counterfactual into ``target_batch`` is extrapolated.

        A cell's counterfactual is extrapolated when its type (label, or FE-latent group without labels)
        has too few training cells in the target batch or its own, so its batch change is borrowed from
        the other types.

        Parameters
        ----------
        target_batch
            A batch name (or give its position with ``batch_index=``).
        adata
            The cells (AnnData, backed AnnData or .h5ad path); ``None`` for the training cells.
        batch_index
            The target batch's position among ``model.batches``.

        Returns
        -------
        numpy.ndarray
            ``(n_cells,)`` booleans.
        """
        self._check_kind("re", ("re",))
        t = batch_position(self.batches, target_batch, batch_index)
        prep = self._prepare(adata)
        st, groups = self._cf_groups(prep)
        own = np.asarray(prep.batch)
        flag = np.zeros(len(own), dtype=bool)
        for s in np.unique(own):
            rows = own == s
            flag[rows] = changes(st["mean"], st["logmean"], st["count"], int(s), t)["extrapolated"][groups[rows]]
        return flag

    def _cf_groups(self, prep, batch_size: int = 4096, fe_latent=None):
        """(statistics, each cell's group) for the "balanced" counterfactual: the cell's label when the model
        has labels and the cell's is known, else the majority group of its FE-latent anchor neighbours.
        ``fe_latent``: the cells' FE latent when already computed."""
        st = self._anchors()
        if "mean" not in st:
            raise ScMEDALError("this model file has no statistics for the 'balanced' counterfactual (it was saved "
                               "by an older version); retrain and save it again, or use method='matched' / "
                               "'reference' (which have no extrapolation flag).")
        fe = self._run("fe", prep, "latent", batch_size=batch_size) if fe_latent is None else fe_latent
        known = None
        if st.get("groups") == "labels" and getattr(prep, "label", None) is not None:
            known = np.asarray(prep.label)
        return st, assign_groups(fe, st["fe"], st["group"], known, centroids=st.get("groups") == "clusters")

    @torch.no_grad()
    def _matched(self, prep, codes, batch_size=4096) -> list[np.ndarray]:
        """Scaled "matched" counterfactuals of ``prep``'s cells, one ``(n, G)`` array per target code.

        For a cell of batch s with RE latent h (RE encoder, own one-hot) and FE latent f:
        ``decode_RE(h + mean_{N_t(f)} h' - mean_{N_s(f)} h', onehot(t))`` where ``N_b(f)`` are the
        ``CF_NEIGHBOURS`` anchors of batch b nearest to f in the batch-invariant FE latent. For t = s
        the shift is exactly zero and the output is the RE reconstruction.
        """
        anchors = self._anchors()
        fe_net, re_net = cast(FE, self.nets["fe"].eval()), cast(RE, self.nets["re"].eval())  # see make_networks
        dev, nb = self.device, len(self.batches)
        a_fe = torch.as_tensor(anchors["fe"], dtype=torch.float32, device=dev)
        a_re = torch.as_tensor(anchors["re"], dtype=torch.float32, device=dev)
        pools = [np.flatnonzero(anchors["batch"] == c) for c in range(nb)]
        missing = [self.batches[c] for c in set(codes) if len(pools[c]) == 0]
        if missing:
            raise ScMEDALError(f"no anchor cells of batch(es) {missing}; retrain the model with cells of those "
                               f"batches, or pass method='reference'.")
        n = prep.X.shape[0]
        outs: list[list[np.ndarray]] = [[] for _ in codes]
        with self._threads():
            for i in range(0, n, batch_size):
                x = torch.as_tensor(np.ascontiguousarray(prep.X[i:i + batch_size]), dtype=torch.float32, device=dev)
                z = torch.as_tensor(np.ascontiguousarray(prep.batch_onehot[i:i + batch_size]), dtype=torch.float32,
                                    device=dev)
                own = np.asarray(prep.batch[i:i + batch_size])
                h = re_net.encoder(x, z)
                f = fe_net.encoder(x)[-1]
                here_own = torch.zeros_like(h)
                for c in np.unique(own):
                    if len(pools[c]) == 0:
                        continue  # such cells only get their own batch (shift 0) or an error above
                    sel = torch.as_tensor(np.flatnonzero(own == c), device=dev)
                    p = torch.as_tensor(pools[c], device=dev)
                    here_own[sel] = _neighbour_mean(f[sel], a_fe[p], a_re[p], CF_NEIGHBOURS)
                for k, t in enumerate(codes):
                    p = torch.as_tensor(pools[t], device=dev)
                    shift = _neighbour_mean(f, a_fe[p], a_re[p], CF_NEIGHBOURS) - here_own
                    shift[torch.as_tensor(own == t, device=dev)] = 0.0
                    zt = torch.zeros(x.shape[0], nb, device=dev)
                    zt[:, t] = 1.0
                    outs[k].append(re_net.decoder(h + shift, zt).float().cpu().numpy())
        G = self.recipe.n_genes
        return [np.concatenate(o).astype(np.float32, copy=False) if o else np.zeros((0, G), np.float32)
                for o in outs]


def _neighbour_mean(query, pool_fe, pool_re, k):
    """Mean ``pool_re`` row over the ``k`` nearest ``pool_fe`` rows (Euclidean) of each query."""
    k = min(int(k), pool_fe.shape[0])
    nn = torch.cdist(query, pool_fe).topk(k, dim=1, largest=False).indices
    return pool_re[nn].mean(1)
