"""Training in a separate process (napari_scmedal.train_process, used by the model widget, issue 12): the
same model as training in process, errors and warnings come back, cancel and a dying child are handled."""

import multiprocessing as mp
import os
import signal
import tempfile
import warnings

import numpy as np
import pytest

from napari_scmedal.errors import DataError, ScMEDALError, TrainingHealthWarning
from napari_scmedal.train_process import train_in_subprocess

CTOR = dict(batch_key="batch", label_key="cell_line", n_genes=64, preset="quick", seed=0, threads=1)


def test_same_model_as_training_in_process(synthetic_adata):
    from napari_scmedal.embedding import pca_2d
    from napari_scmedal.model import ScMEDAL

    a = synthetic_adata
    ctor = dict(CTOR, label_key="cell_type")
    ref = ScMEDAL(a, **ctor).train(max_epochs=3, health_warnings=False)
    events, lat = [], {}
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("scmedal-train-")}
    model = train_in_subprocess(a, ctor, {"max_epochs": 3, "health_warnings": False}, progress=events.append,
                                latents_out=lat)
    assert model.trained_kinds == ref.trained_kinds == ["fe", "fec", "re"]
    assert [(e["model"], e["epoch"]) for e in events] == [(k, i) for k in ("fe", "fec", "re") for i in (1, 2, 3)]
    for kind in ref.trained_kinds:
        z_ref = ref.get_latent_representation(kind, adata=a)
        np.testing.assert_allclose(model.get_latent_representation(kind, adata=a), z_ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(lat[kind][0], z_ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(lat[kind][1], pca_2d(z_ref), rtol=0, atol=1e-4)
        # the training data came back too: inference without adata=, as for the in-process model
        np.testing.assert_allclose(model.get_latent_representation(kind), ref.get_latent_representation(kind),
                                   rtol=0, atol=1e-5)
    for k in ("fe", "fec", "re"):
        h, r = model.history[k], ref.history[k]
        assert (h["best_epoch"], h["stopped"], len(h["epochs"])) == (r["best_epoch"], r["stopped"], len(r["epochs"]))
        np.testing.assert_allclose(h["best_val"], r["best_val"], rtol=1e-6)
    assert model.derived == ref.derived
    assert model.health.keys() == ref.health.keys()
    assert all(model.health[k]["ok"] == ref.health[k]["ok"] for k in ref.health)
    assert model.splits == ref.splits and model.config == ref.config and model.recipe.to_dict() == ref.recipe.to_dict()
    assert {k: v.tolist() for k, v in model._split_idx.items()} == {k: v.tolist() for k, v in ref._split_idx.items()}
    np.testing.assert_array_equal(model._prepared.X, ref._prepared.X)
    # counterfactual state (anchors and "balanced" statistics saved by the child) gives the same counterfactuals
    cf, cf_ref = model.get_counterfactual_expression(ref.batches[1]), ref.get_counterfactual_expression(ref.batches[1])
    np.testing.assert_allclose(cf, cf_ref, rtol=0, atol=1e-4)
    # and the returned model trains again like the in-process one
    model.train(max_epochs=1, health_warnings=False)
    assert len(model.history["fe"]["epochs"]) == 1
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("scmedal-train-")}
    assert not after - before  # the temp folder with the model file is gone


def test_child_errors_come_back_with_their_class_and_message(cellbench_adata):
    from napari_scmedal.model import ScMEDAL

    one = cellbench_adata[cellbench_adata.obs["batch"] == cellbench_adata.obs["batch"].iloc[0]].copy()
    with pytest.raises(DataError) as ref:
        ScMEDAL(one, **CTOR)
    with pytest.raises(DataError) as err:
        train_in_subprocess(one, CTOR, {"max_epochs": 1})
    assert str(err.value) == str(ref.value) and "batch" in str(err.value)
    assert "Traceback" in str(err.value.__cause__)  # the child's traceback


def test_cancel_stops_after_the_current_epoch_with_the_best_weights(cellbench_adata):
    seen = []
    model = train_in_subprocess(cellbench_adata, CTOR, {"max_epochs": 500, "health_warnings": False},
                                progress=seen.append, cancel=lambda: len(seen) >= 2)
    h = model.history["fe"]
    assert h["stopped"] == "cancelled" and h["best_epoch"] is not None and len(h["epochs"]) < 500
    assert model.trained_kinds == ["fe"]  # later networks are not trained after a cancel
    assert model.get_latent_representation("fe", adata=cellbench_adata).shape == (cellbench_adata.n_obs, 50)


def test_health_warnings_are_reemitted(cellbench_adata):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = train_in_subprocess(cellbench_adata, CTOR, {"max_epochs": 1})
    health = [w for w in rec if issubclass(w.category, TrainingHealthWarning)]
    assert bool(health) == any(h["problems"] for h in model.health.values())


def test_a_killed_child_raises_a_clear_error(cellbench_adata):
    def _kill(info):
        for p in mp.active_children():
            if p.name == "scmedal-training":
                os.kill(p.pid, signal.SIGKILL)

    with pytest.raises(ScMEDALError, match="stopped unexpectedly.*SIGKILL"):
        train_in_subprocess(cellbench_adata, CTOR, {"max_epochs": 500}, progress=_kill)


def test_a_script_without_a_main_guard_is_not_run_again_in_the_child(tmp_path):
    """spawn would import the caller's main script again in the child (a napari script without an
    ``if __name__ == "__main__":`` guard would open a second viewer there): the child skips it."""
    import subprocess
    import sys

    marker = tmp_path / "runs.txt"
    script = tmp_path / "script.py"
    script.write_text(
        "from napari_scmedal.data.synthetic import make_synthetic\n"
        "from napari_scmedal.train_process import train_in_subprocess\n"
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "a = make_synthetic(n_cells=300, n_genes=100, n_batches=3, n_labels=2, seed=0)\n"
        "m = train_in_subprocess(a, dict(batch_key='batch', n_genes=32, preset='quick', threads=1),\n"
        "                        {'max_epochs': 1, 'health_warnings': False})\n"
        "print('trained', m.trained_kinds)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained ['fe', 're']" in out.stdout
    assert marker.read_text() == "ran\n"
