"""Hostile and broken model files, unwritable save locations, first-epoch failures and hyperparameter
checks (issue 13 items 4-7 and "Also"): every case is refused with a ModelFileError/ScMEDALError that
names the problem, fast, without allocating what the file claims, and nothing on disk is lost."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import napari_scmedal as sm
from napari_scmedal.data.synthetic import make_synthetic
from napari_scmedal.errors import ModelFileError, ScMEDALError, TrainingError

TINY = dict(preset="quick", hidden=[32, 8], latent=4, batch_size=32, threads=1, train_fec=False)


@pytest.fixture(scope="module")
def syn():
    return make_synthetic(n_cells=300, n_genes=120, n_batches=2, n_labels=2, seed=3)


@pytest.fixture(scope="module")
def model_file(syn, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sm.ScMEDAL(syn, batch_key="batch", label_key="cell_type", n_genes=100, seed=0, **TINY)
        m.train(max_epochs=3, patience=3)
    path = tmp_path_factory.mktemp("mf") / "m.safetensors"
    m.save(path)
    return m, path


def _rewrite(src, dst, edit_meta=None, edit_header=None):
    """Copy a model file with its JSON metadata (and optionally the safetensors header) edited."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["scmedal"])
    if edit_meta:
        edit_meta(meta)
    header["__metadata__"]["scmedal"] = json.dumps(meta)
    if edit_header:
        edit_header(header)
    hb = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
    return dst


def test_a_file_claiming_huge_layers_is_refused_fast_without_allocating(model_file, tmp_path):
    _, path = model_file

    def huge(meta):
        meta["config"]["hidden"] = [16384, 16384]

    liar = _rewrite(path, tmp_path / "liar.safetensors", huge)
    with pytest.raises(ModelFileError, match=r"tensor 'fe\.[a-z_.0-9]+' has shape \[.*\] in the file, the "
                                             r"configuration needs \[.*\]"):
        sm.ScMEDAL.load(liar)
    # time and peak memory of the refusal, measured in a fresh process (torch's allocations included)
    code = (
        "import resource, time, sys\n"
        "from napari_scmedal.errors import ModelFileError\n"
        "from napari_scmedal.model import ScMEDAL\n"
        "ScMEDAL.load(sys.argv[2])\n"  # imports and a real load first: the refusal itself is measured
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    ScMEDAL.load(sys.argv[1])\n"
        "except ModelFileError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('loaded')\n"
        "print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(liar), str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    elapsed, extra_kib = out.stdout.split()
    assert float(elapsed) < 1.0 and int(extra_kib) < 200 * 1024  # the claimed layers would need 4.8 GB


def test_weight_mismatch_names_the_tensor(model_file, tmp_path):
    _, path = model_file

    def drop(header):
        k = next(k for k in header if k.startswith("re."))
        header.pop(k)

    # a tensor removed from the header (offsets no longer cover the file -> refused as damaged either way)
    with pytest.raises(ModelFileError):
        sm.ScMEDAL.load(_rewrite(path, tmp_path / "a.safetensors", edit_header=drop))

    def lat(meta):
        meta["config"]["latent"] = 5

    with pytest.raises(ModelFileError, match=r"tensor '(fe|re)\..+' has shape"):
        sm.ScMEDAL.load(_rewrite(path, tmp_path / "b.safetensors", lat))

    def rename(header):
        k = next(k for k in header if k.startswith("fe.") and k.endswith("weight"))
        header[k.replace("fe.", "fe.bogus_", 1)] = header.pop(k)

    with pytest.raises(ModelFileError, match=r"missing tensor\(s\) \['fe\..*unexpected tensor\(s\) \['fe\.bogus_"):
        sm.ScMEDAL.load(_rewrite(path, tmp_path / "c.safetensors", edit_header=rename))


@pytest.mark.parametrize("field, value, match", [
    ("scale_max", "same", "scale_max"),
    ("scale_min", float("nan"), "scale_min"),
    ("input_kind", "banana", "input_kind"),
    ("target_sum", -5.0, "target_sum"),
    ("genes", [], "genes"),
    ("batches", ["only"], "batches"),
    ("normalization_genes", "ABC", "normalization_genes"),
])
def test_recipe_values_are_validated_at_load(model_file, tmp_path, field, value, match):
    _, path = model_file

    def edit(meta):
        r = meta["recipe"]
        r[field] = r["scale_min"] if value == "same" else value

    bad = _rewrite(path, tmp_path / f"{field}.safetensors", edit)
    with pytest.raises(ModelFileError, match=f"recipe's {match} .* is invalid"):
        sm.ScMEDAL.load(bad)


@pytest.mark.parametrize("key, value", [("hidden", []), ("latent", 0), ("lr", -1.0), ("bn_momentum", 3.0),
                                        ("kl_estimator", "magic"), ("prior_sd", 0)])
def test_stored_hyperparameters_are_validated_at_load(model_file, tmp_path, key, value):
    _, path = model_file

    def edit(meta):
        meta["config"][key] = value

    with pytest.raises(ModelFileError, match=f"stored hyperparameter {key}=.* is invalid"):
        sm.ScMEDAL.load(_rewrite(path, tmp_path / "h.safetensors", edit))


@pytest.mark.parametrize("kw, match", [
    (dict(hidden=[]), "hidden=\\[\\] is invalid: it must be a non-empty list"),
    (dict(lr=0.0), "lr=0.0 is invalid"),
    (dict(lr=float("nan")), "lr=nan is invalid"),
    (dict(latent=0), "latent=0 is invalid"),
    (dict(batch_size=1), "batch_size=1 is invalid"),
    (dict(split_fractions=[0.5, 0.5, 0.5]), "split_fractions"),
    (dict(hidden=[64, -3]), "hidden"),
])
def test_hyperparameters_are_validated_at_construction(syn, kw, match):
    with pytest.raises(ScMEDALError, match=match):
        sm.ScMEDAL(syn, batch_key="batch", n_genes=100, **dict(TINY, **kw))


def test_nan_in_the_first_epoch_leaves_the_network_untrained_and_savable(syn, tmp_path):
    m = sm.ScMEDAL(syn, batch_key="batch", label_key="cell_type", n_genes=100, seed=0, **dict(TINY, lr=1e8))
    with pytest.raises(TrainingError, match="UNTRAINED") as exc:
        m.train(max_epochs=3)
    assert "initial ones" not in str(exc.value)
    assert m.trained_kinds == [] and m.history["fe"]["best_epoch"] is None
    for net in m.nets.values():  # initial weights restored, never NaN
        assert all(np.isfinite(v.numpy()).all() for v in net.state_dict().values() if v.is_floating_point())
    with pytest.raises(ScMEDALError, match="not trained"):
        m.get_latent_representation("fe")
    path = m.save(tmp_path / "untrained.safetensors")
    back = sm.ScMEDAL.load(path)
    assert back.trained_kinds == []
    with pytest.raises(ScMEDALError, match="not trained"):
        back.get_latent_representation("fe", adata=syn)


def test_save_to_an_unwritable_place_is_a_clear_error(model_file, tmp_path, monkeypatch):
    m, _ = model_file
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(ModelFileError, match="is a file, not a folder"):
        m.save(afile / "m.safetensors")
    with pytest.raises(ModelFileError, match="does not exist"):
        m.save(tmp_path / "nofolder" / "m.safetensors")
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # as a read-only folder does (root ignores chmod)
    with pytest.raises(ModelFileError, match="not writable \\(Permission denied\\)"):
        m.save(tmp_path / "m.safetensors")
    monkeypatch.undo()
    assert afile.read_text() == "keep me"


def test_stale_temp_files_of_killed_saves_are_removed_on_the_next_save(model_file, tmp_path):
    m, _ = model_file
    target = tmp_path / "m.safetensors"
    stale = tmp_path / ".m.safetensors.abcd1234.tmp"   # what a SIGKILLed save leaves
    fresh = tmp_path / ".m.safetensors.zzzz9999.tmp"   # maybe a save still running elsewhere
    other = tmp_path / ".notes.txt.abcd1234.tmp"       # not ours to remove
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    m.save(target)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([target.name, fresh.name, other.name])
    assert sm.ScMEDAL.load(target).genes == m.genes
