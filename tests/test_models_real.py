"""Science check on the bundled real CellBench sample with the quick preset (seed 0).

Done criteria of issue 3 on the TEST split: FE batch ASW < 0.05, RE batch ASW > 0.3, FE cell-line
ASW > 0.2. FEC is left out here to keep the suite fast (it is covered on synthetic data).
"""

from __future__ import annotations

import numpy as np
import pytest

import napari_scmedal as sm
from napari_scmedal.metrics import evaluate_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_model():
    from napari_scmedal.datasets import cellbench

    model = sm.ScMEDAL(cellbench(), batch_key="batch", label_key="cell_line", preset="quick", seed=0,
                       threads=1, train_fec=False)
    model.train()
    return model


def test_quick_preset_meets_the_done_criteria_on_the_sample(real_model):
    tab = evaluate_model(real_model, "test", target="protocol")
    fe, re = tab["latents"]["fe"], tab["latents"]["re"]
    assert fe["batch"]["asw"] < 0.05
    assert re["batch"]["asw"] > 0.3
    assert fe["label"]["asw"] > 0.2
    assert fe["batch"]["asw"] < re["batch"]["asw"] - 0.25
    # the RE latent identifies batches far better than FE (1/DB by batch)
    assert re["batch"]["inv_db"] > 3 * fe["batch"]["inv_db"]
    assert tab["classification"]["target"] == "protocol" and tab["classification"]["fe+re"] > 0.9
    for kind in ("fe", "re"):
        h = real_model.history[kind]
        assert h["stopped"] == "early_stopping" and h["best_epoch"] < len(h["epochs"])


def test_reconstructions_on_real_data_are_faithful(real_model):
    te = real_model._split_idx["test"]
    x = real_model._prepared.X_log[te]
    for kind in ("fe", "re"):
        rec = real_model.get_reconstruction(kind)[te]
        # per-gene means are reproduced, and per-cell profiles correlate with the input
        assert np.corrcoef(rec.mean(0), x.mean(0))[0, 1] > 0.95
        r = [np.corrcoef(rec[i], x[i])[0, 1] for i in range(0, len(te), 10)]
        assert np.median(r) > 0.5
