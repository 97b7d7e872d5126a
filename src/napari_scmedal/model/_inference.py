"""Inference: latents, and every *version* of the cells' expression, computed one way.

:class:`Inference` (a mixin of :class:`~napari_scmedal.model.ScMEDAL`) runs the networks over prepared
cells (:meth:`_run`) and computes any set of versions (:mod:`napari_scmedal.versions`: the original,
the FE / FEC / RE reconstructions and counterfactuals into any batches) in :meth:`_versions`, the one
implementation behind :meth:`get_reconstruction`, :meth:`get_counterfactual_expression`,
:meth:`predict_versions` and :meth:`get_version`. Each network runs once per call, whatever the
versions need from it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..errors import ExtrapolationWarning, ScMEDALError
from ..versions import (
    CF_DEFAULT,
    LATENT_KINDS,
    batch_position,
    cf_key,
    check_method,
    check_target_batches,
    check_version,
)
from ._state import _State

__all__ = ["Inference"]


class Inference(_State):
    """The model's inference methods: latents and versions of the cells' expression."""

    def _check_kind(self, kind, allowed):
        """Raise unless ``kind`` is in ``allowed``, the model has that network and it is trained."""
        if kind not in allowed:
            raise ScMEDALError(f"kind={kind!r} is not one of {list(allowed)}.")
        if kind not in self.nets:
            raise ScMEDALError(f"this model has no {kind.upper()} network (FEC needs label_key= with at least "
                               f"two labels).")
        if kind not in self._trained:
            raise ScMEDALError(f"the {kind.upper()} network is not trained yet; call model.train() first "
                               f"(or train again if it was cancelled).")

    @torch.no_grad()
    def _run(self, kind: str, prep, what, z_override: torch.Tensor | None = None, batch_size: int = 4096) -> Any:
        """Network ``kind`` over ``prep``'s cells in minibatches of ``batch_size``, in model space:
        ``what`` = ``"recon"`` or ``"latent"`` gives that output, a tuple of them a dict of each (one
        pass). RE decodes with each cell's own batch, or ``z_override`` (a ``(1, n_batches)`` one-hot)."""
        whats = (what,) if isinstance(what, str) else tuple(what)
        net = self.nets[kind]
        net.eval()
        n = prep.X.shape[0]
        outs: dict[str, list[np.ndarray]] = {w: [] for w in whats}
        with self._threads():
            for i in range(0, n, batch_size):
                x = torch.as_tensor(np.ascontiguousarray(prep.X[i:i + batch_size]), dtype=torch.float32,
                                    device=self.device)
                if kind == "re":
                    if z_override is not None:
                        z = z_override.expand(x.shape[0], -1)
                    else:
                        z = torch.as_tensor(np.ascontiguousarray(prep.batch_onehot[i:i + batch_size]),
                                            dtype=torch.float32, device=self.device)
                    out = net(x, z)
                else:
                    out = net(x)
                for w in whats:
                    outs[w].append(out[w].float().cpu().numpy())
        res = {w: np.concatenate(o).astype(np.float32, copy=False) if o else
               np.zeros((0, self.recipe.n_genes if w == "recon" else int(self.config["latent"])), np.float32)
               for w, o in outs.items()}
        return res[what] if isinstance(what, str) else res

    def _check_version_key(self, version: str, method) -> None:
        """Raise unless ``version`` can be computed: ``"original"``, a trained network's reconstruction, or a
        counterfactual into a known batch whose method's networks are trained (:func:`versions.check_version`)."""
        if version in LATENT_KINDS:
            self._check_kind(version, LATENT_KINDS)  # the model's own wording (no FEC network, not trained)
        elif version != "original":
            check_version(self, version, method)

    def _versions(self, prep, versions, method: str = CF_DEFAULT, *, scaled: bool = False, batch_size: int = 4096,
                  warn_extrapolated: bool = False) -> dict[str, np.ndarray]:
        """Versions of ``prep``'s cells: the one implementation behind every public versions method.

        Parameters
        ----------
        prep
            Prepared cells (``self._prepare_rows(adata, rows)``).
        versions
            Keys: ``"original"``, ``"fe"``, ``"fec"``, ``"re"``, ``"cf:<batch>"`` (any batches).
        method
            The counterfactual method (:data:`~napari_scmedal.versions.CF_METHODS`).
        scaled
            Model space instead of log1p units.
        batch_size
            Cells per network pass.
        warn_extrapolated
            Emit the "balanced" method's :class:`~napari_scmedal.errors.ExtrapolationWarning` for
            counterfactuals borrowed from other cell types.

        Returns
        -------
        dict
            ``{version: (n_cells, n_genes) float32}`` in the order asked. Each network runs once: the RE
            reconstruction is the "balanced" counterfactuals' base, one FE pass gives its reconstruction
            and the latent that assigns the cells' groups.
        """
        versions = list(dict.fromkeys(str(v) for v in versions))
        cfs = [v for v in versions if v.startswith("cf:")]
        if cfs:
            method = self._check_method(method)  # may fall back for old files: check the networks it needs
        for v in versions:
            self._check_version_key(v, method)
        kinds = [v for v in versions if v in LATENT_KINDS]
        balanced = bool(cfs) and method == "balanced"
        outputs = {}
        for k in kinds:
            whats = ("recon", "latent") if k == "fe" and balanced else ("recon",)
            outputs.update({(k, w): x for w, x in self._run(k, prep, whats, batch_size=batch_size).items()})
        out = {}
        if "original" in versions:
            x = np.asarray(prep.X_log, dtype=np.float32)
            out["original"] = self.recipe.scale(x) if scaled else x
        for k in kinds:
            rec = outputs[(k, "recon")]
            out[k] = rec if scaled else self.recipe.unscale(rec).astype(np.float32, copy=False)
        if cfs:
            reused = {key: outputs[key] for key in (("re", "recon"), ("fe", "latent")) if key in outputs}
            del outputs
            codes = [batch_position(self.batches, v[3:]) for v in cfs]
            arrays, flags = self._counterfactuals(prep, codes, method, scaled=scaled, batch_size=batch_size,
                                                  outputs=reused)
            out.update(zip(cfs, arrays))
            for code, flag in zip(codes, flags if warn_extrapolated and flags is not None else []):
                if flag.any():
                    warnings.warn(_extrapolated(int(flag.sum()), len(flag), self.batches[code]),
                                  ExtrapolationWarning, stacklevel=3)
        return {v: out[v] for v in versions}

    # ------------------------------------------------------------------ public
    def get_latent_representation(self, kind: str = "fe", adata=None, rows=None) -> np.ndarray:
        """Latent representation of the cells.

        Parameters
        ----------
        kind
            ``"fe"``, ``"fec"`` or ``"re"``.
        adata
            The training cells (``None``) or another AnnData aligned through the recipe (also a path or a
            backed AnnData: read block by block).
        rows
            ``(start, stop)``: only those cells (positions), reading only them from on-disk data.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, latent)`` float32.
        """
        self._check_kind(kind, LATENT_KINDS)
        return self._run(kind, self._prepare_rows(adata, rows), "latent")

    def get_reconstruction(self, kind: str = "fe", adata=None, scaled: bool = False, rows=None) -> np.ndarray:
        """Reconstruction of the cells' expression by one network (RE uses each cell's own batch).

        Parameters
        ----------
        kind
            ``"fe"``, ``"fec"`` or ``"re"``.
        adata
            The training cells (``None``), an AnnData, a backed AnnData or an .h5ad path.
        scaled
            Model space instead of log1p-normalised units.
        rows
            ``(start, stop)``: only those cells (positions), reading only them from on-disk data.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, n_genes)`` float32.
        """
        self._check_kind(kind, LATENT_KINDS)
        return self._versions(self._prepare_rows(adata, rows), [kind], scaled=scaled)[kind]

    def get_counterfactual_expression(self, target_batch=None, adata=None, scaled: bool = False,
                                      batch_size: int = 4096, method: str = CF_DEFAULT, *,
                                      batch_index: int | None = None, rows=None) -> np.ndarray:
        """Each cell's expression as if acquired in ``target_batch``.

        For a cell's own batch the result is its RE reconstruction.

        Parameters
        ----------
        target_batch
            A batch name (or give its position with ``batch_index=``).
        adata
            The training cells (``None``), an AnnData, a backed AnnData or an .h5ad path.
        scaled
            Model space instead of log1p units.
        batch_size
            Cells per network pass.
        method
            ``"balanced"`` (default, :mod:`napari_scmedal.counterfactual`): the cell's RE reconstruction
            changed by its cell type's own batch change where the type has training cells in both batches,
            else by the change averaged over the other types (an
            :class:`~napari_scmedal.errors.ExtrapolationWarning` says how many cells;
            :meth:`counterfactual_extrapolated` flags them). ``"matched"``: the cell's RE latent is shifted
            by the difference between the mean RE latents of its nearest neighbours in the batch-invariant
            FE latent among the target batch's and its own batch's training cells, then decoded with the
            target batch's random effects. ``"reference"``: METHOD.md literally, the whole RE autoencoder
            with the one-hot replaced by the target batch (overshoots: see docs/model.md,
            "Counterfactuals").
        batch_index
            The target batch's position among ``model.batches``.
        rows
            ``(start, stop)``: only those cells (positions), reading only them from on-disk data.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, n_genes)`` float32.
        """
        key = cf_key(self.batches[batch_position(self.batches, target_batch, batch_index)])
        return self._versions(self._prepare_rows(adata, rows), [key], method, scaled=scaled,
                              batch_size=int(batch_size), warn_extrapolated=True)[key]

    def predict_versions(self, adata=None, batches=None, method: str = CF_DEFAULT, rows=None) -> dict:
        """Every version of the cells at once (preprocessing done once, each network run once).

        Parameters
        ----------
        adata
            The training cells (``None``), an AnnData, a backed AnnData or an .h5ad path.
        batches
            Target batches of the counterfactuals (names); ``None``: none.
        method
            The counterfactual method, as in :meth:`get_counterfactual_expression` (same default).
        rows
            ``(start, stop)``: only those cells (positions), reading only them from on-disk data (the
            building block of lazy genomap stacks over every cell).

        Returns
        -------
        dict
            ``{"original": X_log, "fe": FE recon, "re": RE recon, "batch": codes, "cf:<b>": counterfactual
            to batch b for each b in batches}``; expression in log1p units, ``(n_cells, n_genes)`` each.
        """
        check_method(method)  # also when no counterfactual is asked
        requested = [] if batches is None else [batches] if isinstance(batches, str) else list(batches)
        names = check_target_batches(self.batches, requested, "target batch(es)") if requested else []
        prep = self._prepare_rows(adata, rows)
        v = self._versions(prep, ["original", "fe", "re", *map(cf_key, names)], method)
        return {"original": v.pop("original"), "fe": v.pop("fe"), "re": v.pop("re"), "batch": np.asarray(prep.batch),
                **v}

    def get_version(self, version: str, adata=None, rows=None, method: str = CF_DEFAULT) -> np.ndarray:
        """One version of the cells.

        Parameters
        ----------
        version
            ``"original"`` (the preprocessed input), ``"fe"`` / ``"fec"`` / ``"re"`` (reconstructions) or
            ``"cf:<batch>"`` (the counterfactual to that batch).
        adata
            The training cells (``None``), an AnnData, a backed AnnData or an .h5ad path.
        rows
            ``(start, stop)``: only those cells (positions), reading only them from on-disk data.
        method
            The counterfactual method, as in :meth:`get_counterfactual_expression`.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, n_genes)`` float32 in log1p units.
        """
        version = str(version)
        return self._versions(self._prepare_rows(adata, rows), [version], method)[version]


def _extrapolated(n_ex: int, n: int, batch: str) -> str:
    return (f"{n_ex} of {n} cells belong to cell types with too few training cells in batch {batch!r} (or in their "
            f"own batch): their counterfactual is extrapolated from the other types' batch change. "
            f"model.counterfactual_extrapolated({batch!r}, adata) flags them.")
