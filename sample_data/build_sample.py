"""Rebuild the bundled sample data from the full CellBench file.

Usage (from the repository root)::

    .venv/bin/python sample_data/build_sample.py [SOURCE.h5ad] [OUT.h5ad]

Defaults: SOURCE = ../shared/data/cellbench_5batches.h5ad (1,408 cells x 11,533 genes, raw UMI
counts), OUT = src/napari_scmedal/sample_data/cellbench_sample.h5ad.

What it does (deterministic; see sample_data/README.md for provenance and licence):

1. read the full file (read-only);
2. on a log-normalised copy (normalize_total 1e4, log1p) of *all* genes, rank genes with scanpy's
   ``highly_variable_genes(flavor="seurat")`` and keep the ``N_GENES`` most variable ones
   (ties broken by the original gene order), in the original gene order;
3. keep every cell and the *raw integer counts* of those genes (float32 CSR);
4. compute PCA (50 components, arpack, seed 0) and UMAP (15 neighbours, seed 0) on the
   log-normalised HVG subset, store them in ``obsm["X_pca"]`` / ``obsm["X_umap"]`` so a viewer
   opens with a layout;
5. write a gzip-compressed h5ad.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

N_GENES = 3500
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cellbench_5batches.h5ad"
DEFAULT_OUT = REPO / "src" / "napari_scmedal" / "sample_data" / "cellbench_sample.h5ad"
OBS_KEYS = ["batch", "protocol", "cell_line", "demuxlet_cls"]


def build(source: Path = DEFAULT_SOURCE, out: Path = DEFAULT_OUT, n_genes: int = N_GENES) -> ad.AnnData:
    full = ad.read_h5ad(source)  # in memory; the source is only read
    counts = sp.csr_matrix(full.X, dtype=np.float32)
    if not np.array_equal(counts.data, np.round(counts.data)):
        raise ValueError(f"{source} does not hold integer counts in X")

    # 1) rank genes by seurat-flavour dispersion on the log-normalised full matrix
    lognorm = ad.AnnData(X=counts.copy(), obs=pd.DataFrame(index=full.obs_names),
                         var=pd.DataFrame(index=full.var_names))
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, flavor="seurat", n_top_genes=n_genes)
    keep = np.flatnonzero(lognorm.var["highly_variable"].to_numpy())
    if keep.size != n_genes:
        raise RuntimeError(f"expected {n_genes} HVGs, got {keep.size}")

    # 2) the compact AnnData: raw counts of the kept genes, all cells
    obs = full.obs[OBS_KEYS].copy()
    for key in OBS_KEYS:
        obs[key] = obs[key].astype(str).astype("category")
    var = full.var[["gene_ids"]].iloc[keep].copy()
    var["gene_ids"] = var["gene_ids"].astype(str)
    X = counts[:, keep].tocsr()
    X.sort_indices()
    sample = ad.AnnData(X=X, obs=obs, var=var)

    # 3) embeddings on the log-normalised subset
    emb = sample.copy()
    sc.pp.normalize_total(emb, target_sum=1e4)
    sc.pp.log1p(emb)
    sc.pp.pca(emb, n_comps=50, svd_solver="arpack", random_state=0)
    sc.pp.neighbors(emb, n_neighbors=15, random_state=0)
    sc.tl.umap(emb, random_state=0)
    sample.obsm["X_pca"] = emb.obsm["X_pca"].astype(np.float32)
    sample.obsm["X_umap"] = emb.obsm["X_umap"].astype(np.float32)

    sample.uns["provenance"] = {
        "source_file": "cellbench_5batches.h5ad",
        "source": str(full.uns.get("source", "CellBench (Tian et al., Nature Methods 2019; GEO GSE118767)")),
        "licence": "MIT (sc_mixology count matrices)",
        "selection": f"top {n_genes} highly variable genes, scanpy highly_variable_genes(flavor='seurat') "
                     "on normalize_total(1e4) + log1p of all 11,533 genes; all cells; raw counts kept",
        "embeddings": "X_pca: 50 PCs (arpack, seed 0) and X_umap (15 neighbours, seed 0) on log1p-normalised kept genes",
        "builder": "sample_data/build_sample.py",
        "n_source_genes": int(full.n_vars),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    sample.write_h5ad(out, compression="gzip")
    return sample


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    s = build(src, dst)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB): {s.n_obs} cells x {s.n_vars} genes, nnz {s.X.nnz}")
