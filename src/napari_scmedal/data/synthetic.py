"""Seeded synthetic single-cell counts with a known cell-type structure and batch effect.

Generative model (all randomness from ``numpy.random.default_rng(seed)``):

* ``n_labels`` cell types. Genes are split into ``n_labels`` contiguous *programme* blocks of
  ``programme_size`` genes each (block ``k`` = genes ``k*programme_size ... (k+1)*programme_size-1``);
  the remaining genes are background. Every gene has a base mean ``mu_g ~ LogNormal(log(base_mean), 0.5)``;
  cells of type ``k`` multiply the means of block ``k`` by ``programme_fold`` (co-expressed genes).
* ``n_batches`` batches. Each batch ``b`` has a known multiplicative effect per gene,
  ``batch_effect[b, g] = exp(N(0, batch_strength^2))`` (batch 0 is *not* special), and each cell has a
  library-size factor ``~ LogNormal(0, library_sd)`` times a per-batch depth factor
  ``batch_depth[b]``.
* Counts are negative binomial through a Poisson-gamma mixture with dispersion ``1/theta``:
  ``lambda ~ Gamma(theta, mean / theta)``, ``count ~ Poisson(lambda)``.

The truth is stored in the result so tests can check that a model removes or recovers it:
``uns["synthetic"]`` holds the parameters, ``varm["batch_effect"]`` (genes x batches, the
multiplicative effect), ``var["programme"]`` (cell-type index of a gene's block or -1), and
``obs["library_size"]``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def make_synthetic(
    n_cells: int = 600,
    n_genes: int = 300,
    n_batches: int = 3,
    n_labels: int = 3,
    seed: int = 0,
    *,
    batch_strength: float = 0.5,
    programme_size: int | None = None,
    programme_fold: float = 6.0,
    base_mean: float = 1.0,
    theta: float = 5.0,
    library_sd: float = 0.3,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    sparse: bool = True,
) -> ad.AnnData:
    """Return an AnnData of raw integer counts (float32, CSR unless ``sparse=False``).

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_labels
        Shape and number of categories. Cells are assigned to batches and labels uniformly at
        random with every batch x label combination present (round-robin before shuffling).
    seed
        Seed of the generator; equal arguments give identical data.
    batch_strength
        Standard deviation of the log multiplicative batch effect per gene (0 = no batch effect).
    programme_size
        Genes per cell-type programme block (default ``n_genes // (2 * n_labels)``, at least 1).
    programme_fold
        Fold increase of a programme's genes in its cell type.
    base_mean
        Typical mean count per gene before library-size scaling.
    theta
        Negative-binomial inverse dispersion (larger = closer to Poisson).
    library_sd
        Standard deviation of the log library-size factor per cell.
    batch_key, label_key
        obs column names (``"batch"`` and ``"cell_type"`` by default). Categories are
        ``"batch0", "batch1", ...`` and ``"type0", "type1", ...``.
    """
    if n_cells < 1 or n_genes < 1 or n_batches < 1 or n_labels < 1:
        raise ValueError("n_cells, n_genes, n_batches and n_labels must all be >= 1")
    rng = np.random.default_rng(seed)
    if programme_size is None:
        programme_size = max(1, n_genes // (2 * n_labels))
    if programme_size * n_labels > n_genes:
        raise ValueError(
            f"programme_size * n_labels = {programme_size * n_labels} exceeds n_genes = {n_genes}; "
            "lower programme_size or raise n_genes"
        )

    # cell assignments: every (batch, label) pair appears, then shuffled
    combos = np.arange(n_cells) % (n_batches * n_labels)
    rng.shuffle(combos)
    batch = combos // n_labels
    label = combos % n_labels

    # gene parameters
    mu = rng.lognormal(np.log(base_mean), 0.5, size=n_genes)
    programme = np.full(n_genes, -1, dtype=np.int64)
    for k in range(n_labels):
        programme[k * programme_size:(k + 1) * programme_size] = k
    type_factor = np.ones((n_labels, n_genes))
    for k in range(n_labels):
        type_factor[k, programme == k] = programme_fold
    batch_effect = np.exp(rng.normal(0.0, batch_strength, size=(n_batches, n_genes)))
    batch_depth = np.exp(rng.normal(0.0, batch_strength / 2, size=n_batches))
    library = rng.lognormal(0.0, library_sd, size=n_cells) * batch_depth[batch]

    mean = library[:, None] * mu[None, :] * type_factor[label] * batch_effect[batch]
    lam = rng.gamma(shape=theta, scale=mean / theta)
    counts = rng.poisson(lam).astype(np.float32)

    obs = pd.DataFrame(
        {
            batch_key: pd.Categorical([f"batch{b}" for b in batch],
                                      categories=[f"batch{b}" for b in range(n_batches)]),
            label_key: pd.Categorical([f"type{k}" for k in label],
                                      categories=[f"type{k}" for k in range(n_labels)]),
            "library_size": library.astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"programme": programme}, index=[f"gene{g}" for g in range(n_genes)])
    adata = ad.AnnData(X=sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)
    adata.varm["batch_effect"] = batch_effect.T.astype(np.float32)
    adata.uns["synthetic"] = {
        "seed": int(seed),
        "n_batches": int(n_batches),
        "n_labels": int(n_labels),
        "batch_strength": float(batch_strength),
        "programme_size": int(programme_size),
        "programme_fold": float(programme_fold),
        "base_mean": float(base_mean),
        "theta": float(theta),
        "library_sd": float(library_sd),
        "batch_depth": batch_depth.astype(np.float64),
    }
    return adata


__all__ = ["make_synthetic"]
