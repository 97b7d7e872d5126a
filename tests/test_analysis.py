"""Analyses on seeded synthetic genomaps with a planted effect (known answer)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from napari_scmedal.analysis import (
    benjamini_hochberg,
    counterfactual_group_test,
    pixel_test,
    rank_pixels,
    spread_image,
    top_genes_table,
    top_varying_genes,
    write_csv,
)
from napari_scmedal.compare import Comparison, counterfactual_name
from napari_scmedal.errors import DataError, ScMEDALError


def _grid(rows, cols, empty=()):
    g = np.empty((rows, cols), dtype=object)
    for r in range(rows):
        for c in range(cols):
            g[r, c] = f"G{r}_{c}"
    for r, c in empty:
        g[r, c] = None
    return g


def test_top_varying_genes_finds_planted_pixels_in_order():
    rng = np.random.default_rng(0)
    n_b, rows, cols = 6, 8, 9
    imgs = rng.normal(0, 0.05, size=(n_b, rows, cols))
    planted = [((2, 3), 3.0), ((5, 1), 2.0), ((0, 8), 1.0)]
    offsets = np.linspace(-1, 1, n_b)
    for (r, c), amp in planted:
        imgs[:, r, c] += amp * offsets
    # an empty pixel with a huge spread must never be reported
    imgs[:, 7, 7] = np.nan
    imgs[:, 6, 6] += 100 * offsets
    grid = _grid(rows, cols, empty=[(7, 7), (6, 6)])
    df = top_varying_genes(imgs, layout=grid, n=3)
    assert list(df.columns) == ["gene", "row", "col", "std"]
    assert list(df["gene"]) == ["G2_3", "G5_1", "G0_8"]
    assert df[["row", "col"]].values.tolist() == [[2, 3], [5, 1], [0, 8]]
    np.testing.assert_allclose(df["std"], [imgs[:, 2, 3].std(), imgs[:, 5, 1].std(), imgs[:, 0, 8].std()])
    assert np.isnan(spread_image(imgs)[7, 7])


def test_top_genes_table_per_cell_and_errors():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, 4, 5, 5))
    t = top_genes_table(stack, layout=_grid(5, 5), n=10, row_names=["a", "b", "c"])
    assert list(t.columns) == ["cell", "rank", "gene", "row", "col", "std"]
    assert len(t) == 30 and list(t["cell"].unique()) == ["a", "b", "c"]
    for _, sub in t.groupby("cell"):
        assert list(sub["rank"]) == list(range(1, 11))
        assert (np.diff(sub["std"].to_numpy()) <= 0).all()
    with pytest.raises(DataError, match="at least two target batches"):
        spread_image(stack[:, :1])
    with pytest.raises(DataError, match="layout"):
        top_varying_genes(stack[0], layout=_grid(4, 4))


def test_rank_pixels_without_layout_names_positions():
    score = np.zeros((3, 3))
    score[1, 2] = 5
    t = rank_pixels(score, n=1)
    assert t.loc[0, "gene"] == "pixel_1_2" and t.loc[0, "score"] == 5


def test_benjamini_hochberg_matches_scipy_and_skips_nan():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=200) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)
    p2 = p.copy()
    p2[[3, 50]] = np.nan
    q2 = benjamini_hochberg(p2.reshape(10, 20)).ravel()
    assert np.isnan(q2[[3, 50]]).all()
    ok = ~np.isnan(p2)
    np.testing.assert_allclose(q2[ok], stats.false_discovery_control(p2[ok]), rtol=1e-12)


def _planted(seed, rows=20, cols=20, n_a=30, n_b=24, shift=1.5, n_planted=15):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_a, rows, cols))
    b = rng.normal(size=(n_b, rows, cols))
    flat = rng.choice(rows * cols, n_planted, replace=False)
    truth = np.zeros(rows * cols, dtype=bool)
    truth[flat] = True
    b.reshape(n_b, -1)[:, flat] += shift
    return a, b, truth.reshape(rows, cols)


def test_pixel_test_finds_planted_pixels_and_bh_controls_the_rest():
    a, b, truth = _planted(3, shift=2.0)
    res = pixel_test(a, b, layout=_grid(20, 20), alpha=0.05)
    assert res.significant.shape == (20, 20)
    assert res.significant[truth].all(), "every planted pixel must be found"
    false_pos = int((res.significant & ~truth).sum())
    assert false_pos <= 3
    sig = res.significant_genes
    assert set(zip(sig["row"], sig["col"])) == set(zip(*np.nonzero(res.significant)))
    assert all(g == f"G{r}_{c}" for g, r, c in zip(sig["gene"], sig["row"], sig["col"]))
    assert (sig.loc[sig["diff"].notna(), "diff"] > 0).mean() > 0.8  # B shifted up
    # matches scipy pixel by pixel
    for r, c in [(0, 0), tuple(np.argwhere(truth)[0])]:
        ref = stats.mannwhitneyu(a[:, r, c], b[:, r, c], method="asymptotic")
        row = res.table[(res.table["row"] == r) & (res.table["col"] == c)].iloc[0]
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-10)
        assert row["statistic"] == pytest.approx(ref.statistic)


def test_bh_controls_false_discoveries_under_the_global_null():
    # complete null: BH at 0.05 makes any discovery in at most ~5% of experiments
    runs_with_fp = 0
    uncorrected = 0
    for seed in range(40):
        a, b, _ = _planted(100 + seed, rows=10, cols=10, n_planted=0)
        res = pixel_test(a, b, alpha=0.05)
        runs_with_fp += bool(res.significant.any())
        uncorrected += int((res.p < 0.05).sum())
    assert runs_with_fp <= 6
    # while the uncorrected test flags about 5% of the 4,000 null pixels
    assert 120 <= uncorrected <= 300


def test_pixel_test_skips_empty_and_constant_pixels():
    a, b, truth = _planted(4, rows=6, cols=6, n_planted=4, shift=3)
    a[:, 0, 0] = np.nan
    b[:, 0, 0] = np.nan
    a[:, 1, 1] = 2.0
    b[:, 1, 1] = 2.0
    grid = _grid(6, 6, empty=[(5, 5)])
    res = pixel_test(a, b, layout=grid)
    assert np.isnan(res.q[0, 0]) and np.isnan(res.q[1, 1]) and np.isnan(res.q[5, 5])
    assert not res.significant[0, 0] and not res.significant[5, 5]
    assert len(res.table) == 36 - 3
    with pytest.raises(DataError, match="at least 2"):
        pixel_test(a[:1], b)
    with pytest.raises(DataError, match="same size"):
        pixel_test(a, b[:, :3])


def _synthetic_comparison(n_cells=8, batches=("b0", "b1", "b2", "b3"), shape=(6, 7), seed=0, effect=None):
    """Counterfactual images where batches b2/b3 raise a planted set of pixels."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_cells, *shape)).astype(np.float32)
    images, kinds = {"Original": base}, {"Original": "expression"}
    for b in batches:
        img = base + rng.normal(0, 0.3, size=base.shape).astype(np.float32)
        if effect is not None and b in ("b2", "b3"):
            img[:, effect] += 2.0
        images[counterfactual_name(b)] = img
        kinds[counterfactual_name(b)] = "expression"
    return Comparison(
        images=images, kinds=kinds, expression_limits=(-3, 3), difference_limits=(-1, 1),
        batches=list(batches), row_batches=["b0"] * n_cells, row_labels=[None] * n_cells,
        row_titles=[f"c{i}" for i in range(n_cells)], row_cells=[[f"c{i}"] for i in range(n_cells)],
        top_genes=pd.DataFrame(), top_genes_overall=pd.DataFrame(), layout=_grid(*shape),
    )


def test_counterfactual_group_test_on_comparison(tmp_path):
    effect = np.zeros((6, 7), dtype=bool)
    effect[2, 2:5] = True
    comp = _synthetic_comparison(effect=effect)
    res = counterfactual_group_test(comp, ["b0", "b1"], ["b2", "b3"], names=("low", "high"))
    assert res.n_a == 16 and res.n_b == 16
    assert res.significant[effect].all()
    assert (res.significant & ~effect).sum() <= 2
    assert {"mean_low", "mean_high", "q", "gene"} <= set(res.table.columns)
    out = res.to_csv(tmp_path / "mwu.csv", significant_only=True)
    back = pd.read_csv(out)
    assert set(back["gene"]) >= {"G2_2", "G2_3", "G2_4"}
    with pytest.raises(DataError, match="both groups"):
        counterfactual_group_test(comp, ["b0", "b1"], ["b1"])
    with pytest.raises(DataError, match="no counterfactual"):
        counterfactual_group_test(comp, ["b0"], ["zz"])
    assert issubclass(DataError, ScMEDALError)


def test_write_csv_atomic(tmp_path):
    p = tmp_path / "sub" / "t.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), p)
    assert pd.read_csv(p)["a"].tolist() == [1, 2]
    assert [f.name for f in p.parent.iterdir()] == ["t.csv"]
