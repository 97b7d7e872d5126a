"""Synthetic counts: seeded, integer, with the documented cell-type programmes and batch effect."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from napari_scmedal.data import detect_input_kind
from napari_scmedal.data.synthetic import make_synthetic, write_synthetic_h5ad


def _norm_means(a, mask):
    X = a.X.toarray()
    lib = a.obs["library_size"].to_numpy()[:, None]
    return (X[mask] / lib[mask]).mean(0)


def test_shape_keys_and_determinism(synthetic_adata):
    a = synthetic_adata
    assert a.shape == (600, 300)
    assert a.obs["batch"].nunique() == 3 and a.obs["cell_type"].nunique() == 3
    assert detect_input_kind(a.X) == "counts" and a.X.dtype == np.float32
    assert (a.obs.groupby(["batch", "cell_type"], observed=True).size() >= 60).all()
    b = make_synthetic(n_cells=600, n_genes=300, n_batches=3, n_labels=3, seed=0)
    assert (a.X != b.X).nnz == 0
    c = make_synthetic(n_cells=600, n_genes=300, n_batches=3, n_labels=3, seed=1)
    assert (a.X != c.X).nnz > 0


def test_known_batch_effect_is_in_the_counts():
    a = make_synthetic(n_cells=3000, n_genes=200, n_batches=2, n_labels=2, seed=0, batch_strength=0.5)
    b = a.obs["batch"].astype(str).to_numpy()
    depth = a.uns["synthetic"]["batch_depth"]
    # library_size already contains the batch depth, so the per-gene ratio is the gene effect ratio
    observed = np.log(_norm_means(a, b == "batch1") / _norm_means(a, b == "batch0"))
    truth = np.log(a.varm["batch_effect"][:, 1] / a.varm["batch_effect"][:, 0])
    assert np.corrcoef(observed, truth)[0, 1] > 0.9
    assert len(depth) == 2
    none = make_synthetic(n_cells=3000, n_genes=200, n_batches=2, n_labels=2, seed=0, batch_strength=0.0)
    assert np.allclose(none.varm["batch_effect"], 1.0)
    bn = none.obs["batch"].astype(str).to_numpy()
    obs0 = np.log(_norm_means(none, bn == "batch1") / _norm_means(none, bn == "batch0"))
    assert np.abs(obs0).mean() < np.abs(observed).mean() / 3


def test_cell_type_programmes():
    a = make_synthetic(n_cells=900, n_genes=120, n_batches=3, n_labels=3, seed=2, programme_fold=6.0)
    prog = a.var["programme"].to_numpy()
    t = a.obs["cell_type"].astype(str).to_numpy()
    for k in range(3):
        inside = _norm_means(a, t == f"type{k}")[prog == k].mean()
        outside = _norm_means(a, t != f"type{k}")[prog == k].mean()
        assert inside / outside == pytest.approx(6.0, rel=0.25)
    assert (prog == -1).sum() == 120 - 3 * 20


def test_bad_arguments():
    with pytest.raises(ValueError, match="must all be >= 1"):
        make_synthetic(n_cells=0)
    with pytest.raises(ValueError, match="exceeds n_genes"):
        make_synthetic(n_genes=10, n_labels=3, programme_size=5)


# --- streamed .h5ad writer (issue 7: the large out-of-core benchmark file) ---------------------------

SMALL = {"n_cells": 3000, "n_genes": 200, "n_batches": 2, "n_labels": 2, "seed": 0}


def _x_arrays(path):
    with h5py.File(path, "r") as f:
        g = f["X"]
        return {k: g[k][()] for k in ("data", "indices", "indptr")}, dict(g.attrs)


def test_streamed_file_reads_in_memory_and_backed(tmp_path):
    path = write_synthetic_h5ad(tmp_path / "s.h5ad", **SMALL, chunk_cells=512, base_mean=0.5)
    assert path == tmp_path / "s.h5ad" and path.is_file()
    arrays, attrs = _x_arrays(path)
    assert attrs["encoding-type"] == "csr_matrix" and attrs["encoding-version"] == "0.1.0"
    assert tuple(attrs["shape"]) == (3000, 200)
    assert arrays["data"].dtype == np.float32 and arrays["indices"].dtype == np.int32
    assert arrays["indptr"].dtype == arrays["indices"].dtype  # scipy needs one index dtype

    a = ad.read_h5ad(path)
    assert a.shape == (3000, 200) and sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    assert a.X.has_sorted_indices and a.X.nnz == arrays["data"].size
    assert np.all(a.X.data >= 1) and np.all(a.X.data == np.round(a.X.data))
    assert detect_input_kind(a.X) == "counts"
    lib = a.obs["library_size"].to_numpy()[:, None]
    assert np.allclose(a.X.multiply(1 / lib).toarray(), a.X.toarray() / lib)  # scipy ops work (tocoo)
    assert list(a.obs["batch"].cat.categories) == ["batch0", "batch1"]
    assert list(a.obs["cell_type"].cat.categories) == ["type0", "type1"]
    assert a.varm["batch_effect"].shape == (200, 2) and "programme" in a.var
    assert a.uns["synthetic"]["generator"] == "write_synthetic_h5ad"

    # the truth (obs, var, varm) is the one make_synthetic draws for the same arguments
    m = make_synthetic(**SMALL, base_mean=0.5)
    assert a.obs.equals(m.obs) and a.var.equals(m.var)
    assert np.array_equal(a.varm["batch_effect"], m.varm["batch_effect"])

    b = ad.read_h5ad(path, backed="r")
    try:
        for lo, hi in ((0, 1), (500, 777), (2990, 3000)):
            rows = b.X[lo:hi]
            assert rows.shape == (hi - lo, 200) and (rows != a.X[lo:hi]).nnz == 0
        assert b.obs.equals(a.obs)
    finally:
        b.file.close()


def test_streamed_counts_follow_the_model_and_carry_the_batch_effect(tmp_path):
    kw = dict(SMALL, batch_strength=0.5, base_mean=0.5)
    a = ad.read_h5ad(write_synthetic_h5ad(tmp_path / "s.h5ad", **kw, chunk_cells=700))
    m = make_synthetic(**kw)  # same NB model, sampled by Poisson-gamma in memory
    assert abs(a.X.nnz - m.X.nnz) / m.X.nnz < 0.03
    ga, gm = np.asarray(a.X.mean(0)).ravel(), np.asarray(m.X.mean(0)).ravel()
    assert abs(ga.sum() / gm.sum() - 1) < 0.03
    assert np.corrcoef(np.log(ga), np.log(gm))[0, 1] > 0.95

    b = a.obs["batch"].astype(str).to_numpy()
    observed = np.log(_norm_means(a, b == "batch1") / _norm_means(a, b == "batch0"))
    truth = np.log(a.varm["batch_effect"][:, 1] / a.varm["batch_effect"][:, 0])
    assert np.corrcoef(observed, truth)[0, 1] > 0.9


def test_streamed_file_default_sparsity_is_umi_like(tmp_path):
    a = ad.read_h5ad(write_synthetic_h5ad(tmp_path / "s.h5ad", n_cells=1000, n_genes=2916, n_batches=19,
                                          n_labels=8, seed=0))
    density = a.X.nnz / (a.shape[0] * a.shape[1])
    assert 0.05 <= density <= 0.10
    assert set(a.obs["batch"].cat.categories) == {f"batch{i}" for i in range(19)}


def test_streamed_values_are_seeded_and_independent_of_chunk_size(tmp_path):
    x1, _ = _x_arrays(write_synthetic_h5ad(tmp_path / "a.h5ad", **SMALL, chunk_cells=512))
    x2, _ = _x_arrays(write_synthetic_h5ad(tmp_path / "b.h5ad", **SMALL, chunk_cells=1000))
    x3, _ = _x_arrays(write_synthetic_h5ad(tmp_path / "c.h5ad", **SMALL, chunk_cells=1))
    for k in x1:
        assert np.array_equal(x1[k], x2[k]) and np.array_equal(x1[k], x3[k]), k
    assert (tmp_path / "a.h5ad").read_bytes() == (tmp_path / "b.h5ad").read_bytes()  # byte-identical files
    x4, _ = _x_arrays(write_synthetic_h5ad(tmp_path / "d.h5ad", **dict(SMALL, seed=1), chunk_cells=512))
    assert not (x1["indptr"].shape == x4["indptr"].shape and np.array_equal(x1["indptr"], x4["indptr"])
                and np.array_equal(x1["indices"], x4["indices"]))


def test_streamed_writer_refuses_to_overwrite(tmp_path):
    target = tmp_path / "s.h5ad"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_synthetic_h5ad(target, **SMALL)
    assert target.read_bytes() == b"user data"
    write_synthetic_h5ad(target, **SMALL, overwrite=True)
    assert ad.read_h5ad(target).shape == (3000, 200)
    with pytest.raises(ValueError, match="chunk_cells"):
        write_synthetic_h5ad(tmp_path / "t.h5ad", **SMALL, chunk_cells=0)


def test_failure_mid_write_leaves_no_partial_file(tmp_path):
    seen = []

    def boom(info):
        seen.append(info)
        if len(seen) == 2:
            raise RuntimeError("disk full (simulated)")

    target = tmp_path / "s.h5ad"
    with pytest.raises(RuntimeError, match="simulated"):
        write_synthetic_h5ad(target, **SMALL, chunk_cells=512, progress=boom)
    assert seen[0]["cells_written"] == 512 and seen[0]["n_cells"] == 3000 and seen[0]["nnz"] > 0
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file

    target.write_bytes(b"old")  # an existing file survives a failed overwrite
    seen.clear()
    with pytest.raises(RuntimeError):
        write_synthetic_h5ad(target, **SMALL, chunk_cells=512, overwrite=True, progress=boom)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
