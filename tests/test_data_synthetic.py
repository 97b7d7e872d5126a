"""Synthetic counts: seeded, integer, with the documented cell-type programmes and batch effect."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scmedal.data import detect_input_kind
from napari_scmedal.data.synthetic import make_synthetic


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
