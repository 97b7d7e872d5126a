"""Out-of-core training, data-parallel training (2-process gloo) and the scaling options (issue 7).

Data: the bundled real CellBench sample (streaming preprocessing vs the in-memory scanpy pipeline) and
seeded synthetic counts with a known batch effect written to .h5ad files in tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from napari_scmedal import ScMEDAL
from napari_scmedal.cli import main
from napari_scmedal.data import make_synthetic, prepare_training
from napari_scmedal.data.ondisk import H5adSource, stream_prepare
from napari_scmedal.datasets import cellbench_path
from napari_scmedal.distributed import Comm
from napari_scmedal.errors import DataError, ScMEDALError
from napari_scmedal.models.loaders import StreamingSource

TINY = dict(batch_key="batch", label_key="cell_type", n_genes=100, preset="quick", seed=3, hidden=[32, 8],
            latent=4)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def syn_file(tmp_path):
    a = make_synthetic(n_cells=900, n_genes=300, n_batches=3, n_labels=3, seed=1)
    p = tmp_path / "syn.h5ad"
    a.write_h5ad(p)
    return a, p


# ------------------------------------------------------------------------------ streaming preprocessing
@pytest.mark.parametrize("n_genes", [1024, 2916])
def test_stream_prepare_equals_the_in_memory_pipeline_on_real_data(n_genes):
    a = ad.read_h5ad(cellbench_path())
    td = prepare_training(a, "batch", label_key="cell_line", n_genes=n_genes)
    plan = stream_prepare(cellbench_path(), "batch", label_key="cell_line", n_genes=n_genes, chunk_cells=257)
    # same genes (Seurat HVG from streamed sums == scanpy), same scaling, same split, same cells
    assert plan.recipe.to_dict() == td.recipe.to_dict()
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(plan.splits[k], td.splits[k])
    assert list(plan.obs_names) == list(td.prepared.obs_names)
    lazy = plan.lazy()
    np.testing.assert_array_equal(lazy.X[100:700], td.prepared.X[100:700])  # bit-identical model inputs
    rows = [900, 3, 3, 41]
    np.testing.assert_array_equal(lazy.subset(rows).X_log, td.prepared.X_log[rows])
    np.testing.assert_array_equal(lazy.batch_onehot[5:9], td.prepared.batch_onehot[5:9])


def test_stream_prepare_filters_cells_and_genes_like_scanpy(tmp_path):
    a = make_synthetic(n_cells=400, n_genes=200, n_batches=2, n_labels=2, seed=4)
    X = a.X.toarray()
    X[:7] = 0
    X[:7, :3] = 1  # 7 cells detecting 3 genes (< 10): filtered out
    X[:, 150:160] = 0
    X[10:12, 150:160] = 5  # genes detected in 2 cells (< 3): filtered out
    a.X = sp.csr_matrix(X)
    p = tmp_path / "f.h5ad"
    a.write_h5ad(p)
    td = prepare_training(a, "batch", n_genes=50)
    plan = stream_prepare(p, "batch", n_genes=50, chunk_cells=64)
    assert plan.info["cells_removed"] == 7 and plan.info["genes_removed"] == 10
    assert plan.recipe.to_dict() == td.recipe.to_dict()
    np.testing.assert_array_equal(np.asarray(plan.lazy().X), td.prepared.X)


def test_stream_prepare_reads_dense_matrices_and_layers(tmp_path):
    a = make_synthetic(n_cells=300, n_genes=120, seed=2)
    b = a.copy()
    b.layers["counts"] = a.X.toarray()
    b.X = np.log1p(a.X.toarray())  # a log layer in X, raw counts (dense) in a layer
    p = tmp_path / "d.h5ad"
    b.write_h5ad(p)
    plan = stream_prepare(p, "batch", n_genes=40, layer="counts", chunk_cells=50)
    td = prepare_training(a, "batch", n_genes=40)
    assert plan.recipe.genes == td.recipe.genes and plan.recipe.layer == "counts"
    np.testing.assert_array_equal(np.asarray(plan.lazy().X_log), td.prepared.X_log)


def test_bad_on_disk_input_is_refused_with_the_fix_and_never_modified(tmp_path):
    a = make_synthetic(n_cells=200, n_genes=80, seed=0)
    csc = a.copy()
    csc.X = sp.csc_matrix(csc.X)
    p = tmp_path / "csc.h5ad"
    csc.write_h5ad(p)
    with pytest.raises(DataError, match="CSC.*tocsr"):
        stream_prepare(p, "batch", n_genes=40)
    bad = a.copy()
    bad.X = bad.X.toarray()
    bad.X[5, 5] = np.nan
    q = tmp_path / "nan.h5ad"
    bad.write_h5ad(q)
    before = _sha(q)
    with pytest.raises(DataError, match="NaN"):
        stream_prepare(q, "batch", n_genes=40)
    neg = a.copy()
    neg.X = neg.X.toarray()
    neg.X[1, 1] = -2
    r = tmp_path / "neg.h5ad"
    neg.write_h5ad(r)
    with pytest.raises(DataError, match="negative"):
        stream_prepare(r, "batch", n_genes=40)
    one = a.copy()
    one.obs["batch"] = "only"
    s = tmp_path / "one.h5ad"
    one.write_h5ad(s)
    with pytest.raises(DataError, match="batch"):
        ScMEDAL(s, batch_key="batch", n_genes=40)
    with pytest.raises(DataError, match="Layer 'nope' not found"):
        stream_prepare(s, "batch", n_genes=40, layer="nope")
    (tmp_path / "x.h5ad").write_text("not hdf5")
    with pytest.raises(DataError, match="not an HDF5"):
        ScMEDAL(tmp_path / "x.h5ad", batch_key="batch")
    with pytest.raises(DataError, match="backed=True.*path"):
        ScMEDAL(a, batch_key="batch", n_genes=40, backed=True)
    assert _sha(q) == before


def test_h5ad_source_reads_rows_in_any_order(syn_file):
    a, p = syn_file
    with H5adSource(p) as src:
        assert src.shape == a.shape and src.sparse
        np.testing.assert_array_equal(src.read(10, 20).toarray(), a.X[10:20].toarray())
        rows = [500, 2, 2, 899, 40]
        np.testing.assert_array_equal(src.read_rows(rows, window=100).toarray(), a.X[rows].toarray())


# ------------------------------------------------------------------------------ out-of-core training
def _max_weight_diff(m1, m2) -> float:
    out = 0.0
    for k in m1.nets:
        s1, s2 = m1.nets[k].state_dict(), m2.nets[k].state_dict()
        out = max(out, max(float((s1[n].double() - s2[n].double()).abs().max()) for n in s1))
    return out


def test_backed_and_in_memory_training_give_the_same_model(syn_file):
    a, p = syn_file
    m_mem = ScMEDAL(a, **TINY).train(max_epochs=3, patience=5)
    m_disk = ScMEDAL(p, chunk_cells=100_000, **TINY).train(max_epochs=3, patience=5)  # one block
    assert m_disk.backed and not m_mem.backed
    assert m_disk.recipe.to_dict() == m_mem.recipe.to_dict() and m_disk.splits == m_mem.splits
    assert _max_weight_diff(m_mem, m_disk) == 0.0
    for kind in ("fe", "fec", "re"):
        assert m_disk.history[kind]["val"]["total"] == m_mem.history[kind]["val"]["total"]
    # a backed AnnData is accepted as well, and inference reads the file block by block
    backed = ad.read_h5ad(p, backed="r")
    m_b = ScMEDAL(backed, chunk_cells=100_000, **TINY).train(max_epochs=3, patience=5)
    assert _max_weight_diff(m_mem, m_b) == 0.0
    np.testing.assert_allclose(m_disk.get_latent_representation("fe", adata=p),
                               m_mem.get_latent_representation("fe", adata=a), atol=1e-5)
    backed.file.close()


def test_small_blocks_still_train_and_save_a_usable_model(syn_file, tmp_path):
    a, p = syn_file
    m = ScMEDAL(p, chunk_cells=64, **TINY).train(max_epochs=10, patience=10)
    ref = ScMEDAL(a, **TINY).train(max_epochs=10, patience=10)
    for kind in ("fe", "re"):
        val, val_ref = m.history[kind]["val"]["total"], ref.history[kind]["val"]["total"]
        assert val[-1] < 0.7 * max(val)  # it learns from blocks of 64 cells ...
        assert abs(val[-1] - val_ref[-1]) < 0.2 * val_ref[-1]  # ... about as well as from a global shuffle
    v = m.predict_versions(batches=["batch0"], rows=(100, 140))
    assert v["cf:batch0"].shape == (40, 100) and np.isfinite(v["cf:batch0"]).all()
    path = m.save(tmp_path / "m.safetensors")
    back = ScMEDAL.load(path)
    assert back.genes == m.genes and back.history["fe"]["config"]["backed"] is True
    np.testing.assert_allclose(back.get_latent_representation("re", adata=p),
                               m.get_latent_representation("re"), atol=1e-5)
    # anchors for counterfactuals were read from the file and saved: the loaded model needs no training data
    np.testing.assert_allclose(back.get_counterfactual_expression("batch2", adata=a)[:20],
                               m.get_counterfactual_expression("batch2")[:20], atol=1e-4)


def test_streaming_source_shuffles_within_and_across_blocks_with_bounded_buffers(syn_file):
    _, p = syn_file
    plan = stream_prepare(p, "batch", n_genes=100, chunk_cells=100)
    train = plan.splits["train"]
    src = StreamingSource(plan, train, "cpu", buffer_blocks=2, seed=0)
    assert len(src.blocks) == 9 and src.n == train.size
    comm = Comm()
    loads = []
    orig = src._load

    def spy(ids):
        t = orig(ids)
        loads.append(t.n)
        return t

    src._load = spy
    gen = torch.Generator().manual_seed(0)
    orders = []
    for epoch in (1, 2):
        rows = []
        for b in src.epoch(32, gen, epoch, comm):
            # identify rows by their model-space values (unique per cell here)
            rows.append(b.X[:, :5].sum(1).numpy())
        orders.append(np.concatenate(rows))
    # each epoch visits every training row once (a trailing batch of < 2 rows may be dropped)
    assert all(train.size - 1 <= o.size <= train.size for o in orders)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled between epochs
    assert max(loads) <= 2 * 100  # a buffer never holds more than buffer_blocks x chunk_cells rows
    # rows of one minibatch come from different file blocks (shuffled across blocks)
    first = next(src.epoch(32, torch.Generator().manual_seed(1), 3, comm))
    all_x = np.asarray(plan.lazy().subset(np.sort(train)).X)[:, :5].sum(1)
    where = [int(np.flatnonzero(np.isclose(all_x, v))[0]) for v in first.X[:, :5].sum(1).numpy()]
    blocks = {int(plan.cells[np.sort(train)[w]] // 100) for w in where}
    assert len(blocks) == 2


class _FakeComm:
    def __init__(self, rank, world):
        self.rank, self.world, self.active = rank, world, False


@pytest.mark.parametrize("chunk_cells", [100, 100_000])
def test_streaming_shards_are_disjoint_equal_length_and_cover_the_split(syn_file, chunk_cells):
    _, p = syn_file
    plan = stream_prepare(p, "batch", n_genes=100, chunk_cells=chunk_cells)
    train = plan.splits["train"]
    src = StreamingSource(plan, train, "cpu", buffer_blocks=2, seed=0, world=2)  # one block is cut for 2 ranks
    seen, steps = [], []
    for rank in (0, 1):
        batches = list(src.epoch(16, torch.Generator().manual_seed(0), 1, _FakeComm(rank, 2)))
        steps.append(len(batches))
        seen.append([r.tobytes() for b in batches for r in b.X.numpy()])  # a cell's exact values
    assert steps[0] == steps[1] > 0  # DDP lock-step: the same number of minibatches on every rank
    assert len(set(seen[0]) | set(seen[1])) == len(seen[0]) + len(seen[1])
    # (no cell twice: each rank reads its own shard)
    # ranks take whole blocks, so per epoch up to one block per rank may be left out (another one each epoch)
    assert len(seen[0]) + len(seen[1]) >= train.size - 2 * max(b.size for b in src.blocks)


def test_step_cap_precision_and_host_resident_data(syn_file):
    a, _ = syn_file
    m = ScMEDAL(a, **TINY).train(max_epochs=2, patience=5, max_steps_per_epoch=3)
    assert m.history["fe"]["steps"] == 6 and m.history["re"]["steps"] == 6
    ref = ScMEDAL(a, **TINY).train(max_epochs=2, patience=5)
    host = ScMEDAL(a, **TINY).train(max_epochs=2, patience=5, data_on_device=False)
    assert _max_weight_diff(ref, host) == 0.0  # where the data lives does not change the result
    bf = ScMEDAL(a, **TINY).train(max_epochs=2, patience=5, precision="bf16")
    assert bf.history["re"]["precision"] == "bf16"
    assert np.isfinite(bf.history["re"]["val"]["total"]).all()
    d = _max_weight_diff(ref, bf)
    assert 0.0 < d < 1.0  # autocast really ran in bfloat16, and training stayed close to float32
    with pytest.raises(ScMEDALError, match="precision"):
        ScMEDAL(a, **TINY).train(max_epochs=1, precision="fp16")


def test_cli_trains_out_of_core_without_touching_the_input(syn_file, tmp_path):
    _, p = syn_file
    before = _sha(p)
    out = tmp_path / "cli.safetensors"
    rc = main(["train", str(p), "--batch-key", "batch", "--label-key", "cell_type", "--genes", "100",
               "--preset", "quick", "--epochs", "2", "--backed", "--chunk-cells", "128", "--steps-per-epoch", "4",
               "--no-layout", "--out", str(out), "-q", "--threads", "1"])
    assert rc == 0 and out.exists()
    assert _sha(p) == before
    m = ScMEDAL.load(out)
    assert m.history["fe"]["steps"] == 8 and m.history["fe"]["config"]["backed"] is True
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # a normal file, not mkstemp's private mode
    assert main(["train", str(p), "--batch-key", "batch", "--backed", "--chunk-cells", "0", "--out",
                 str(tmp_path / "x.safetensors"), "-q"]) == 1


# ------------------------------------------------------------------------------ torch.distributed (gloo)
def _torchrun(args, cwd, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "napari_scmedal", "train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("backed", [False, True])
def test_two_process_gloo_training_completes_and_its_model_loads(syn_file, tmp_path, backed):
    a, p = syn_file
    out = tmp_path / "ddp.safetensors"
    args = [str(p), "--batch-key", "batch", "--label-key", "cell_type", "--genes", "100", "--preset", "quick",
            "--epochs", "3", "--seed", "3", "--no-layout", "--threads", "1", "--out", str(out)]
    if backed:
        args += ["--backed", "--chunk-cells", "150"]
    r = _torchrun(args, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "on 2 processes (gloo" in r.stderr
    assert not list(tmp_path.glob(".ddp.safetensors*"))  # no temporary file left behind
    m = ScMEDAL.load(out)
    for kind in ("fe", "fec", "re"):
        h = m.history[kind]
        assert h["world_size"] == 2 and h["max_rank_divergence"] == 0.0  # both optimisers / RE params in sync
        assert len(h["epochs"]) == 3 and np.isfinite(h["val"]["total"]).all()
    # every rank streamed only its blocks, yet the recipe equals the single-process one
    single = stream_prepare(p, "batch", label_key="cell_type", n_genes=100) if backed else \
        prepare_training(a, "batch", label_key="cell_type", n_genes=100)
    assert m.recipe.to_dict() == single.recipe.to_dict()
    z = m.get_latent_representation("fe", adata=a)
    assert z.shape == (900, 50) and np.isfinite(z).all()


def test_a_model_of_too_many_cells_to_list_still_saves_and_loads(syn_file, tmp_path, monkeypatch):
    import napari_scmedal.modelfile as modelfile
    from napari_scmedal.metrics import evaluate_model

    a, _ = syn_file
    m = ScMEDAL(a, **TINY).train(max_epochs=1)
    monkeypatch.setattr(modelfile, "MAX_SPLIT_JSON", 1000)  # as if it had millions of cells
    with pytest.warns(RuntimeWarning, match="not stored"):
        path = m.save(tmp_path / "big.safetensors")
    back = ScMEDAL.load(path)
    assert back.splits == {} and back.genes == m.genes
    np.testing.assert_allclose(back.get_latent_representation("fe", adata=a), m.get_latent_representation("fe"),
                               atol=1e-5)
    with pytest.raises(DataError, match="does not carry its train/val/test split"):
        evaluate_model(back, "test", adata=a)


def test_embed_backed_writes_latents_into_a_copy_of_the_file(syn_file, tmp_path):
    a, p = syn_file
    model_path = tmp_path / "m.safetensors"
    ScMEDAL(p, chunk_cells=128, **TINY).train(max_epochs=2).save(model_path)
    before = _sha(p)
    out = tmp_path / "embedded.h5ad"
    assert main(["embed", str(model_path), str(p), "--backed", "--out", str(out), "-q"]) == 0
    assert _sha(p) == before
    res = ad.read_h5ad(out)
    m = ScMEDAL.load(model_path)
    for k in ("fe", "fec", "re"):
        np.testing.assert_allclose(res.obsm[f"X_scmedal_{k}"], m.get_latent_representation(k, adata=a), atol=1e-5)
    assert list(res.uns["scmedal"]["genes"]) == m.genes
    assert (res.X != a.X).nnz == 0 and list(res.obs_names) == list(a.obs_names)  # the rest is the input's
    assert main(["embed", str(model_path), str(p), "--backed", "--reconstructions", "--out",
                 str(tmp_path / "r.h5ad"), "-q"]) == 1


def test_genomap_and_evaluate_backed_match_in_memory(syn_file, tmp_path):
    import json

    a, p = syn_file
    model_path = tmp_path / "m.safetensors"
    m = ScMEDAL(p, chunk_cells=128, **TINY).train(max_epochs=2)
    from napari_scmedal.compare import ensure_layout

    ensure_layout(m, seed=0)
    m.save(model_path)
    before = _sha(p)
    outs = {}
    for mode in ("memory", "backed"):
        extra = ["--backed"] if mode == "backed" else []
        out = tmp_path / f"gm_{mode}"
        assert main(["genomap", str(model_path), str(p), "--group", "cell_type=type1", "--batches", "batch0",
                     "batch2", "--out", str(out), "-q", *extra]) == 0
        ev = tmp_path / f"ev_{mode}"
        assert main(["evaluate", str(model_path), str(p), "--target", "cell_type", "--out", str(ev), "-q",
                     *extra]) == 0
        outs[mode] = (json.loads((out / "genomaps.json").read_text()),
                      json.loads((ev / "metrics.json").read_text()))
    (g_mem, e_mem), (g_bk, e_bk) = outs["memory"], outs["backed"]
    np.testing.assert_allclose(g_bk["expression_limits"], g_mem["expression_limits"], rtol=1e-5)
    for kind in ("fe", "re"):
        assert e_bk["latents"][kind]["batch"]["asw"] == pytest.approx(e_mem["latents"][kind]["batch"]["asw"], abs=1e-4)
    assert _sha(p) == before


def test_backed_views_edited_obs_and_rewritten_files(syn_file, tmp_path):
    """A backed view trains on its own cells only and infers in its own order; a batch column added to a backed
    AnnData in memory serves evaluation too; a file rewritten between row-range calls is read anew."""
    from napari_scmedal.metrics import evaluate_model

    a, p = syn_file
    backed = ad.read_h5ad(p, backed="r")
    view = backed[:300]
    m = ScMEDAL(view, chunk_cells=128, **TINY)
    assert m.n_cells() == 300 and set(m.splits["train"]) <= set(a.obs_names[:300])
    mem = ScMEDAL(view, backed=False, **TINY)
    assert mem.n_cells() == 300 and not mem.backed
    m.train(max_epochs=1)
    perm = backed[[7, 3, 5, 4]]  # not in file order
    np.testing.assert_allclose(m.get_latent_representation("fe", adata=perm),
                               m.get_latent_representation("fe", adata=a[[7, 3, 5, 4]]), atol=1e-5)
    np.testing.assert_array_equal(m.get_version("original", adata=perm, rows=(0, 4)),
                                  m.get_version("original", adata=a[[7, 3, 5, 4]], rows=(0, 4)))
    edited = ad.read_h5ad(p, backed="r")
    edited.obs["donor"] = edited.obs["batch"].astype(str)  # only in memory, not in the file
    e = ScMEDAL(edited, **dict(TINY, batch_key="donor")).train(max_epochs=1)
    assert evaluate_model(e, "test")["n_cells"] == len(e.splits["test"])
    # a file replaced between row-range calls is not served from the old view
    q = tmp_path / "q.h5ad"
    a.write_h5ad(q)
    first = m.get_version("original", adata=str(q), rows=(0, 5))
    b = a.copy()
    b.X = b.X[::-1].copy()  # other cells' counts in the same rows
    b.write_h5ad(tmp_path / "q2.h5ad")
    os.replace(tmp_path / "q2.h5ad", q)
    again = m.get_version("original", adata=str(q), rows=(0, 5))
    np.testing.assert_array_equal(again, m.get_version("original", adata=b, rows=(0, 5)))
    assert not np.array_equal(first, again)
    backed.file.close()
    edited.file.close()


def test_fe_without_a_class_loss_leaves_the_class_head_out_of_the_synchronised_module():
    from napari_scmedal.models import FE, FETask

    net = FE(50, 3, n_labels=3, hidden=(16, 8), latent=4)
    assert FETask(net, 1e-3, w_class=0.0)._ae.class_head is None  # no gradient: DDP would wait for it
    assert FETask(net, 1e-3, w_class=1.0)._ae.class_head is net.class_head
