"""Shared test fixtures.

* Torch runs single-threaded in every test (the CI machine has 2 cores shared by several jobs).
* ``cellbench_adata``: a fresh in-memory copy of the bundled real sample (1,408 cells x 3,500 genes).
* ``synthetic_adata``: seeded synthetic counts (600 cells x 300 genes, 3 batches, 3 cell types) with a
  known multiplicative batch effect (``varm["batch_effect"]``), see napari_scmedal.data.synthetic.
* ``cellbench_full_path``: the full real CellBench file (read-only), skipping only tests that need it
  when it is not on this machine.
* The plugin's settings go to a per-test folder (``NAPARI_SCMEDAL_CONFIG_DIR``), never the user's.
* ``sample_model``: ``(model, adata)``, a real scMEDAL (FE, FEC, RE) trained briefly (quick preset, 3 epochs,
  256 genes: 16 x 16 genomaps) on the bundled sample, once per session (the GUI tests share it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

FULL_CELLBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cellbench_5batches.h5ad"


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch_session():
    """One torch thread for the whole run, module- and session-scoped fixtures included (they are set up
    before any function-scoped fixture): the only place tests set the thread count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _single_thread_torch(_single_thread_torch_session):
    """Back to one thread after every test (a test may train with threads=N)."""
    import torch

    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _plugin_config_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SCMEDAL_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="session")
def sample_model():
    from napari_scmedal.datasets import cellbench
    from napari_scmedal.model import ScMEDAL

    adata = cellbench()
    model = ScMEDAL(adata, batch_key="batch", label_key="cell_line", n_genes=256, preset="quick", seed=0)
    model.train(max_epochs=3, health_warnings=False)
    return model, adata


@pytest.fixture(scope="session")
def _cellbench_cached():
    from napari_scmedal.datasets import cellbench

    return cellbench()


@pytest.fixture
def cellbench_adata(_cellbench_cached):
    """A fresh copy of the bundled CellBench sample for each test (tests may modify it)."""
    return _cellbench_cached.copy()


@pytest.fixture
def synthetic_adata():
    from napari_scmedal.data.synthetic import make_synthetic

    return make_synthetic(n_cells=600, n_genes=300, n_batches=3, n_labels=3, seed=0)


@pytest.fixture
def cellbench_full_path():
    if not FULL_CELLBENCH.exists():
        pytest.skip(f"full CellBench file not available at {FULL_CELLBENCH}")
    return FULL_CELLBENCH
