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
* Optional (:func:`make_synthetic` only; both off by default, and then nothing changes):
  ``interaction_strength`` adds a cell-type-specific batch effect, an extra multiplicative factor
  ``interaction[b, k, g] = exp(N(0, interaction_strength^2))`` on the mean of type ``k`` in batch ``b``;
  ``dropout`` zeroes each drawn count with probability ``dropout_level[b] * exp(-mean / dropout_scale)``
  (``mean`` = that entry's expected count, so lowly expressed genes drop out more), where
  ``dropout_level[b] = min(1, dropout * exp(N(0, DROPOUT_BATCH_SD^2)))`` lets the batch change the
  sparsity too. Both are drawn from their own seeded streams, so the other draws do not change.

The truth is stored in the result so tests can check that a model removes or recovers it:
``uns["synthetic"]`` holds the parameters, ``varm["batch_effect"]`` (genes x batches, the
multiplicative effect), ``var["programme"]`` (cell-type index of a gene's block or -1), and
``obs["library_size"]``. :func:`make_synthetic` also stores ``varm["type_mean"]`` (genes x types,
``mu * programme factor``), ``varm["interaction"]`` (genes x (batches * types), column ``b * n_labels + k``)
and, in ``uns["synthetic"]``, ``interaction_strength``, ``dropout``, ``dropout_scale``, ``dropout_level``
(per batch), ``batch_key`` and ``label_key``: with them
:func:`~napari_scmedal.data.synthetic_truth.synthetic_expected_log` computes each cell's expected
log1p-normalised expression as if measured in any batch (the exact counterfactual truth).

:func:`make_synthetic` builds the whole matrix in memory. :func:`write_synthetic_h5ad` streams the
same model straight into an ``.h5ad`` file (CSR ``X``) for data sets larger than memory, e.g. the
500,000-cell benchmark file of ``benchmarks/make_big_h5ad.py``; see its docstring for how it samples.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import atomic_output

#: Cells per independent random stream in :func:`write_synthetic_h5ad` (the values do not depend on
#: ``chunk_cells`` because every block of this many cells has its own seeded stream).
RNG_BLOCK_CELLS = 256
#: Entries whose NB mean exceeds this are sampled by Poisson-gamma instead of the survival walk.
_DIRECT_MEAN = 20.0
#: Standard deviation of the log per-batch dropout level around ``dropout`` (make_synthetic).
DROPOUT_BATCH_SD = 0.5
#: Spawn keys of the extra random streams of make_synthetic (interactions, dropout); far from the block
#: indices write_synthetic_h5ad uses, so no stream is shared.
_INTERACTION_STREAM = 2**31 + 1
_DROPOUT_STREAM = 2**31 + 2


def _draw_truth(rng, n_cells, n_genes, n_batches, n_labels, *, batch_strength, programme_size,
                programme_fold, base_mean, library_sd) -> dict:
    """Cell assignments and the known gene / batch / library parameters (the draws of make_synthetic)."""
    if n_cells < 1 or n_genes < 1 or n_batches < 1 or n_labels < 1:
        raise ValueError("n_cells, n_genes, n_batches and n_labels must all be >= 1")
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
    return {"combos": combos, "batch": batch, "label": label, "mu": mu, "programme": programme,
                "type_factor": type_factor, "batch_effect": batch_effect, "batch_depth": batch_depth,
                "library": library, "programme_size": programme_size}


def _annotations(t: dict, n_batches, n_labels, batch_key, label_key):
    """obs and var DataFrames of the truth ``t``."""
    n_cells, n_genes = len(t["batch"]), len(t["mu"])
    obs = pd.DataFrame(
        {
            batch_key: pd.Categorical.from_codes(t["batch"], categories=[f"batch{b}" for b in range(n_batches)]),
            label_key: pd.Categorical.from_codes(t["label"], categories=[f"type{k}" for k in range(n_labels)]),
            "library_size": t["library"].astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"programme": t["programme"]}, index=[f"gene{g}" for g in range(n_genes)])
    return obs, var


def _uns(t: dict, seed, n_batches, n_labels, batch_strength, programme_fold, base_mean, theta, library_sd):
    return {
        "seed": int(seed),
        "n_batches": int(n_batches),
        "n_labels": int(n_labels),
        "batch_strength": float(batch_strength),
        "programme_size": int(t["programme_size"]),
        "programme_fold": float(programme_fold),
        "base_mean": float(base_mean),
        "theta": float(theta),
        "library_sd": float(library_sd),
        "batch_depth": t["batch_depth"].astype(np.float64),
    }


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
    interaction_strength: float = 0.0,
    dropout: float = 0.0,
    dropout_scale: float = 1.0,
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
    interaction_strength
        Standard deviation of the log cell-type-specific batch effect per (batch, type, gene)
        (0 = none: every type sees the same batch effect).
    dropout, dropout_scale
        Dropout-like extra zeros: each count is zeroed with probability
        ``dropout_level[b] * exp(-mean / dropout_scale)`` (0 = none; see the module docstring).
    """
    if interaction_strength < 0 or not 0 <= dropout <= 1 or dropout_scale <= 0:
        raise ValueError(f"need interaction_strength >= 0, 0 <= dropout <= 1 and dropout_scale > 0 (got "
                         f"{interaction_strength}, {dropout}, {dropout_scale})")
    rng = np.random.default_rng(seed)
    t = _draw_truth(rng, n_cells, n_genes, n_batches, n_labels, batch_strength=batch_strength,
                    programme_size=programme_size, programme_fold=programme_fold,
                    base_mean=base_mean, library_sd=library_sd)
    irng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_INTERACTION_STREAM,)))
    interaction = np.exp(irng.normal(0.0, interaction_strength, size=(n_batches, n_labels, n_genes)))
    drng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_DROPOUT_STREAM,)))
    dropout_level = np.minimum(1.0, dropout * np.exp(drng.normal(0.0, DROPOUT_BATCH_SD, size=n_batches)))
    mean = (t["library"][:, None] * t["mu"][None, :] * t["type_factor"][t["label"]]
            * t["batch_effect"][t["batch"]])
    if interaction_strength > 0:
        mean = mean * interaction[t["batch"], t["label"]]
    lam = rng.gamma(shape=theta, scale=mean / theta)
    counts = rng.poisson(lam).astype(np.float32)
    if dropout > 0:
        p_drop = dropout_level[t["batch"]][:, None] * np.exp(-mean / dropout_scale)
        counts[drng.random(counts.shape) < p_drop] = 0.0

    obs, var = _annotations(t, n_batches, n_labels, batch_key, label_key)
    adata = ad.AnnData(X=sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)
    adata.varm["batch_effect"] = t["batch_effect"].T.astype(np.float32)
    adata.uns["synthetic"] = _uns(t, seed, n_batches, n_labels, batch_strength, programme_fold,
                                  base_mean, theta, library_sd)
    # truth for synthetic_expected_log (new keys only: the entries above are unchanged)
    adata.varm["type_mean"] = (t["mu"][None, :] * t["type_factor"]).T.copy()
    adata.varm["interaction"] = interaction.reshape(n_batches * n_labels, n_genes).T.copy()
    adata.uns["synthetic"].update(
        interaction_strength=float(interaction_strength), dropout=float(dropout),
        dropout_scale=float(dropout_scale), dropout_level=dropout_level.astype(np.float64),
        batch_key=str(batch_key), label_key=str(label_key), generator="make_synthetic")
    return adata


def _sample_nb_rows(rng, mean: np.ndarray, theta: float):
    """Negative-binomial counts NB(mean, theta) for a dense block of means, returned sparse.

    Exact inverse-CDF sampling with one uniform ``v`` per entry on the survival function
    ``S(k) = P(X > k)``: the count is the smallest ``k`` with ``S(k) <= v``. Since
    ``P(X > 0) <= E[X] = mean`` (Markov), an entry with ``v >= mean`` is zero without evaluating
    anything, so only ~the non-zero fraction of entries costs more than a uniform and a comparison.
    Entries with a large mean (> ``_DIRECT_MEAN``; rare) use the Poisson-gamma mixture instead.
    Returns ``(rows, cols, counts)`` sorted by row then column.
    """
    v = rng.random(mean.shape)
    big = mean > _DIRECT_MEAN
    rows, cols = np.nonzero((v < mean) & ~big)
    m = mean[rows, cols]
    vv = v[rows, cols]
    log_q = np.log(m) - np.log(theta + m)              # q = m / (theta + m)
    log_pmf = theta * np.log(theta / (theta + m))      # log P(X = 0)
    surv = -np.expm1(log_pmf)                          # P(X > 0)
    keep = vv < surv
    rows, cols, vv, log_q, log_pmf, surv = (a[keep] for a in (rows, cols, vv, log_q, log_pmf, surv))
    counts = np.ones(rows.size, dtype=np.float32)
    active = np.arange(rows.size)
    k = 0
    while active.size:
        k += 1
        log_pmf = log_pmf + np.log((k - 1 + theta) / k) + log_q   # log P(X = k)
        surv = surv - np.exp(log_pmf)                             # P(X > k)
        more = vv < surv
        active, vv, log_q, log_pmf, surv = (a[more] for a in (active, vv, log_q, log_pmf, surv))
        counts[active] = k + 1
    if big.any():
        br, bc = np.nonzero(big)
        bm = mean[br, bc]
        bx = rng.poisson(rng.gamma(shape=theta, scale=bm / theta)).astype(np.float32)
        nz = bx > 0
        rows = np.concatenate([rows, br[nz]])
        cols = np.concatenate([cols, bc[nz]])
        counts = np.concatenate([counts, bx[nz]])
        order = np.lexsort((cols, rows))
        rows, cols, counts = rows[order], cols[order], counts[order]
    return rows, cols, counts


def write_synthetic_h5ad(
    path,
    n_cells: int = 500_000,
    n_genes: int = 2916,
    n_batches: int = 19,
    n_labels: int = 8,
    seed: int = 0,
    *,
    chunk_cells: int = 20_000,
    batch_strength: float = 0.5,
    programme_size: int | None = None,
    programme_fold: float = 6.0,
    base_mean: float = 0.04,
    theta: float = 5.0,
    library_sd: float = 0.3,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> Path:
    """Stream a synthetic count matrix of the :func:`make_synthetic` model into an ``.h5ad`` file.

    ``X`` is written in anndata's on-disk CSR encoding (integer counts stored as float32; ``indices``
    and ``indptr`` int32 when ``n_cells * n_genes`` fits int32, else both int64), chunk by chunk, so
    memory is bounded by ``chunk_cells`` (plus the O(n_cells) obs table), never by the matrix.
    ``obs``, ``var``, ``varm["batch_effect"]`` and ``uns["synthetic"]`` are written with
    ``anndata.io.write_elem`` and carry the same truth as :func:`make_synthetic`: with equal
    arguments the obs, var and varm are identical to it. Both ``anndata.read_h5ad(path)`` and
    ``anndata.read_h5ad(path, backed="r")`` read the result.

    Counts follow the same negative-binomial model (mean ``library * mu * programme * batch_effect``,
    inverse dispersion ``theta``), but they are sampled by an exact inverse-CDF method that only does
    work for the non-zero entries (see ``_sample_nb_rows``), so the values differ from
    :func:`make_synthetic`'s Poisson-gamma draws while the distribution is the same. Every block of
    :data:`RNG_BLOCK_CELLS` cells has its own random stream derived from ``seed``: the file's values
    are the same for any ``chunk_cells``.

    The default ``base_mean`` (0.04) gives about 7% non-zero entries, a typical UMI sparsity.

    Parameters
    ----------
    path
        Target ``.h5ad`` file. It is written to a temporary file in the same folder and moved into
        place only when complete; a failure leaves no file at ``path`` (and an existing one untouched).
    chunk_cells
        Cells generated and appended per write.
    overwrite
        Replace an existing ``path``; otherwise an existing file raises ``FileExistsError``.
    progress
        Optional callable receiving ``{"cells_written", "n_cells", "nnz", "elapsed_s"}`` after each
        chunk; an exception raised in it aborts the write (no file is left at ``path``).
    Other parameters are those of :func:`make_synthetic`.
    """
    import h5py
    from anndata.io import write_elem

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists and write_synthetic_h5ad does not overwrite files unless asked; "
            "pass overwrite=True (CLI: --overwrite) or choose another path"
        )
    if chunk_cells < 1:
        raise ValueError(f"chunk_cells must be >= 1, got {chunk_cells}")
    if theta <= 0 or base_mean <= 0:
        raise ValueError(f"theta and base_mean must be > 0, got theta={theta}, base_mean={base_mean}")

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    t = _draw_truth(rng, n_cells, n_genes, n_batches, n_labels, batch_strength=batch_strength,
                    programme_size=programme_size, programme_fold=programme_fold,
                    base_mean=base_mean, library_sd=library_sd)
    # per (batch, label) combination: mu * programme factor * batch effect; combos = batch * n_labels + label
    combo_means = (t["mu"][None, None, :] * t["type_factor"][None, :, :]
                   * t["batch_effect"][:, None, :]).reshape(n_batches * n_labels, n_genes)
    combos, library = t["combos"], t["library"]

    obs, var = _annotations(t, n_batches, n_labels, batch_key, label_key)
    uns = {"synthetic": {**_uns(t, seed, n_batches, n_labels, batch_strength, programme_fold,
                                base_mean, theta, library_sd),
                         "generator": "write_synthetic_h5ad", "rng_block_cells": RNG_BLOCK_CELLS}}

    with atomic_output(path) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a plain data file (the temporary file is created 0600)
        with h5py.File(tmp, "w") as f:
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            write_elem(f, "obs", obs)
            write_elem(f, "var", var)
            write_elem(f, "varm", {"batch_effect": t["batch_effect"].T.astype(np.float32)})
            write_elem(f, "uns", uns)
            for key in ("obsm", "obsp", "varp", "layers"):
                write_elem(f, key, {})
            del obs

            X = f.create_group("X")
            X.attrs["encoding-type"] = "csr_matrix"
            X.attrs["encoding-version"] = "0.1.0"
            X.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
            chunk = 1 << 18
            data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,))
            # scipy needs indices and indptr of one dtype: int32 when every possible nnz fits it
            index_dtype = np.int32 if n_cells * n_genes <= np.iinfo(np.int32).max else np.int64
            indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=index_dtype, chunks=(chunk,))
            indptr = X.create_dataset("indptr", shape=(n_cells + 1,), dtype=index_dtype)
            indptr[0] = 0

            nnz = 0
            start = 0
            n_blocks = -(-n_cells // RNG_BLOCK_CELLS)
            buf_counts, buf_cols, buf_rowlen = [], [], []
            buffered = 0
            for block in range(n_blocks):
                lo, hi = block * RNG_BLOCK_CELLS, min(n_cells, (block + 1) * RNG_BLOCK_CELLS)
                brng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
                mean = combo_means[combos[lo:hi]] * library[lo:hi, None]
                rows, cols, counts = _sample_nb_rows(brng, mean, theta)
                buf_counts.append(counts)
                buf_cols.append(cols.astype(index_dtype))
                buf_rowlen.append(np.bincount(rows, minlength=hi - lo))
                buffered += hi - lo
                if buffered >= chunk_cells or hi == n_cells:
                    cnt = np.concatenate(buf_counts)
                    col = np.concatenate(buf_cols)
                    ptr = nnz + np.cumsum(np.concatenate(buf_rowlen))
                    data.resize((nnz + cnt.size,))
                    indices.resize((nnz + cnt.size,))
                    data[nnz:] = cnt
                    indices[nnz:] = col
                    indptr[start + 1:start + buffered + 1] = ptr
                    nnz += cnt.size
                    start += buffered
                    buf_counts, buf_cols, buf_rowlen, buffered = [], [], [], 0
                    if progress is not None:
                        progress({"cells_written": start, "n_cells": n_cells, "nnz": nnz,
                                  "elapsed_s": time.perf_counter() - t0})
    return path


from .synthetic_truth import synthetic_expected_log  # noqa: E402  (no cycle: it does not import this module)

__all__ = ["RNG_BLOCK_CELLS", "DROPOUT_BATCH_SD", "make_synthetic", "synthetic_expected_log",
           "write_synthetic_h5ad"]
