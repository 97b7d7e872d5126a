"""Genomap engine: layouts (euclidean and genomap-compatible radial), lookup, projection, z-scoring, quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from napari_scmedal.errors import LayoutError, ScMEDALError
from napari_scmedal.genomap import (
    GenomapLayout,
    compute_layout,
    gene_correlation,
    layout_quality,
    radial_rings,
    grid_shape,
    zscore_stack,
)


def blocks_data(n_cells=300, n_blocks=4, block_size=25, noise=0.6, seed=0):
    """Cells x genes with ``n_blocks`` blocks of co-expressed genes (one latent factor per block)."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n_cells, n_blocks))
    block_of_gene = np.repeat(np.arange(n_blocks), block_size)
    X = factors[:, block_of_gene] + noise * rng.standard_normal((n_cells, n_blocks * block_size))
    return X.astype(np.float32), block_of_gene


@pytest.fixture(scope="module")
def blocks():
    return blocks_data()


@pytest.fixture(scope="module")
def block_layout(blocks):
    X, _ = blocks
    return compute_layout(X, shape=(10, 10), genes=[f"g{i}" for i in range(X.shape[1])], seed=0)


# ------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("geometry", ["euclidean", "radial"])
def test_assignment_is_a_valid_injection(blocks, geometry):
    X, _ = blocks
    lay = compute_layout(X[:, :93], shape=(10, 10), geometry=geometry, seed=0)
    pog = lay.pixel_of_gene
    assert pog.shape == (93, 2) and np.issubdtype(pog.dtype, np.integer)
    assert (pog >= 0).all() and (pog[:, 0] < 10).all() and (pog[:, 1] < 10).all()
    flat = pog[:, 0] * 10 + pog[:, 1]
    assert len(np.unique(flat)) == 93                       # one-to-one
    assert lay.mask.sum() == 93 and lay.mask.shape == (10, 10)
    assert (lay.grid[lay.mask] >= 0).all() and (lay.grid[~lay.mask] == -1).all()


@pytest.mark.parametrize("geometry", ["euclidean", "radial"])
def test_deterministic_under_a_seed(blocks, geometry):
    X, _ = blocks
    a = compute_layout(X, shape=(10, 10), geometry=geometry, seed=3)
    b = compute_layout(X.copy(), shape=(10, 10), geometry=geometry, seed=3)
    np.testing.assert_array_equal(a.pixel_of_gene, b.pixel_of_gene)
    # dense and sparse input give the same layout
    c = compute_layout(sp.csr_matrix(X), shape=(10, 10), geometry=geometry, seed=3)
    np.testing.assert_array_equal(a.pixel_of_gene, c.pixel_of_gene)


def test_lookup_round_trip(block_layout):
    lay = block_layout
    for i, g in enumerate(lay.genes):
        r, c = lay.pixel_of(g)
        assert (r, c) == tuple(lay.pixel_of_gene[i])
        assert lay.gene_at(r, c) == g
    seen = {lay.gene_at(r, c) for r in range(10) for c in range(10)}
    assert seen == set(lay.genes)
    assert lay.gene_at(10, 0) is None and lay.gene_at(-1, 3) is None
    with pytest.raises(LayoutError, match="not in this genomap layout"):
        lay.pixel_of("no-such-gene")


def test_co_expressed_blocks_land_in_compact_regions(blocks, block_layout):
    X, block_of_gene = blocks
    lay = block_layout
    pos = lay.pixel_of_gene.astype(float)
    all_d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    mean_all = all_d[np.triu_indices(len(pos), 1)].mean()
    for b in range(4):
        idx = np.flatnonzero(block_of_gene == b)
        d = all_d[np.ix_(idx, idx)][np.triu_indices(len(idx), 1)]
        # a 25-gene block on a 10 x 10 grid: compact means far below the mean distance of all pixel pairs
        assert d.mean() < 0.55 * mean_all, (b, d.mean(), mean_all)
    # 4-neighbour pixels mostly hold genes of the same block (random: about 1/4)
    grid_block = block_of_gene[lay.grid]
    same = np.concatenate([(grid_block[:, 1:] == grid_block[:, :-1]).ravel(),
                           (grid_block[1:, :] == grid_block[:-1, :]).ravel()])
    assert same.mean() > 0.8
    q = layout_quality(lay, X, seed=0)
    assert q["spearman"] > 0.5 and abs(q["spearman_random"]) < 0.1
    # random: a quarter of neighbour pairs share a block (r ~ 0.74), the rest r ~ 0
    assert q["neighbour_correlation"] > 2.5 * q["neighbour_correlation_random"] > 0
    assert q["gw_objective"] < 0.8 * q["gw_objective_random"]


def test_gw_refinement_does_not_worsen_the_spectral_start(blocks):
    X, _ = blocks
    lay = compute_layout(X, shape=(10, 10), seed=0)
    obj = lay.info["objective"]
    assert len(obj) >= 1 and all(b < a for a, b in zip(obj, obj[1:]))  # strictly decreasing
    start = compute_layout(X, shape=(10, 10), seed=0, max_iter=0)
    assert layout_quality(lay, X)["gw_objective"] <= layout_quality(start, X)["gw_objective"] + 1e-9


def test_more_genes_than_pixels_is_a_clear_error(blocks):
    X, _ = blocks
    with pytest.raises(LayoutError) as e:
        compute_layout(X[:, :90], shape=(9, 9))
    msg = str(e.value)
    assert "90 genes" in msg and "81 pixels" in msg and "(9, 10)" in msg
    assert isinstance(e.value, ScMEDALError)
    # one grid rule: the smallest square that fits, less any empty rows
    assert grid_shape(90) == (9, 10) and grid_shape(81) == (9, 9) and grid_shape(2916) == (54, 54)
    assert grid_shape(300) == (17, 18) and grid_shape(3000) == (55, 55) and grid_shape(1) == (1, 1)
    for n in range(1, 400):
        r, c = grid_shape(n)
        assert r * c >= n > (r - 1) * c and c == int(np.ceil(np.sqrt(n)))


@pytest.mark.parametrize("geometry", ["euclidean", "radial"])
def test_fewer_genes_leave_masked_pixels_and_unchanged_values(blocks, geometry):
    X, _ = blocks
    Xs = X[:20, :90]
    lay = compute_layout(Xs, shape=(10, 10), geometry=geometry)
    assert lay.mask.sum() == 90
    img = lay.project(Xs)
    assert img.shape == (20, 10, 10) and img.dtype == np.float32
    assert np.isnan(img[:, ~lay.mask]).all()
    r, c = lay.pixel_of_gene.T
    np.testing.assert_array_equal(img[:, r, c], Xs)          # values copied, never rescaled
    if geometry == "euclidean":  # the first 90 pixels in row-major order
        assert lay.mask.ravel()[:90].all() and not lay.mask.ravel()[90:].any()
    else:                        # the genomap package's first 90 pixels in column-major order
        assert lay.mask.T.ravel()[:90].all() and not lay.mask.T.ravel()[90:].any()


def test_nan_and_constant_genes():
    X, _ = blocks_data(n_cells=120)
    Xn = X.copy()
    Xn[3, 7] = np.nan
    with pytest.raises(LayoutError, match="NaN"):
        compute_layout(Xn, shape=(10, 10))
    with pytest.raises(LayoutError, match="NaN"):
        compute_layout(sp.csr_matrix(Xn), shape=(10, 10))
    Xc = X.copy()
    Xc[:, 5] = 2.0
    Xc[:, 50] = 0.0
    R = gene_correlation(Xc)
    assert np.isfinite(R).all()
    assert R[5, 5] == 1.0 and np.all(R[5, np.arange(100) != 5] == 0.0)
    lay = compute_layout(Xc, shape=(10, 10))
    assert len(np.unique(lay.pixel_of_gene[:, 0] * 10 + lay.pixel_of_gene[:, 1])) == 100
    with pytest.raises(LayoutError, match="at least 2 cells"):
        compute_layout(X[:1], shape=(10, 10))


def test_gene_names_and_shape_checks(blocks):
    X, _ = blocks
    with pytest.raises(LayoutError, match="gene names"):
        compute_layout(X, shape=(10, 10), genes=["a", "b"])
    with pytest.raises(LayoutError, match="geometry"):
        compute_layout(X, shape=(10, 10), geometry="hexagonal")
    lay = compute_layout(X[:, :30], shape=None)
    assert lay.shape == (5, 6)  # grid_shape: 6 columns, the rows that hold 30 genes
    wide = compute_layout(X, shape=(5, 21))                 # wide grid, last row partly empty
    assert wide.mask.sum() == 100 and wide.mask.ravel()[:100].all()
    tall = compute_layout(X, shape=(21, 5), geometry="radial")
    assert tall.mask.sum() == 100 and tall.mask.T.ravel()[:100].all()


# ------------------------------------------------------------------------------------------ projection
def _naive_project(layout, X):
    out = np.full((X.shape[0],) + layout.shape, np.nan, dtype=np.float32)
    for cell in range(X.shape[0]):
        for g in range(X.shape[1]):
            r, c = layout.pixel_of_gene[g]
            out[cell, r, c] = X[cell, g]
    return out


def test_projection_equals_a_naive_loop(blocks, block_layout):
    X, _ = blocks
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((7, 100)).astype(np.float32)
    np.testing.assert_array_equal(block_layout.project(Y), _naive_project(block_layout, Y))
    # sparse input and chunking give the same images
    Ys = sp.csr_matrix(np.where(np.abs(Y) > 1, Y, 0))
    np.testing.assert_array_equal(block_layout.project(Ys, chunk_size=3), _naive_project(block_layout, Ys.toarray()))
    # partial layout: NaN on empty pixels in the naive loop too
    part = compute_layout(X[:, :77], shape=(9, 9))
    Z = rng.standard_normal((5, 77))
    np.testing.assert_array_equal(part.project(Z, chunk_size=2), _naive_project(part, Z))
    buf = np.zeros((7, 10, 10), dtype=np.float32)
    res = block_layout.project(Y, out=buf)
    np.testing.assert_array_equal(buf, _naive_project(block_layout, Y))
    assert np.shares_memory(res, buf)
    with pytest.raises(LayoutError, match="float32"):
        block_layout.project(Y, out=np.zeros((7, 10, 10)))
    one = block_layout.project(Y[0])
    assert one.shape == (1, 10, 10)
    np.testing.assert_array_equal(block_layout.values_at_pixels(block_layout.project(Y)), Y)
    with pytest.raises(LayoutError, match="100 columns"):
        block_layout.project(Y[:, :50])


# ------------------------------------------------------------------------------------------ serialisation
def test_to_dict_from_dict_round_trip(blocks, block_layout):
    X, _ = blocks
    d = json.loads(json.dumps(block_layout.to_dict()))
    back = GenomapLayout.from_dict(d)
    assert back == block_layout
    assert back.genes == block_layout.genes and back.shape == (10, 10)
    np.testing.assert_array_equal(back.project(X[:4]), block_layout.project(X[:4]))
    assert back.gene_at(*block_layout.pixel_of("g17")) == "g17"
    with pytest.raises(LayoutError, match="not a napari-scmedal genomap layout"):
        GenomapLayout.from_dict({"shape": [2, 2]})
    bad = dict(d, pixel_of_gene=[[0, 0]] * 100)
    with pytest.raises(LayoutError, match="one-to-one"):
        GenomapLayout.from_dict(bad)
    newer = dict(d, version=99)
    with pytest.raises(LayoutError, match="newer"):
        GenomapLayout.from_dict(newer)


# ------------------------------------------------------------------------------------------ z-scoring
def test_zscore_stack_shares_one_scale():
    rng = np.random.default_rng(0)
    A = rng.normal(3.0, 2.0, (40, 6))
    B = rng.normal(-1.0, 0.5, (25, 6))
    A[:, 2] = 1.5
    B[:, 2] = 1.5                                     # zero variance over the stack
    B[0] = A[0]
    za, zb = zscore_stack([A, sp.csr_matrix(B)])
    assert za.shape == A.shape and zb.shape == B.shape and za.dtype == np.float32
    Z = np.vstack([za, zb]).astype(np.float64)
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(Z[:, keep].mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(Z[:, keep].std(0), 1.0, atol=1e-5)
    assert np.all(Z[:, 2] == 0.0)
    np.testing.assert_array_equal(za[0], zb[0])        # one affine map per gene for every matrix
    S = np.vstack([A, B])
    np.testing.assert_allclose(za[:, 0], (A[:, 0] - S[:, 0].mean()) / S[:, 0].std(), rtol=1e-5)
    with pytest.raises(LayoutError, match="gene columns"):
        zscore_stack([A, B[:, :5]])


# ------------------------------------------------------------------------------------------ radial
def _reference_genomap_rings(X, rows, cols, max_iter=1000):
    """Independent re-statement of genomap 1.3.6 ``construct_genomap`` (epsilon=0) on the full
    pixel x pixel problem; returns the squared ring radius of each gene's pixel."""
    import ot

    def axis(n):
        return np.linspace(-n / 2, n / 2 - 1, n) if n % 2 == 0 else np.linspace(-(n - 1) / 2, (n - 1) / 2, n)

    x, y = axis(rows), axis(cols)
    xx, yy = np.meshgrid(x, y)
    zz = np.sqrt(xx ** 2 + yy ** 2).ravel()
    dist = np.abs(zz[:, None] - zz[None, :])
    Xc = X - X.mean(0)
    Xc = Xc / np.linalg.norm(Xc, axis=0)
    C1 = 1.0 - Xc.T @ Xc
    n = X.shape[1]
    p = ot.unif(n)
    T = np.outer(p, p)
    logD = np.log(dist[:n, :n] + 1e-15)
    cpt, err = 0, 1.0
    while err > 1e-9 and cpt < max_iter:
        prev = T
        tens = -(C1 @ T @ logD.T)
        tens -= tens.min()
        T = ot.emd(p, p, tens)
        if cpt % 10 == 0:
            err = np.linalg.norm(T - prev)
        cpt += 1
    k = T.argmax(1)                      # flat index a + b * rows <-> image pixel (row a, column b)
    a, b = k % rows, k // rows
    return (x[a] ** 2 + y[b] ** 2).astype(np.int64)


@pytest.mark.parametrize("rows,cols,n_genes", [(6, 6, 36), (7, 7, 49), (7, 7, 45)])
def test_radial_matches_the_genomap_package_ring_rule(rows, cols, n_genes):
    X, _ = blocks_data(n_cells=150, n_blocks=5, block_size=10, noise=0.8, seed=rows)
    X = X[:, :n_genes].astype(np.float64)
    ref = _reference_genomap_rings(X, rows, cols)
    lay = compute_layout(X, shape=(rows, cols), geometry="radial")
    ring_sq, _ = radial_rings((rows, cols))
    ours = ring_sq[lay.pixel_of_gene[:, 0], lay.pixel_of_gene[:, 1]]
    assert np.mean(ours == ref) >= 0.99
    assert lay.info["ring_sq_of_gene"] == ours.tolist()


def test_radial_rings_use_the_package_centre():
    ring_sq, angle = radial_rings((4, 5))
    # even rows: centre at row 2 (offsets -2..1); odd columns: centre at column 2 (offsets -2..2)
    assert ring_sq[2, 2] == 0 and ring_sq[0, 0] == 8 and ring_sq[3, 4] == 5
    assert np.isclose(angle[2, 4], 0.0) and np.isclose(angle[0, 2], np.pi / 2)


def test_radial_place_within_ring_is_deterministic_and_keeps_rings(blocks):
    X, _ = blocks
    a = compute_layout(X, shape=(10, 10), geometry="radial", seed=0)
    b = compute_layout(X, shape=(10, 10), geometry="radial", seed=0)
    np.testing.assert_array_equal(a.pixel_of_gene, b.pixel_of_gene)
    ring_sq, _ = radial_rings((10, 10))
    assert ring_sq[a.pixel_of_gene[:, 0], a.pixel_of_gene[:, 1]].tolist() == a.info["ring_sq_of_gene"]


# ------------------------------------------------------------------------------------------ real data
def test_real_sample_layout_quality(cellbench_adata):
    import scanpy as sc

    ad = cellbench_adata
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=400, flavor="seurat")
    sub = ad[:, ad.var["highly_variable"]]
    X = sub.X
    lay = compute_layout(X, shape=None, genes=list(sub.var_names), seed=0)   # the default grid
    assert lay.shape == grid_shape(sub.n_vars)
    q = layout_quality(lay, X)
    assert q["spearman"] >= 0.5 and abs(q["spearman_random"]) < 0.05
    assert q["neighbour_correlation"] >= 3 * q["neighbour_correlation_random"]
    img = lay.project(X[:10])
    g = sub.var_names[0]
    r, c = lay.pixel_of(g)
    Xd = X[:10].toarray() if sp.issparse(X) else np.asarray(X[:10])
    np.testing.assert_array_equal(img[:, r, c], Xd[:, 0].astype(np.float32))


def test_threaded_projection_equals_single_threaded_with_empty_pixels():
    # 250 genes on 16 x 16 (6 empty pixels), many small chunks so the thread pool really splits rows
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 250)).astype(np.float32)
    layout = compute_layout(X[:100], shape=(16, 16), seed=0)
    one = layout.project(X, chunk_size=7, n_threads=1)
    many = layout.project(X, chunk_size=7, n_threads=3)
    np.testing.assert_array_equal(np.isnan(one), np.isnan(many))
    np.testing.assert_array_equal(one[~np.isnan(one)], many[~np.isnan(many)])
    assert np.isnan(many).sum() == 400 * (256 - 250)
    r, c = layout.pixel_of_gene[17]
    np.testing.assert_array_equal(many[:, r, c], X[:, 17])
    sparse = layout.project(sp.csr_matrix(X), chunk_size=7, n_threads=2)
    np.testing.assert_array_equal(np.nan_to_num(sparse, nan=-9), np.nan_to_num(one, nan=-9))
