"""The library defaults on the full real CellBench file (issue 11, "done when"): no preset chosen, scores
on all cells with scikit-learn's raw silhouette, judged on the mean of seeds 0-2, every network healthy.

Runs where ../shared/data/cellbench_5batches.h5ad is beside the checkout (as in CI); about 5 minutes
with one thread.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import napari_scmedal as sm

pytestmark = pytest.mark.slow
FULL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cellbench_5batches.h5ad"


@pytest.fixture(scope="module")
def default_models():
    if not FULL.exists():
        pytest.skip(f"full CellBench file not available at {FULL}")
    from napari_scmedal.data import read_h5ad

    adata = read_h5ad(FULL)
    out = []
    for seed in (0, 1, 2):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            model = sm.ScMEDAL(adata, batch_key="batch", label_key="cell_line", seed=seed, threads=1,
                               train_fec=False).train()
        model._rec = rec
        out.append(model)
    return out


def _asw(model, kind, key):
    from sklearn.metrics import silhouette_score

    z = model.get_latent_representation(kind)
    return float(silhouette_score(z, model._adata.obs[key].astype(str).to_numpy()))


def test_defaults_on_the_full_file_separate_cell_lines_and_batches(default_models):
    """Issue 11's criterion, mean of seeds 0-2: FE batch ASW <= 0 with cell-line ASW >= 0.26 (Harmony's
    level), RE batch ASW >= 0.5. The FE batch-centring term (fe_w_center=3) is what brings batch ASW below
    zero (0.012-0.025 without it); measured -0.034 / 0.489 (docs/model.md)."""
    fe_batch = np.mean([_asw(m, "fe", "batch") for m in default_models])
    fe_label = np.mean([_asw(m, "fe", "cell_line") for m in default_models])
    re_batch = np.mean([_asw(m, "re", "batch") for m in default_models])
    assert fe_batch <= 0.0
    assert fe_label >= 0.26
    assert re_batch >= 0.5


def test_defaults_are_derived_and_every_network_is_healthy(default_models):
    from napari_scmedal import TrainingHealthWarning

    for m in default_models:
        d = m.derived
        assert m.preset == "auto" and d["n_train"] == len(m.splits["train"])
        assert d["settings"]["batch_size"] == 32 and d["reasons"]["batch_size"].startswith("derived")
        assert not [w for w in m._rec if issubclass(w.category, TrainingHealthWarning)]
        for kind in ("fe", "re"):
            h = m.health[kind]
            assert h["ok"] and h["gene_mean_r2"] > 0.95 and h["cell_r_median"] > 0.7
            hist = m.history[kind]
            # never an untrained epoch: at least the minimum number of steps, best weights after the start
            assert len(hist["epochs"]) >= d["settings"]["min_epochs"] and hist["best_epoch"] > 1
        assert m.health["re"]["head_acc"] > 0.9
