"""The bundled CellBench sample: contents, independence of copies, provenance from the full file."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from napari_scmedal.datasets import cellbench, cellbench_path

EXPECTED_TABLE = {  # README of the source data: batch x cell line
    "CELseq2_3cl": {"A549": 0, "H1975": 114, "H2228": 81, "H838": 0, "HCC827": 79},
    "CELseq2_5cl_p1": {"A549": 103, "H1975": 50, "H2228": 50, "H838": 51, "HCC827": 43},
    "CELseq2_5cl_p2": {"A549": 107, "H1975": 44, "H2228": 44, "H838": 71, "HCC827": 41},
    "CELseq2_5cl_p3": {"A549": 118, "H1975": 35, "H2228": 41, "H838": 75, "HCC827": 36},
    "Dropseq_3cl": {"A549": 0, "H1975": 92, "H2228": 65, "H838": 0, "HCC827": 68},
}


def test_sample_contents(cellbench_adata):
    a = cellbench_adata
    assert a.shape == (1408, 3500)
    assert isinstance(a.X, (sp.csr_matrix, sp.csr_array)) and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() > 0
    for key in ("batch", "protocol", "cell_line"):
        assert isinstance(a.obs[key].dtype, pd.CategoricalDtype)
    assert a.var["gene_ids"].str.startswith("ENSG").all() and a.var_names.is_unique
    assert a.obsm["X_pca"].shape == (1408, 50) and a.obsm["X_umap"].shape == (1408, 2)
    assert np.isfinite(a.obsm["X_umap"]).all()
    table = pd.crosstab(a.obs["batch"], a.obs["cell_line"])
    assert table.to_dict(orient="index") == EXPECTED_TABLE
    assert set(a.obs["protocol"]) == {"CEL-seq2", "Drop-seq"}
    assert "GSE118767" in a.uns["provenance"]["source"]


def test_fresh_copy_each_call():
    a, b = cellbench(), cellbench()
    assert a is not b and a.X is not b.X
    a.X.data[:] = 0
    a.obs["batch"] = "x"
    c = cellbench()
    assert c.X.data.max() > 0 and c.obs["batch"].nunique() == 5
    assert b.X.data.max() > 0


def test_packaged_file_is_small_and_compressed():
    path = cellbench_path()
    assert path.name == "cellbench_sample.h5ad" and path.exists()
    assert path.stat().st_size < 6_000_000
    import h5py

    with h5py.File(path, "r") as f:
        assert f["X"]["data"].compression == "gzip"


def test_default_preprocessing_runs_on_sample(cellbench_adata):
    from napari_scmedal.data import prepare_training

    td = prepare_training(cellbench_adata, "batch", "cell_line")  # n_genes=2916 default
    assert td.recipe.n_genes == 2916 == 54 * 54


def test_provenance_matches_full_file(cellbench_adata, cellbench_full_path):
    """The sample is exactly the full file's counts for its top-3,500 seurat HVGs, all cells."""
    full = ad.read_h5ad(cellbench_full_path)
    a = cellbench_adata
    assert list(a.obs_names) == list(full.obs_names)
    for key in ("batch", "protocol", "cell_line"):
        assert (a.obs[key].astype(str) == full.obs[key].astype(str)).all()
    assert (a.var["gene_ids"] == full.var.loc[a.var_names, "gene_ids"].astype(str)).all()
    assert (a.X != full[:, a.var_names].X).nnz == 0  # counts unaltered
    sc.pp.normalize_total(full, target_sum=1e4)
    sc.pp.log1p(full)
    sc.pp.highly_variable_genes(full, flavor="seurat", n_top_genes=3500)
    expected = list(full.var_names[full.var["highly_variable"].to_numpy()])
    assert list(a.var_names) == expected
