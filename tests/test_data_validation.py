"""Every validation error of the data layer, with its message (problem and fix) asserted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import anndata as ad

from napari_scmedal.data import detect_input_kind, prepare_training, validate_adata
from napari_scmedal.data.synthetic import make_synthetic
from napari_scmedal.errors import DataError, ScMEDALError


@pytest.fixture
def small():
    return make_synthetic(n_cells=120, n_genes=60, n_batches=3, n_labels=2, seed=1)


def test_valid_counts_pass_and_report_kind(small):
    assert validate_adata(small, "batch", "cell_type") == "counts"
    assert issubclass(DataError, ScMEDALError) and issubclass(DataError, ValueError)


def test_empty_cells(small):
    with pytest.raises(DataError, match=r"empty \(0 cells x 60 genes\).*needs cells and genes"):
        validate_adata(small[:0].copy(), "batch")


def test_empty_genes(small):
    with pytest.raises(DataError, match=r"empty \(120 cells x 0 genes\)"):
        validate_adata(small[:, :0].copy(), "batch")


def test_missing_batch_key_lists_columns(small):
    with pytest.raises(DataError) as e:
        validate_adata(small, "sample")
    msg = str(e.value)
    assert "batch key 'sample' is not a column" in msg
    assert "'batch'" in msg and "'cell_type'" in msg and "batch_key=" in msg


def test_missing_label_key_lists_columns(small):
    with pytest.raises(DataError) as e:
        validate_adata(small, "batch", label_key="celltype")
    msg = str(e.value)
    assert "label key 'celltype' is not a column" in msg and "'cell_type'" in msg and "label_key=" in msg


def test_missing_batch_values(small):
    small.obs["batch"] = small.obs["batch"].astype(object)
    small.obs.iloc[[0, 5], small.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(DataError, match=r"2 of 120 cells have no value in adata.obs\['batch'\].*notna"):
        validate_adata(small, "batch")


def test_fewer_than_two_batches(small):
    small.obs["batch"] = "only"
    with pytest.raises(DataError, match=r"Found 1 batch \['only'\].*at least 2 batches.*batch_key"):
        validate_adata(small, "batch")


def test_batch_with_too_few_cells(small):
    b = small.obs["batch"].astype(str).to_numpy().copy()
    b[:3] = "tiny"
    small.obs["batch"] = b
    with pytest.raises(DataError) as e:
        validate_adata(small, "batch", min_cells_per_batch=5)
    msg = str(e.value)
    assert "1 batch has fewer than 5 cells" in msg and "'tiny' (3 cells)" in msg
    assert "Remove or merge" in msg
    # the same data passes with a lower threshold: the error comes from this check alone
    assert validate_adata(small, "batch", min_cells_per_batch=3) == "counts"


def test_batch_too_small_after_cell_filter():
    a = make_synthetic(n_cells=120, n_genes=60, n_batches=3, n_labels=2, seed=1, sparse=False)
    X = a.X.copy()
    first = np.flatnonzero(a.obs["batch"].astype(str) == "batch0")
    X[first[2:], :] = 0  # all but 2 cells of batch0 detect no gene -> removed by the cell filter
    a.X = X
    assert validate_adata(a, "batch") == "counts"
    with pytest.raises(DataError, match=r"fewer than 5 cells after removing \d+ cells with fewer than 10 detected genes.*'batch0' \(2 cells\)"):
        prepare_training(a, "batch", n_genes=20)


def test_duplicate_gene_names(small):
    names = small.var_names.to_numpy().copy()
    names[1] = names[0]
    names[3] = names[2]
    small.var_names = names
    with pytest.raises(DataError, match=r"2 gene names occur more than once.*'gene0', 'gene2'.*var_names_make_unique"):
        validate_adata(small, "batch")


def test_duplicate_cell_names(small):
    names = small.obs_names.to_numpy().copy()
    names[7] = names[6]
    small.obs_names = names
    with pytest.raises(DataError, match=r"1 cell names occur more than once.*'cell6'.*obs_names_make_unique"):
        validate_adata(small, "batch")


def test_missing_layer(small):
    small.layers["raw"] = small.X.copy()
    with pytest.raises(DataError, match=r"Layer 'counts' not found.*Available layers: \['raw'\]"):
        validate_adata(small, "batch", layer="counts")


@pytest.mark.parametrize("sparse", [True, False])
def test_nan_values(small, sparse):
    X = small.X.toarray()
    X[0, 0] = np.nan
    small.X = sp.csr_matrix(X) if sparse else X
    with pytest.raises(DataError, match=r"adata.X contains 1 NaN and 0 infinite values.*impute"):
        validate_adata(small, "batch")


def test_inf_values_in_layer(small):
    X = small.X.toarray()
    X[2, 3] = np.inf
    small.layers["counts"] = X
    with pytest.raises(DataError, match=r"adata.layers\['counts'\] contains 0 NaN and 1 infinite"):
        validate_adata(small, "batch", layer="counts")
    # X itself is clean
    assert validate_adata(small, "batch") == "counts"


def test_negative_values(small):
    X = small.X.toarray()
    X[1, 1] = -2.0
    small.X = X
    with pytest.raises(DataError, match=r"1 negative values \(minimum -2\).*raw counts"):
        validate_adata(small, "batch")


def test_non_integer_when_counts_expected(small):
    X = small.X.toarray()
    X[0, :5] += 0.5
    small.X = sp.csr_matrix(X)
    with pytest.raises(DataError, match=r"input_kind='counts' but adata.X contains 5 non-integer values"):
        validate_adata(small, "batch", input_kind="counts")
    # the same data passes when declared log-normalised: the error comes from the counts check
    assert validate_adata(small, "batch", input_kind="lognorm") == "lognorm"


def test_non_integer_too_large_for_lognorm(small):
    X = small.X.toarray().astype(np.float64)
    X = X / X.sum(1, keepdims=True) * 1e4  # normalised, not logged
    small.X = X
    with pytest.raises(DataError, match=r"neither raw counts.*nor log-normalised.*not log-transformed"):
        validate_adata(small, "batch")
    assert validate_adata(small, "batch", input_kind="lognorm") == "lognorm"  # explicit override


def test_fewer_genes_than_requested(small):
    with pytest.raises(DataError, match=r"n_genes=100.*only 60 genes.*n_genes=60 or fewer"):
        validate_adata(small, "batch", n_genes=100)
    assert validate_adata(small, "batch", n_genes=60) == "counts"


def test_fewer_genes_than_requested_after_gene_filter(small):
    X = small.X.toarray()
    X[:, :10] = 0
    X[0, :10] = 1  # 10 genes seen in 1 cell only -> removed by the gene filter
    small.X = sp.csr_matrix(X)
    with pytest.raises(DataError, match=r"Only 50 genes are detected in at least 3 cells.*n_genes=55.*n_genes=50"):
        prepare_training(small, "batch", n_genes=55)


def test_bad_input_kind(small):
    with pytest.raises(DataError, match=r"input_kind='raw' is not one of"):
        validate_adata(small, "batch", input_kind="raw")


def test_bad_split_fractions(small):
    with pytest.raises(DataError, match=r"split_fractions=\(0.5, 0.5, 0.5\) must be three"):
        prepare_training(small, "batch", n_genes=20, split_fractions=(0.5, 0.5, 0.5))


def test_detect_input_kind_rule(cellbench_adata):
    assert detect_input_kind(cellbench_adata.X) == "counts"
    assert detect_input_kind(cellbench_adata.X.toarray()) == "counts"
    X = cellbench_adata.X.astype(np.float32)
    lib = np.asarray(X.sum(1)).ravel()
    lognorm = sp.csr_matrix(X.multiply(1e4 / lib[:, None])).log1p()
    assert detect_input_kind(lognorm) == "lognorm"
    assert detect_input_kind(np.zeros((3, 4), dtype=np.float32)) == "counts"
    assert detect_input_kind(np.array([[1, 2], [0, 3]], dtype=np.int64)) == "counts"


def test_integer_dtype_negative_detected():
    a = ad.AnnData(X=np.array([[1, -1, 2]] * 10, dtype=np.int32),
                   obs=pd.DataFrame({"batch": ["a", "b"] * 5}, index=[f"c{i}" for i in range(10)]))
    with pytest.raises(DataError, match="negative values"):
        validate_adata(a, "batch")
