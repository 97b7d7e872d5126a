"""compare_cells: naming, shapes, limits, difference arithmetic, averaging, selection.

Two kinds of model are used:

* ``LinearModel`` -- a test double implementing the ScMEDAL contract with a *known* batch effect
  (counterfactual to batch b = original + shift[b] - shift[own batch]), so every difference
  image has an exact expected value;
* a tiny real :class:`~napari_scmedal.ScMEDAL` trained for a few epochs on the bundled sample,
  for the end-to-end path (shapes, naming, the speed requirement).
"""
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_scmedal.compare import (
    FE_MINUS_ORIGINAL,
    FE_RECON,
    ORIGINAL,
    RE_RECON,
    cf_minus_original_name,
    cf_minus_own_name,
    compare_cells,
    counterfactual_name,
    parse_group,
    resolve_cells,
    select_cells,
    zscore_reference,
)
from napari_scmedal.errors import DataError, LayoutError


class GridLayout:
    """Row-major layout of the given genes (the last pixels stay empty)."""

    def __init__(self, genes, shape):
        self.genes = list(genes)
        self.shape = tuple(shape)
        n = len(self.genes)
        self.pixel_of_gene = np.stack(np.unravel_index(np.arange(n), self.shape), axis=1)

    def project(self, X):
        X = np.asarray(X, dtype=np.float32)
        out = np.full((X.shape[0], self.shape[0] * self.shape[1]), np.nan, dtype=np.float32)
        out[:, : X.shape[1]] = X
        return out.reshape(X.shape[0], *self.shape)


class _Recipe:
    def __init__(self, genes, batches, batch_key="batch", label_key="cell_type"):
        self.genes, self.batches = genes, batches
        self.batch_key, self.label_key = batch_key, label_key

    def transform(self, adata):
        X = np.asarray(adata[:, self.genes].X, dtype=np.float32)
        codes = pd.Categorical(adata.obs[self.batch_key].astype(str), categories=self.batches).codes
        return type("P", (), {"X_log": X, "batch": np.asarray(codes, dtype=np.int64)})()


class LinearModel:
    """Contract double: FE = 0.5 * X, RE = X + 1, CF->b = X + shift[b] - shift[own]."""

    def __init__(self, adata, n_genes=30):
        self.adata = adata
        self.genes = list(map(str, adata.var_names[:n_genes]))
        self.batches = sorted(adata.obs["batch"].astype(str).unique())
        self.recipe = _Recipe(self.genes, self.batches)
        self.shift = {b: float(i) for i, b in enumerate(self.batches)}
        self.layout = GridLayout(self.genes[::-1], (6, 6))  # reversed: tests gene alignment
        self.calls = 0

    def _x(self, a):
        return self.recipe.transform(a)

    def get_reconstruction(self, kind="fe", adata=None, scaled=False):
        p = self._x(adata)
        return 0.5 * p.X_log if kind == "fe" else p.X_log + 1.0

    def get_counterfactual_expression(self, target_batch, adata=None, scaled=False):
        self.calls += 1
        p = self._x(adata)
        own = np.array([self.shift[self.batches[c]] for c in p.batch], dtype=np.float32)
        return p.X_log + self.shift[target_batch] - own[:, None]

    # the model contract compare_cells uses (ModelLike in docs/architecture.md)
    def _training_adata(self, adata=None):
        return self.adata if adata is None else adata

    def predict_versions(self, adata, batches):
        p = self._x(adata)
        out = {"original": p.X_log, "fe": self.get_reconstruction("fe", adata),
               "re": self.get_reconstruction("re", adata), "batch": np.asarray(p.batch)}
        out.update({f"cf:{b}": self.get_counterfactual_expression(b, adata) for b in batches})
        return out


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    n, g = 40, 32
    X = rng.gamma(2.0, 1.0, size=(n, g)).astype(np.float32)
    obs = pd.DataFrame({
        "batch": np.array(["b0", "b1", "b2", "b3"])[np.arange(n) % 4],
        "cell_type": np.array(["T", "B"])[(np.arange(n) // 4) % 2],
    }, index=[f"cell{i}" for i in range(n)])
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    return a, LinearModel(a)


def _expected_image(model, vec):
    """vec over model.genes -> the layout's image."""
    pos = {g: i for i, g in enumerate(model.genes)}
    ordered = np.asarray(vec)[[pos[g] for g in model.layout.genes]]
    return model.layout.project(ordered[None])[0]


def test_names_kinds_shapes_and_order(small):
    from napari_scmedal.model import ModelLike, VersionsModel

    a, m = small
    assert isinstance(m, ModelLike) and not isinstance(m, VersionsModel)  # the double implements the contract
    comp = compare_cells(m, [0, 5])
    exp_names = [ORIGINAL, FE_RECON, RE_RECON] + [counterfactual_name(b) for b in m.batches]
    assert comp.names[: len(exp_names)] == exp_names
    diffs = comp.names[len(exp_names):]
    assert diffs[0] == FE_MINUS_ORIGINAL
    assert diffs[1:5] == [cf_minus_original_name(b) for b in m.batches]
    assert diffs[5:] == [cf_minus_own_name(b) for b in m.batches]
    assert diffs[1] == "Counterfactual -> b0 - Original"
    assert diffs[5] == "Counterfactual -> b0 - Counterfactual -> own batch"
    assert all(comp.kinds[n] == "expression" for n in exp_names)
    assert all(comp.kinds[n] == "difference" for n in diffs)
    for img in comp.images.values():
        assert img.shape == (2, 6, 6) and img.dtype == np.float32
        assert np.isnan(img[:, -1, -2:]).all()  # 30 genes in 36 pixels
    assert comp.row_batches == ["b0", "b1"] and comp.row_labels == ["T", "B"]
    assert comp.row_cells == [["cell0"], ["cell5"]]
    assert comp.row_titles[1] == "cell5 (B, b1)"
    assert comp.n_rows == 2 and comp.shape == (6, 6)
    assert comp.own_batch_column(1) == counterfactual_name("b1")


def test_images_follow_the_layout_and_differences_are_exact(small):
    a, m = small
    comp = compare_cells(m, ["cell6"])  # batch b2, shift 2
    x = np.asarray(a[6, m.genes].X, dtype=np.float32)[0]
    np.testing.assert_allclose(comp.images[ORIGINAL][0], _expected_image(m, x), rtol=1e-6)
    np.testing.assert_allclose(comp.images[FE_RECON][0], _expected_image(m, 0.5 * x), rtol=1e-6)
    for b in m.batches:
        cf = comp.images[counterfactual_name(b)][0]
        np.testing.assert_allclose(cf, _expected_image(m, x + m.shift[b] - 2.0), rtol=1e-5, atol=1e-5)
        # CF - Original equals the difference of the images, and the planted shift
        d = comp.images[cf_minus_original_name(b)][0]
        np.testing.assert_allclose(d, cf - comp.images[ORIGINAL][0], atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(np.nanmean(d), m.shift[b] - 2.0, atol=1e-5)
        own = comp.images[cf_minus_own_name(b)][0]
        np.testing.assert_allclose(own, cf - comp.images[counterfactual_name("b2")][0], atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(comp.images[FE_MINUS_ORIGINAL][0], -0.5 * comp.images[ORIGINAL][0],
                               atol=1e-5, equal_nan=True)
    assert np.nanmax(np.abs(comp.images[cf_minus_own_name("b2")])) == 0.0


def test_shared_limits_cover_every_image(small):
    a, m = small
    comp = compare_cells(m, [1, 2, 3])
    lo, hi = comp.expression_limits
    expr = np.concatenate([comp.images[n].ravel() for n in comp.names_of_kind("expression")])
    expr = expr[np.isfinite(expr)]
    assert lo == pytest.approx(np.percentile(expr, 0.5)) and hi == pytest.approx(np.percentile(expr, 99.5))
    dlo, dhi = comp.difference_limits
    assert dlo == -dhi and dhi > 0
    diff = np.concatenate([comp.images[n].ravel() for n in comp.names_of_kind("difference")])
    assert dhi == pytest.approx(np.percentile(np.abs(diff[np.isfinite(diff)]), 99.5))
    assert comp.limits_for(ORIGINAL) == comp.expression_limits
    assert comp.limits_for(FE_MINUS_ORIGINAL) == comp.difference_limits


def test_average_is_the_mean_of_rows_with_each_cells_own_batch(small):
    a, m = small
    cells = [0, 1, 2, 7]  # batches b0, b1, b2, b3
    rows = compare_cells(m, cells)
    grp = compare_cells(m, cells, average=True, group_name="mixed group")
    assert grp.n_rows == 1 and grp.averaged
    for n in rows.names:
        np.testing.assert_allclose(grp.images[n][0], rows.images[n].mean(axis=0), atol=1e-5, equal_nan=True)
    assert grp.row_batches == [None]  # several own batches
    assert grp.row_titles == ["mixed group (mean of 4 cells)"]
    assert grp.row_cells == [["cell0", "cell1", "cell2", "cell7"]]
    same = compare_cells(m, [0, 4, 8], average=True)
    assert same.row_batches == ["b0"] and same.own_batch_column(0) == counterfactual_name("b0")


def test_target_batches_subset_and_top_genes(small):
    a, m = small
    comp = compare_cells(m, [3], target_batches=["b2", "b0"])
    assert comp.batches == ["b2", "b0"]
    assert counterfactual_name("b1") not in comp.images
    assert cf_minus_own_name("b2") in comp.images  # own batch b3 computed, not shown
    assert counterfactual_name("b3") not in comp.images
    # the planted shift is uniform over genes, so the spread is the same (1.0) everywhere
    t = comp.top_genes
    assert list(t.columns) == ["row", "rank", "gene", "row_px", "col_px", "spread"]
    assert len(t) == 10 and np.allclose(t["spread"], 1.0)
    for _, r in t.iterrows():
        assert m.layout.genes[int(r["row_px"]) * 6 + int(r["col_px"])] == r["gene"]
    assert len(comp.top_genes_overall) == 10
    one = compare_cells(m, [3], target_batches="b1")
    assert one.batches == ["b1"] and one.top_genes.empty
    with pytest.raises(DataError, match="Unknown target batch.*the model knows these batches"):
        compare_cells(m, [3], target_batches=["nope"])


def test_gene_specific_effect_is_ranked_first(small):
    a, m = small
    planted = [m.genes[4], m.genes[17]]
    base_cf = m.get_counterfactual_expression

    def cf(target_batch, adata=None, scaled=False):
        out = base_cf(target_batch, adata=adata)
        j = [m.genes.index(g) for g in planted]
        out[:, j] += 10.0 * m.shift[target_batch]
        return out

    m.get_counterfactual_expression = cf
    comp = compare_cells(m, [0, 1])
    for r in range(2):
        assert set(comp.top_genes[comp.top_genes["row"] == r]["gene"].head(2)) == set(planted)
    assert set(comp.top_genes_overall["gene"].head(2)) == set(planted)


def test_zscore_scale_uses_one_cached_reference(small):
    a, m = small
    mean, std = zscore_reference(m)
    assert mean.shape == (30,) and std.shape == (30,)
    calls = m.calls
    assert zscore_reference(m)[0] is mean  # cached: no new forward passes
    assert m.calls == calls
    comp = compare_cells(m, [2], scale="zscore")
    x = np.asarray(a[2, m.genes].X, dtype=np.float32)[0]
    np.testing.assert_allclose(comp.images[ORIGINAL][0], _expected_image(m, (x - mean) / std), atol=1e-5)
    assert comp.scale == "zscore" and "z-score" in comp.units
    with pytest.raises(DataError, match="Unknown scale"):
        compare_cells(m, [2], scale="minmax")


def test_layout_must_match_the_model(small):
    a, m = small
    with pytest.raises(LayoutError, match="model.layout"):
        compare_cells(m, [0], layout=GridLayout(["zz"] + m.genes[1:], (6, 6)))


def test_resolve_and_select_cells(small):
    a, m = small
    names = list(a.obs_names)
    assert resolve_cells(3, names).tolist() == [3]
    assert resolve_cells(-1, names).tolist() == [39]
    assert resolve_cells(["cell2", "cell9"], names).tolist() == [2, 9]
    mask = np.zeros(40, dtype=bool)
    mask[[5, 6]] = True
    assert resolve_cells(mask, names).tolist() == [5, 6]
    with pytest.raises(DataError, match="out of range"):
        resolve_cells([40], names)
    with pytest.raises(DataError, match="Unknown cell name"):
        resolve_cells(["nope"], names)
    with pytest.raises(DataError, match="one entry per cell"):
        resolve_cells(mask[:10], names)
    with pytest.raises(DataError, match="empty"):
        resolve_cells([], names)
    idx = select_cells(a, {"cell_type": "B", "batch": "b1"})
    assert idx.size and (a.obs["cell_type"].iloc[idx] == "B").all() and (a.obs["batch"].iloc[idx] == "b1").all()
    assert select_cells(a.obs, "batch=b0|b1").size == 20
    assert select_cells(a, batch=["b2"]).size == 10
    with pytest.raises(DataError, match="Available columns"):
        select_cells(a, {"donor": "x"})
    with pytest.raises(DataError, match="Values of 'batch'"):
        select_cells(a, {"batch": "b9"})
    obs = pd.DataFrame({"batch": ["x", "x", "y"], "line": ["A", "B", "A"]})
    assert select_cells(obs, "batch=y,line=A").tolist() == [2]
    with pytest.raises(DataError, match="all of"):
        select_cells(obs, "batch=y,line=B")
    assert parse_group("cell_line=A549, batch = x|y") == {"cell_line": ["A549"], "batch": ["x", "y"]}
    with pytest.raises(DataError, match="KEY=VALUE"):
        parse_group("A549")


def test_stack_comparisons_rows_share_limits(small):
    from napari_scmedal.compare import stack_comparisons

    a, m = small
    g0 = compare_cells(m, [0, 4], average=True, group_name="first")
    g1 = compare_cells(m, [1, 5], average=True, group_name="second")
    st = stack_comparisons([g0, g1])
    assert st.n_rows == 2 and st.names == g0.names
    assert st.row_titles == ["first (mean of 2 cells)", "second (mean of 2 cells)"]
    assert st.row_batches == ["b0", "b1"]
    for n in st.names:
        np.testing.assert_array_equal(st.images[n][1], g1.images[n][0])
    expr = np.concatenate([st.images[n].ravel() for n in st.names_of_kind("expression")])
    expr = expr[np.isfinite(expr)]
    assert st.expression_limits == pytest.approx(tuple(np.percentile(expr, [0.5, 99.5])))
    assert st.expression_limits != g0.expression_limits  # recomputed over both rows
    assert set(st.top_genes["row"]) == {0, 1}
    other = compare_cells(m, [2], target_batches=["b0"])
    with pytest.raises(DataError, match="cannot be stacked"):
        stack_comparisons([g0, other])


# ------------------------------------------------------------------------------------------------
# a real (tiny) ScMEDAL
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    from napari_scmedal.datasets import cellbench
    from napari_scmedal.model import ScMEDAL

    a = cellbench()
    keep = np.sort(np.random.default_rng(0).choice(a.n_obs, 300, replace=False))
    a = a[keep].copy()
    m = ScMEDAL(a, batch_key="batch", label_key="cell_line", n_genes=100, preset="quick", seed=0)
    m.train(max_epochs=2)
    return a, m


def test_real_model_versions_match_the_public_api(real):
    a, m = real
    assert m.layout is None
    comp = compare_cells(m, [0, 1, 2])
    assert m.layout is not None and tuple(m.layout.shape) == (10, 10)  # computed once, attached
    assert comp.layout is m.layout
    # the model's training data is its filtered copy: the same cells, in order
    sub = m._training_adata()[[0, 1, 2]]
    cols = [list(m.genes).index(g) for g in m.layout.genes]
    for b in m.batches:
        ref = m.layout.project(m.get_counterfactual_expression(b, adata=sub)[:, cols])
        np.testing.assert_allclose(comp.images[counterfactual_name(b)], ref, atol=1e-4)
        np.testing.assert_allclose(comp.images[cf_minus_original_name(b)],
                                   comp.images[counterfactual_name(b)] - comp.images[ORIGINAL], atol=1e-5)
    ref = m.layout.project(m.get_reconstruction("fe", adata=sub)[:, cols])
    np.testing.assert_allclose(comp.images[FE_RECON], ref, atol=1e-4)
    assert comp.row_batches == list(sub.obs["batch"].astype(str))
    # the counterfactual to a cell's own batch is its RE reconstruction
    for i, b in enumerate(comp.row_batches):
        np.testing.assert_allclose(comp.images[counterfactual_name(b)][i], comp.images[RE_RECON][i], atol=1e-5)
    assert comp.row_labels == list(sub.obs["cell_line"].astype(str))
    # a new AnnData: cells chosen by name from the user's object
    comp2 = compare_cells(m, [a.obs_names[5]], adata=a, target_batches=["Dropseq_3cl"])
    assert comp2.row_cells == [[a.obs_names[5]]]
    own = comp2.row_batches[0]
    np.testing.assert_allclose(
        np.nanmax(np.abs(compare_cells(m, [a.obs_names[5]], adata=a, target_batches=[own])
                         .images[cf_minus_own_name(own)])), 0.0, atol=1e-6)


def test_one_cell_twenty_batches_is_fast():
    from napari_scmedal.data import make_synthetic
    from napari_scmedal.genomap import GenomapLayout
    from napari_scmedal.model import ScMEDAL

    a = make_synthetic(n_cells=400, n_genes=3000, n_batches=20, n_labels=2, seed=0)
    m = ScMEDAL(a, batch_key="batch", n_genes=2916, preset="quick", seed=0)
    m.train(max_epochs=1)
    pix = np.stack(np.divmod(np.arange(2916), 54), axis=1)
    layout = GenomapLayout((54, 54), m.genes, pix)
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        comp = compare_cells(m, [i], layout=layout)
        times.append(time.perf_counter() - t0)
    assert len(comp.batches) == 20 and comp.images[ORIGINAL].shape == (1, 54, 54)
    assert len(comp.names) == 3 + 20 + 1 + 40
    assert min(times) < 1.0, times


def test_chunked_computation_equals_one_pass(small, monkeypatch):
    import napari_scmedal.compare as cmp

    a, m = small
    cells = list(range(0, 40, 3))
    full_rows = compare_cells(m, cells)
    full_avg = compare_cells(m, cells, average=True)
    monkeypatch.setattr(cmp, "_CHUNK_ROWS", 16)  # 2 cells per chunk
    rows = compare_cells(m, cells)
    avg = compare_cells(m, cells, average=True)
    for n in full_rows.names:
        np.testing.assert_allclose(rows.images[n], full_rows.images[n], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(avg.images[n], full_avg.images[n], atol=1e-5, equal_nan=True)
    assert rows.row_batches == full_rows.row_batches
