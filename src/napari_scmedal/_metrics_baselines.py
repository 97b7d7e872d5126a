"""Baseline latents scored next to FE, FEC and RE: PCA and Harmony on the model's own input.

* :func:`pca_latent` -- principal components of log1p-normalised expression (scikit-learn PCA, centred,
  not scaled, seeded).
* :func:`harmony_latent` -- Harmony (Korsunsky et al. 2019, the ``harmonypy`` package from the
  ``harmony`` extra) on a PCA, batches as the covariate.
* :func:`baseline_latents` -- both for every cell of a model's training AnnData, computed on exactly
  the rows the model sees (the recipe's genes and normalisation: ``Prepared.X_log``).

Public through :mod:`napari_scmedal.metrics`.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

#: The baselines :func:`baseline_latents` knows, in display order.
BASELINES = ("pca", "harmony")
HARMONY_MISSING = ("the Harmony baseline needs the optional package harmonypy, which is not installed. Install it "
                   "with: pip install \"napari-scmedal[harmony]\" (or pip install harmonypy), or leave \"harmony\" "
                   "out of baselines=.")


def check_baselines(kinds) -> tuple[str, ...]:
    """``kinds`` (a name, comma-separated names or a sequence) as a tuple of known baseline names, in order,
    without repeats; raises :class:`DataError` for an unknown one and for a missing ``harmonypy`` when
    ``"harmony"`` is asked for (before any work is done)."""
    if kinds is None:
        return ()
    if isinstance(kinds, str):
        kinds = [k for k in kinds.split(",")]
    out = tuple(dict.fromkeys(str(k).strip().lower() for k in kinds if str(k).strip()))
    bad = [k for k in out if k not in BASELINES]
    if bad:
        raise DataError(f"unknown baseline(s) {bad}; choose from {list(BASELINES)}.")
    if "harmony" in out:
        _import_harmonypy()
    return out


def _import_harmonypy():
    try:
        import harmonypy
    except ImportError as exc:
        raise DataError(HARMONY_MISSING) from exc
    return harmonypy


def pca_latent(X_log, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """``(n_cells, n_comps)`` principal-component scores of ``X_log`` (cells x genes, log1p-normalised),
    centred and not scaled, like scanpy's ``pp.pca`` on log-normalised data. ``n_comps`` is capped at
    ``min(n_cells, n_genes) - 1``."""
    from sklearn.decomposition import PCA

    x = np.asarray(X_log, dtype=np.float32)
    if x.ndim != 2 or min(x.shape) < 2:
        raise DataError(f"PCA needs a cells x genes matrix with at least 2 of each; got shape {x.shape}.")
    k = int(max(1, min(int(n_comps), min(x.shape) - 1)))
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)


def harmony_latent(pcs, batch, seed: int = 0) -> np.ndarray:
    """Harmony-corrected ``pcs`` (n_cells, n_comps), with ``batch`` (n_cells,) as the covariate
    (harmonypy's defaults; seeded). Raises :class:`DataError` naming the extra to install when
    harmonypy is missing."""
    import pandas as pd

    hp = _import_harmonypy()
    pcs = np.asarray(pcs, dtype=np.float64)
    batch = np.asarray(batch).astype(str)
    if pcs.ndim != 2 or pcs.shape[0] != batch.shape[0]:
        raise DataError(f"pcs has shape {pcs.shape} but batch has {batch.shape[0]} entries; pass one batch per row.")
    if len(np.unique(batch)) < 2:
        raise DataError("Harmony needs at least two batches to correct.")
    meta = pd.DataFrame({"batch": batch})
    z = np.asarray(hp.run_harmony(pcs, meta, ["batch"], verbose=False, random_state=seed).Z_corr)
    if z.shape != pcs.shape:  # harmonypy < 2 returns components x cells
        z = z.T
    return z.astype(np.float32)


def _x_log(prep, block: int = 8192) -> np.ndarray:
    """All rows of ``prep.X_log`` (an in-memory :class:`Prepared` or a lazy on-disk one, read in blocks)."""
    if isinstance(prep.X_log, np.ndarray):
        return prep.X_log
    n = prep.n_obs
    return np.concatenate([np.asarray(prep.X_log[a:min(a + block, n)]) for a in range(0, n, block)])


def baseline_latents(model, adata=None, kinds=BASELINES, n_comps: int | None = None,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Baseline latents of every cell of ``model``'s training data, computed on the model's own input.

    Parameters
    ----------
    model : ScMEDAL
        A trained or loaded model; its recipe fixes the genes and the log1p normalisation.
    adata : AnnData, optional
        The AnnData the model was trained on (needed for a loaded model), or another one to
        compute baselines on; rows are in its order, like ``model.get_latent_representation``.
    kinds : sequence of {"pca", "harmony"} or str
        Which baselines; ``"harmony"`` runs Harmony on the PCA with the model's ``batch_key``.
    n_comps : int, optional
        Principal components (and Harmony dimensions); default the model's latent size.
    seed : int
        Seeds PCA's solver and Harmony's clustering.

    Returns
    -------
    dict
        ``{kind: (n_cells, n_comps) float32}``.

    Raises
    ------
    DataError
        For an unknown kind, or ``"harmony"`` without the ``harmonypy`` package (the message says to
        install ``napari-scmedal[harmony]``).
    """
    kinds = check_baselines(kinds)
    if not kinds:
        return {}
    if n_comps is None:
        n_comps = int(model.config.get("latent", 50))
    prep = model._prepare(model._training_adata(adata))
    pcs = pca_latent(_x_log(prep), n_comps, seed)
    out = {"pca": pcs}
    if "harmony" in kinds:
        out["harmony"] = harmony_latent(pcs, np.asarray(prep.batch), seed)
    return {k: out[k] for k in kinds}
