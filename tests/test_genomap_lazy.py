"""Lazy genomap stacks (issue 7, item 3): equal to the eager projection, nothing computed up front, only
the chunk of a requested cell computed, thread-safe, bounded cache, clear errors."""

import threading

import numpy as np
import pytest

from napari_scmedal.data import make_synthetic
from napari_scmedal.errors import (
    DataError,
    LayoutError,
    RecipeMismatchError,
    ScMEDALError,
)
from napari_scmedal.genomap import (
    difference_stack,
    genomap_stack,
    stack_limits,
    stack_source,
)
from napari_scmedal.genomap.ensure import layout_columns

N_GENES = 100  # a 10 x 10 genomap
TINY = {"hidden": [32, 8], "latent": 4, "preset": "quick", "seed": 0, "n_genes": N_GENES}


def _synthetic():
    return make_synthetic(n_cells=400, n_genes=160, n_batches=3, n_labels=3, seed=0)


@pytest.fixture(scope="module")
def mem_model():
    from napari_scmedal import ScMEDAL

    adata = _synthetic()
    model = ScMEDAL(adata, batch_key="batch", label_key="cell_type", **TINY)
    model.train(max_epochs=2)
    return model, adata


@pytest.fixture(scope="module")
def disk_model(tmp_path_factory):
    from napari_scmedal import ScMEDAL

    path = tmp_path_factory.mktemp("lazy") / "synthetic.h5ad"
    _synthetic().write_h5ad(path)
    model = ScMEDAL(str(path), batch_key="batch", label_key="cell_type", **TINY)
    assert model.backed
    model.train(max_epochs=2)
    return model, path


class _Counter:
    """Wraps model.get_version on the instance and records the rows of every call."""

    def __init__(self, model, monkeypatch):
        self.rows = []
        inner = model.get_version

        def wrapped(version, adata=None, rows=None, method="balanced"):
            self.rows.append(tuple(rows) if rows is not None else None)
            return inner(version, adata=adata, rows=rows, method=method)

        monkeypatch.setattr(model, "get_version", wrapped)


def _eager(model, version, adata=None):
    """The eager reference: predict_versions on every cell, projected with the model's layout."""
    batches = [version[3:]] if version.startswith("cf:") else None
    ev = model.predict_versions(adata=adata, batches=batches)
    layout = model.layout
    return layout.project(ev[version][:, layout_columns(layout, model.genes)])


@pytest.mark.parametrize("version", ["original", "fe", "cf:batch2"])
def test_lazy_equals_eager_projection_in_memory(mem_model, version):
    model, _ = mem_model
    stack = genomap_stack(model, version=version, chunk_cells=32)
    n = model.n_cells()
    R, C = model.layout.shape
    assert stack.shape == (n, R, C) and stack.dtype == np.float32
    assert stack.chunks[0][0] == 32 and sum(stack.chunks[0]) == n
    eager = _eager(model, version)
    # a slice that crosses a chunk boundary, and the last (short) chunk
    np.testing.assert_allclose(stack[20:70].compute(), eager[20:70], rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(stack[n - 5:].compute(), eager[n - 5:], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.isnan(eager[0][~model.layout.mask]).all()  # empty pixels stay NaN


def test_lazy_equals_eager_with_an_explicit_adata(mem_model):
    model, adata = mem_model
    sub = adata[100:180].copy()
    stack = genomap_stack(model, sub, "cf:batch0", chunk_cells=16)
    assert stack.shape[0] == 80
    np.testing.assert_allclose(stack[5:40].compute(), _eager(model, "cf:batch0", adata=sub)[5:40],
                               rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("version", ["original", "fe", "cf:batch1"])
def test_lazy_equals_eager_when_trained_from_disk(disk_model, version):
    model, _ = disk_model
    stack = genomap_stack(model, version=version, chunk_cells=50)
    assert stack.shape[0] == model.n_cells()
    eager = _eager(model, version)
    np.testing.assert_allclose(stack[40:120].compute(), eager[40:120], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_on_disk_path_as_adata_reads_only_its_chunk(disk_model, monkeypatch):
    import anndata as ad

    model, path = disk_model
    calls = _Counter(model, monkeypatch)
    stack = genomap_stack(model, str(path), "fe", chunk_cells=64)
    assert stack.shape[0] == ad.read_h5ad(path, backed="r").n_obs
    img = stack[130].compute()
    assert calls.rows == [(128, 192)]
    eager = _eager(model, "fe", adata=ad.read_h5ad(path))
    np.testing.assert_allclose(img, eager[130], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_backed_view_as_adata_uses_the_views_rows(disk_model):
    import anndata as ad

    model, path = disk_model
    backed = ad.read_h5ad(path, backed="r")
    view = backed[np.arange(150, 260)]
    stack = genomap_stack(model, view, "cf:batch0", chunk_cells=32)
    assert stack.shape[0] == 110
    eager = _eager(model, "cf:batch0", adata=ad.read_h5ad(path)[150:260].copy())
    np.testing.assert_allclose(stack[30:75].compute(), eager[30:75], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_nothing_is_computed_at_construction_and_one_cell_runs_only_its_chunk(mem_model, monkeypatch):
    model, _ = mem_model
    model.layout  # noqa: B018 - built by the tests above or here; not a get_version call either way
    calls = _Counter(model, monkeypatch)
    stack = genomap_stack(model, version="cf:batch1", chunk_cells=32)
    assert calls.rows == []
    src = stack_source(stack)
    assert src is not None and src.calls == 0 and src.cached_bytes == 0
    img = stack[70].compute()
    assert calls.rows == [(64, 96)]  # only the chunk holding cell 70
    assert img.shape == model.layout.shape
    # scrolling inside the chunk is served from the cache, no model call
    for k in range(64, 96):
        stack[k].compute()
    assert calls.rows == [(64, 96)]
    # the cache is bounded: 4 chunks at most, however many were visited
    for k in range(0, stack.shape[0], 32):
        stack[k].compute()
    assert src.cached_bytes <= 4 * 32 * img.size * 4
    assert len(calls.rows) == stack.numblocks[0]  # each other chunk once (64:96 still cached)


def test_chunks_are_safe_from_many_threads(mem_model):
    model, _ = mem_model
    stack = genomap_stack(model, version="cf:batch2", chunk_cells=16)
    eager = _eager(model, "cf:batch2")
    results, errors = {}, []

    def work(k):
        try:
            results[k] = stack[k].compute(scheduler="synchronous")
        except Exception as exc:  # noqa: BLE001 - any error in a thread is collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(0, 400, 23)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, img in results.items():
        np.testing.assert_allclose(img, eager[k], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_difference_stack_and_limits(mem_model):
    model, _ = mem_model
    diff = difference_stack(model, None, "cf:batch0", "original", chunk_cells=64)
    cf, orig = _eager(model, "cf:batch0"), _eager(model, "original")
    np.testing.assert_allclose(diff[10:20].compute(), cf[10:20] - orig[10:20], rtol=1e-5, atol=1e-5,
                               equal_nan=True)
    stack = genomap_stack(model, version="original", chunk_cells=64)
    lo, hi = stack_limits(stack, n_chunks=2)
    first = orig[:64][np.isfinite(orig[:64])]
    assert lo < hi and lo <= np.percentile(first, 50) <= hi
    d_lo, d_hi = stack_limits(diff, symmetric=True)
    assert d_lo == -d_hi and d_hi > 0


def test_float16_stack(mem_model):
    model, _ = mem_model
    stack = genomap_stack(model, version="original", dtype=np.float16)
    assert stack.dtype == np.float16 and stack[3].compute().dtype == np.float16


def test_bad_arguments_raise_clear_errors(mem_model):
    from napari_scmedal import ScMEDAL
    from napari_scmedal.genomap import compute_layout

    model, adata = mem_model
    with pytest.raises(DataError, match="unknown target batch 'nope'.*batch0"):
        genomap_stack(model, version="cf:nope")
    with pytest.raises(ScMEDALError, match="unknown version 'counterfactual'"):
        genomap_stack(model, version="counterfactual")
    with pytest.raises(ScMEDALError, match="chunk_cells must be a whole number >= 1"):
        genomap_stack(model, chunk_cells=0)
    with pytest.raises(ScMEDALError, match="floating"):
        genomap_stack(model, dtype=np.int32)
    with pytest.raises(ScMEDALError, match="unknown counterfactual method"):
        genomap_stack(model, version="cf:batch0", method="swap")
    untrained = ScMEDAL(adata, batch_key="batch", label_key="cell_type", **TINY)
    with pytest.raises(ScMEDALError, match="not trained|call model.train"):
        genomap_stack(untrained, version="fe", layout=model.layout)
    with pytest.raises(ScMEDALError, match="not trained yet. Call model.train"):
        genomap_stack(untrained, version="cf:batch1", layout=model.layout)
    # data that does not fit the model fails when the stack is built, not later while scrolling
    with pytest.raises(RecipeMismatchError, match="missing"):
        genomap_stack(model, adata[:, :50].copy(), "original")
    # a layout over other genes
    other = compute_layout(np.random.default_rng(0).random((50, 16)), shape=(4, 4),
                           genes=[f"x{i}" for i in range(16)], seed=0)
    with pytest.raises(LayoutError, match="genes the model does not use"):
        genomap_stack(model, layout=other)
