"""Per-pixel mixed model ``value ~ group + (1 | batch)`` (napari_scmedal.lmm).

Equality with statsmodels' MixedLM (REML, Wald z p-values) on small stacks, balanced and
unbalanced, the closed form against the profile optimisation, validation, calibration and power on
synthetic data, the Comparison-based variant and the CLI option.
"""
import importlib.util
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_scmedal.analysis import PixelTestResult, counterfactual_group_test, mixed_model_pixels, mixed_model_test
from napari_scmedal.errors import DataError
from napari_scmedal.lmm import (MixedModelCancelled, _batch_stats, _design, _fit_balanced, _fit_profile, _loglik,
                                counterfactual_mixed_model_test, counterfactual_pixel_test)


ROOT = Path(__file__).resolve().parents[1]


def _data(counts, n_pix=24, seed=0, sd_batch=0.6, effect=0.8, shape=None):
    """Images (n, n_pix, 1) or (n, *shape): batch random intercepts of varying size (some ~0) and a
    group effect on every other pixel; half the batches 'ctrl', half 'case'."""
    rng = np.random.default_rng(seed)
    n_b = len(counts)
    batch = np.repeat(np.arange(n_b), counts)
    group = np.where(np.arange(n_b) < n_b // 2, "ctrl", "case")[batch]
    sd = rng.uniform(0.0, sd_batch, n_pix)
    sd[:4] = 0.0  # no batch effect: REML estimates often 0 there
    y = rng.normal(size=(len(batch), n_pix)) + (rng.normal(size=(n_b, n_pix)) * sd)[batch]
    y += (group == "case")[:, None] * effect * (np.arange(n_pix) % 2 == 0)
    y = y.reshape(len(batch), *(shape or (n_pix, 1)))
    return y, group, np.array([f"b{j:02d}" for j in batch])


def _reference():
    """The referees shared with benchmarks/bench_lmm.py (statsmodels pixel by pixel, dense REML)."""
    spec = importlib.util.spec_from_file_location("lmm_reference", ROOT / "benchmarks" / "lmm_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_REF = _reference()
_dense_reml = _REF.dense_reml
_statsmodels = _REF.statsmodels_pixels


@pytest.mark.parametrize("counts", [[10] * 8, [3, 9, 5, 12, 4, 7, 10, 6]], ids=["balanced", "unbalanced"])
def test_equals_statsmodels_mixedlm(counts):
    y, group, batch = _data(counts, seed=len(set(counts)))
    ours = mixed_model_pixels(y, group, batch)
    assert ours.attrs["balanced"] == (len(set(counts)) == 1)
    assert ours.attrs["reference"] == "case"  # first in sorted order; coef = ctrl - case
    sm = _statsmodels(y, group, batch)
    g = (ours["var_batch"] / ours["var_resid"]).to_numpy()
    assert (g == 0).sum() >= 2  # some pixels with a zero variance-component estimate
    # statsmodels with Nelder-Mead reaches the REML maximum: equal wherever it converges with positive variance
    nm = _statsmodels(y, group, batch, method="nm", maxiter=4000)
    ok = (nm["converged"] & (nm["re"] > 1e-6)).to_numpy()
    assert ok.sum() >= 10
    np.testing.assert_allclose(ours["p"][ok], nm["p"][ok], atol=1e-3, rtol=0)
    np.testing.assert_allclose(ours["coef"][ok], nm["coef"][ok], atol=1e-3, rtol=0)
    # statsmodels' default optimiser (BFGS) sometimes stops short of the maximum on flat likelihoods while
    # reporting convergence: wherever it disagrees with us, our estimate has the higher REML likelihood
    positive = (sm["converged"] & (sm["re"] > 1e-6)).to_numpy()
    close = np.abs(ours["p"] - sm["p"]).to_numpy() < 1e-3
    assert (positive & close).sum() >= 8
    flat = y.reshape(len(y), -1)
    for k in np.flatnonzero(positive & ~close):
        assert _dense_reml(flat[:, k], group, batch, g[k]) > _dense_reml(flat[:, k], group, batch, sm["g"][k])


def test_closed_form_equals_profile_optimum():
    y, group, batch = _data([15] * 10, n_pix=200, seed=3)
    d = _design(group, batch, len(group), None)
    means, within = _batch_stats(y.reshape(len(y), -1), d)
    closed, profile = _fit_balanced(d, means, within), _fit_profile(d, means, within)
    assert (closed == 0).any() and (closed > 0).any()
    np.testing.assert_allclose(profile, closed, atol=1e-7, rtol=1e-6)
    assert np.all(profile[closed == 0] == 0)  # boundary estimates are exactly 0
    flat = y.reshape(len(y), -1)
    for k in range(3):  # the sufficient-statistic likelihood equals the dense one
        for gk in (0.0, 0.3):
            np.testing.assert_allclose(_loglik(d, means[k:k + 1], within[k:k + 1], np.array([gk]))[0]
                                       - _loglik(d, means[k:k + 1], within[k:k + 1], np.array([1.0]))[0],
                                       _dense_reml(flat[:, k], group, batch, gk)
                                       - _dense_reml(flat[:, k], group, batch, 1.0), rtol=1e-9, atol=1e-9)


def test_known_effect_detected_and_null_controlled():
    rng = np.random.default_rng(7)
    n_b, m, n_pix = 20, 12, 600
    batch = np.repeat(np.arange(n_b), m)
    group = np.where(np.arange(n_b) < 10, "ctrl", "case")[batch]
    y = rng.normal(size=(n_b * m, n_pix)) + 0.7 * rng.normal(size=(n_b, n_pix))[batch]
    effect = np.zeros(n_pix, bool)
    effect[:60] = True
    y[:, effect] += 2.0 * (group == "ctrl")[:, None]
    df = mixed_model_pixels(y.reshape(-1, 20, 30), group, batch, dist="t")
    sig = df["q"].to_numpy() < 0.05
    assert sig[effect].mean() > 0.9
    assert sig[~effect].sum() / sig.sum() < 0.12  # false discovery proportion near the 5% FDR
    assert (df["coef"][effect] > 0).all() and abs(df["coef"][effect].mean() - 2.0) < 0.2  # ctrl - case
    null = mixed_model_pixels(y[:, ~effect].reshape(len(y), -1, 1), group, batch, dist="t")
    assert 0.02 < (null["p"] < 0.05).mean() < 0.08  # t with n_batches - 2 df: calibrated
    assert (null["q"] < 0.05).sum() <= 2
    z = mixed_model_pixels(y[:, ~effect].reshape(len(y), -1, 1), group, batch)
    assert (z["p"] <= null["p"]).all()  # the z-test is the more liberal


def test_empty_constant_and_no_gene_pixels_and_layout():
    y, group, batch = _data([6] * 6, n_pix=12, shape=(3, 4))
    y[:, 0, 0] = np.nan  # empty
    y[:, 0, 1] = 2.5  # constant
    y[:, 1, 0] = np.unique(batch, return_inverse=True)[1]  # varies between batches only: not estimable
    grid = np.array([[f"g{r}{c}" for c in range(4)] for r in range(3)], dtype=object)
    grid[2, 3] = None  # no gene: not tested
    df = mixed_model_pixels(y, group, batch, layout=grid, reference="ctrl")
    assert list(df.columns[:5]) == ["pixel", "gene", "coef", "p", "q"]
    assert df["pixel"].tolist() == list(range(12)) and df["gene"][5] == "g11"
    assert df[["coef", "p", "q"]].iloc[[0, 1, 4, 11]].isna().all().all()
    assert df["p"].iloc[[2, 3, 5, 6, 7, 8, 9, 10]].notna().all() and df.attrs["reference"] == "ctrl"
    nothing = mixed_model_pixels(np.ones_like(y), group, batch, dist="t")  # no pixel testable: all NaN, no error
    assert nothing[["coef", "p", "q"]].isna().all().all()
    assert "gene" not in mixed_model_pixels(y, group, batch).columns
    flipped = mixed_model_pixels(y, group, batch, layout=grid, reference="case")
    np.testing.assert_allclose(flipped["coef"], -df["coef"], equal_nan=True)
    np.testing.assert_allclose(flipped["p"], df["p"], equal_nan=True)


@pytest.mark.parametrize("change, message", [
    (lambda y, g, b: (y, np.append(g[:-1], "ctrl"), b), "one group per batch"),
    (lambda y, g, b: (y, np.full(len(g), "ctrl"), b), "exactly two groups"),
    (lambda y, g, b: (y, np.where(b == "b00", "other", g), np.where(b == "b01", "b00", b)), "one group per batch"),
    (lambda y, g, b: (y, np.where(b == "b05", "x", g), b), "exactly two groups"),
    (lambda y, g, b: (y[b > "b01"], g[b > "b01"], b[b > "b01"]), "at least 2 batches"),
    (lambda y, g, b: (y, g[:-1], b), "one group and one batch per image"),
    (lambda y, g, b: (y[:, 0], g, b), "(n, rows, cols)"),
    (lambda y, g, b: (np.where(np.arange(len(g))[:, None, None] == 3, np.nan, y), g, b), "NaN or infinite"),
    (lambda y, g, b: (y[::4], g[::4], b[::4]), "single image"),
])
def test_validation_errors(change, message):
    y, group, batch = _data([4] * 6, n_pix=6)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mixed_model_pixels(*change(y, group, batch))


def test_other_argument_errors():
    y, group, batch = _data([4] * 6, n_pix=6)
    with pytest.raises(DataError, match="reference="):
        mixed_model_pixels(y, group, batch, reference="nope")
    with pytest.raises(DataError, match="dist must be"):
        mixed_model_pixels(y, group, batch, dist="f")
    with pytest.raises(DataError, match="alpha"):
        mixed_model_test(y, group, batch, alpha=2)


def test_progress_chunks_and_cancel():
    y, group, batch = _data([3, 5, 4, 6, 5, 3], n_pix=50)
    seen = []
    df = mixed_model_pixels(y, group, batch, chunk_pixels=16, progress=seen.append)
    assert [s["done"] for s in seen] == [16, 32, 48, 50] and seen[-1]["total"] == 50
    pd.testing.assert_frame_equal(df, mixed_model_pixels(y, group, batch))
    ev = threading.Event()
    ev.set()
    with pytest.raises(MixedModelCancelled):
        mixed_model_pixels(y, group, batch, cancel=ev)
    with pytest.raises(MixedModelCancelled, match="after 16 of 50"):
        mixed_model_pixels(y, group, batch, chunk_pixels=16, cancel=lambda: len(seen) > 4,
                           progress=seen.append)


def test_pixel_test_result_figure_and_csv(tmp_path):
    from napari_scmedal.figures import pixel_test_figure

    y, group, batch = _data([8] * 8, n_pix=30, shape=(5, 6), effect=3.0)
    res = mixed_model_test(y, group, batch, alpha=0.05)
    assert isinstance(res, PixelTestResult) and res.test == "mixedlm"
    assert res.significant.shape == (5, 6) and res.significant.sum() >= 10
    assert {"gene", "row", "col", "mean_case", "mean_ctrl", "diff", "statistic", "p", "q", "significant",
            "se", "var_batch"} <= set(res.table.columns)
    assert res.table["q"].is_monotonic_increasing
    df = mixed_model_pixels(y, group, batch)
    np.testing.assert_allclose(res.q.ravel(), df["q"], equal_nan=True)
    csv = pd.read_csv(res.to_csv(tmp_path / "sig.csv", significant_only=True))
    assert len(csv) == res.significant.sum()
    title = pixel_test_figure(res)._suptitle.get_text()
    assert "value ~ group + (1 | batch)" in title
    mw = counterfactual_group_test  # the Mann-Whitney title says what it assumes
    assert mw is not None and "independent" in PixelTestResult(res.table, res.significant, res.p, res.q, res.diff,
                                                                0.05).description


def _comparison(n_cells=12, batches=("b1", "b2", "b3", "b4", "b5"), seed=0):
    from napari_scmedal.compare import Comparison, counterfactual_name

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_cells, 4, 4))
    images = {counterfactual_name(b): (base + rng.normal(size=(1, 4, 4)) + 0.3 * rng.normal(size=base.shape)
                                       ).astype(np.float32) for b in batches}
    grid = np.array([[f"G{r}{c}" for c in range(4)] for r in range(4)], dtype=object)
    return Comparison(images=images, kinds={k: "expression" for k in images}, expression_limits=(-3, 3),
                      difference_limits=(-1, 1), batches=list(batches), row_batches=["b1"] * n_cells,
                      row_labels=[None] * n_cells, row_titles=[str(i) for i in range(n_cells)],
                      row_cells=[[str(i)] for i in range(n_cells)], top_genes=pd.DataFrame(),
                      top_genes_overall=pd.DataFrame(), layout=grid)


def test_counterfactual_variant_and_dispatcher():
    from napari_scmedal.compare import counterfactual_name

    comp = _comparison()
    mapping = {"b1": "ctrl", "b2": "ctrl", "b3": "case", "b4": "case"}
    res = counterfactual_mixed_model_test(comp, mapping, reference="ctrl")
    imgs = np.concatenate([comp.images[counterfactual_name(b)] for b in mapping])
    direct = mixed_model_pixels(imgs, np.repeat(list(mapping.values()), 12), np.repeat(list(mapping), 12),
                                layout=comp.layout, reference="ctrl")
    np.testing.assert_allclose(res.p.ravel(), direct["p"])
    assert res.group_a == "ctrl" and res.n_a == res.n_b == 24 and res.meta["n_cells"] == 12
    assert set(res.table["gene"]) <= {f"G{r}{c}" for r in range(4) for c in range(4)}
    via = counterfactual_pixel_test(comp, ["b1", "b2"], ["b3", "b4"], method="mixedlm", names=("ctrl", "case"))
    np.testing.assert_allclose(via.p, res.p)
    mw = counterfactual_pixel_test(comp, ["b1", "b2"], ["b3"])
    assert mw.test == "mannwhitney" and "independent" in mw.description
    with pytest.raises(DataError, match="no counterfactual"):
        counterfactual_mixed_model_test(comp, {"b1": "a", "b2": "a", "zz": "b", "b3": "b"})
    with pytest.raises(DataError, match="both groups"):
        counterfactual_pixel_test(comp, ["b1", "b2"], ["b2", "b3"], method="mixedlm")
    with pytest.raises(DataError, match="Unknown pixel test"):
        counterfactual_pixel_test(comp, ["b1"], ["b2"], method="ttest")
    with pytest.raises(DataError, match="single image"):
        counterfactual_mixed_model_test(_comparison(n_cells=1), mapping)


def test_cli_genomap_mixedlm(tmp_path):
    """`scmedal genomap --test A B --test-method mixedlm` end to end on a tiny trained model."""
    import json

    from napari_scmedal.cli import build_parser, main
    from napari_scmedal.datasets import cellbench

    assert build_parser().parse_args(["genomap", "m", "d", "--out", "o"]).test_method == "mannwhitney"
    a = cellbench()
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(a.obs["batch"].to_numpy() == b), 25, replace=False)
                                   for b in sorted(a.obs["batch"].unique())]))
    a = a[keep].copy()
    data, model, out = tmp_path / "tiny.h5ad", tmp_path / "m.safetensors", tmp_path / "gm"
    a.write_h5ad(data)
    assert main(["train", str(data), "--batch-key", "batch", "--genes", "36", "--preset", "quick", "--epochs", "1",
                 "--out", str(model), "--threads", "1", "-q"]) == 0
    assert main(["genomap", str(model), str(data), "--group", "cell_line=H1975", "--per-cell", "--max-cells", "2",
                 "--test", "CELseq2_3cl,CELseq2_5cl_p1", "CELseq2_5cl_p2,CELseq2_5cl_p3", "--test-method", "mixedlm",
                 "--test-dist", "t", "--dpi", "40", "--out", str(out), "-q"]) == 0
    pt = pd.read_csv(out / "pixel_test.csv")
    assert {"gene", "p", "q", "significant", "diff", "se", "var_batch"} <= set(pt.columns) and len(pt) <= 36
    assert np.load(out / "pixel_test_overlay.npz")["significant"].shape == (6, 6)
    summary = json.loads((out / "genomaps.json").read_text())["pixel_test"]
    assert summary["method"] == "mixedlm" and summary["dist"] == "t"
    assert summary["batches_b"] == ["CELseq2_5cl_p2", "CELseq2_5cl_p3"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["genomap", "m", "d", "--out", "o", "--test-method", "ttest"])


@pytest.mark.parametrize("method", ["mannwhitney", "mixedlm"])
def test_both_pixel_tests_refuse_an_averaged_comparison(method):
    """One row per cell is checked in the core (pixeltests.counterfactual_images), not only in the explorer:
    an averaged comparison (one mean row) is refused by either test, from Python and hence the CLI."""
    import dataclasses

    comp = dataclasses.replace(_comparison(n_cells=1), averaged=True)
    with pytest.raises(DataError, match="one row per cell"):
        counterfactual_pixel_test(comp, ["b1", "b2"], ["b3", "b4"], method=method)
