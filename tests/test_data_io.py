"""read_h5ad: in memory, never writes the user's file; layers; clear errors."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import scipy.sparse as sp

from napari_scmedal.data import read_h5ad
from napari_scmedal.data.synthetic import make_synthetic
from napari_scmedal.datasets import cellbench_path
from napari_scmedal.errors import DataError


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_leaves_file_byte_identical(tmp_path, _cellbench_cached):
    path = tmp_path / "user.h5ad"
    _cellbench_cached.write_h5ad(path)
    before, mtime = _digest(path), os.stat(path).st_mtime_ns
    a = read_h5ad(path)
    a.X.data[0] = 99.0  # changes to the object never reach the file
    a.obs["new"] = 1
    del a
    b = read_h5ad(path)
    assert b.X.data[0] == _cellbench_cached.X.data[0] != 99.0 and "new" not in b.obs
    assert _digest(path) == before and os.stat(path).st_mtime_ns == mtime


def test_read_packaged_sample_read_only():
    path = cellbench_path()
    before = _digest(path)
    a = read_h5ad(path)
    assert a.shape == (1408, 3500) and sp.issparse(a.X)
    assert _digest(path) == before


def test_read_dense_and_named_layer(tmp_path):
    s = make_synthetic(n_cells=50, n_genes=30, seed=4, sparse=False)
    counts = s.X.copy()
    s.layers["counts"] = counts
    s.X = np.log1p(counts)
    path = tmp_path / "dense.h5ad"
    s.write_h5ad(path)
    a = read_h5ad(path)
    assert isinstance(a.X, np.ndarray)
    np.testing.assert_allclose(a.X, np.log1p(counts))
    b = read_h5ad(path, layer="counts")
    np.testing.assert_array_equal(b.X, counts)
    np.testing.assert_allclose(b.layers["X"], np.log1p(counts))  # the old X is kept


def test_missing_layer_lists_available(tmp_path):
    s = make_synthetic(n_cells=20, n_genes=10, seed=0)
    s.layers["raw_counts"] = s.X.copy()
    path = tmp_path / "a.h5ad"
    s.write_h5ad(path)
    with pytest.raises(DataError, match=r"Layer 'counts' not found in .*a.h5ad.*\['raw_counts'\].*layer=None"):
        read_h5ad(path, layer="counts")


def test_missing_file_folder_and_not_h5ad(tmp_path):
    with pytest.raises(DataError, match=r"File not found: .*nope.h5ad.*Check the path"):
        read_h5ad(tmp_path / "nope.h5ad")
    with pytest.raises(DataError, match="is a folder, not an .h5ad file"):
        read_h5ad(tmp_path)
    bad = tmp_path / "table.h5ad"
    bad.write_text("gene,cell\n1,2\n")
    with pytest.raises(DataError, match=r"not an HDF5/.h5ad file.*write_h5ad"):
        read_h5ad(bad)


def test_foreign_hdf5_file(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    before = _digest(path)
    with pytest.raises(DataError, match=r"Could not read .* as AnnData.*written by anndata"):
        read_h5ad(path)
    assert _digest(path) == before
