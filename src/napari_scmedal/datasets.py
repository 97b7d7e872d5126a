"""Bundled datasets (nothing is downloaded at run time).

``cellbench()`` returns the packaged real CellBench sample (see ``sample_data/README.md`` for its
provenance and licence) as a fresh in-memory :class:`anndata.AnnData` on every call, so callers can
modify it freely; the packaged file itself is only ever opened read-only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import anndata as ad

SAMPLE_FILENAME = "cellbench_sample.h5ad"


def cellbench_path() -> Path:
    """Path of the packaged CellBench sample file (treat it as read-only)."""
    return Path(str(resources.files("napari_scmedal").joinpath("sample_data", SAMPLE_FILENAME)))


def cellbench() -> ad.AnnData:
    """Real CellBench scRNA-seq sample: 1,408 cells x 3,500 genes, 5 batches, 5 cell lines.

    ``X`` holds raw integer UMI counts (float32 CSR) of the 3,500 most variable genes of the
    full dataset (scanpy seurat flavour). ``obs``: ``batch`` (5 categories: 4 CEL-seq2 plates and
    1 Drop-seq run), ``protocol`` (CEL-seq2 / Drop-seq), ``cell_line`` (A549, H1975, H2228, H838,
    HCC827), ``demuxlet_cls`` (SNG/DBL genotype call). ``var['gene_ids']``: Ensembl IDs.
    ``obsm``: ``X_pca`` (50 PCs) and ``X_umap``. ``uns['provenance']`` records how it was built.

    Every call reads the packaged file again and returns an independent in-memory copy.
    """
    from .data.io import read_h5ad

    adata = read_h5ad(cellbench_path())
    return adata


__all__ = ["cellbench", "cellbench_path", "SAMPLE_FILENAME"]
