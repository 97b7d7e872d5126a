"""The scmedal command end to end on tiny real data, the reduced demo, and bad input.

A tiny h5ad (cells subsampled from the bundled CellBench sample) is trained once per module
through ``scmedal train`` with a few epochs on few genes; the other subcommands reuse that model.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_scmedal.cli import build_parser, main


N_GENES = 49  # 7 x 7 genomaps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(data path, model path, AnnData) -- trained once through the CLI."""
    from napari_scmedal.datasets import cellbench

    d = tmp_path_factory.mktemp("cli")
    a = cellbench()
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(a.obs["batch"].to_numpy() == b), 40, replace=False)
        for b in sorted(a.obs["batch"].unique())
    ]))
    a = a[keep].copy()
    data = d / "tiny.h5ad"
    a.write_h5ad(data)
    model = d / "tiny_model.safetensors"
    rc = main(["train", str(data), "--batch-key", "batch", "--label-key", "cell_line", "--genes", str(N_GENES),
               "--preset", "quick", "--epochs", "2", "--out", str(model), "--threads", "1", "-q"])
    assert rc == 0
    return data, model, a


def _digest(p: Path) -> bytes:
    import hashlib

    return hashlib.sha256(p.read_bytes()).digest()


def test_train_writes_a_loadable_model_with_layout(tiny):
    from napari_scmedal.model import ScMEDAL

    data, model_path, a = tiny
    m = ScMEDAL.load(model_path)
    assert len(m.genes) == N_GENES
    assert m.batches == sorted(a.obs["batch"].unique())
    assert m.layout is not None and tuple(m.layout.shape) == (7, 7)


def test_train_default_auto_preset_prints_derived_settings_and_health(tiny, tmp_path, capsys):
    from napari_scmedal._training_report import health_lines, health_problems
    from napari_scmedal.model import ScMEDAL

    data, _, a = tiny
    model_path = tmp_path / "auto.safetensors"
    assert build_parser().parse_args(["train", str(data), "--batch-key", "b", "--out", "m"]).preset == "auto"
    rc = main(["train", str(data), "--batch-key", "batch", "--label-key", "cell_line", "--genes", "30",
               "--max-epochs", "2", "--no-layout", "--threads", "1", "--out", str(model_path)])
    err = capsys.readouterr().err
    assert rc == 0 and model_path.is_file()  # saved (exit 0) whatever the health says
    m = ScMEDAL.load(model_path)
    d = m.derived
    assert m.preset == "auto" and d["preset"] == "auto" and d["n_train"] > 0
    assert f"settings (auto preset, {d['n_train']} training cells):" in err
    # one line per setting with its value and reason: derived from the data unless given
    assert "max_epochs = 2  (given)" in err
    bs = d["settings"]["batch_size"]
    assert f"batch_size = {bs}  (derived: {d['n_train']} training cells" in err
    assert f"lr = {d['settings']['lr']:g}  (derived: " in err
    for key in ("patience", "min_epochs", "steps_per_epoch"):
        assert f"  {key} = {d['settings'][key]}  (" in err
    for kind in ("fe", "fec", "re"):
        best = m.history[kind]["best_epoch"]
        assert f"{kind.upper()}: 2 epochs, best epoch {best}, stopped: reached max epochs" in err
    # the health stored in the file is what was printed: a line per network, a WARNING per problem
    assert set(m.health) == {"fe", "fec", "re"}
    assert "training health:" in err
    for line in health_lines(m.health):
        assert line in err
    for p in health_problems(m.health):
        assert f"WARNING: training health: {p}" in err
    assert ("the model was saved, but its training health check found" in err) == bool(health_problems(m.health))


def test_train_max_time_caps_every_network(tiny, tmp_path, capsys):
    from napari_scmedal.model import ScMEDAL

    data, _, a = tiny
    model_path = tmp_path / "capped.safetensors"
    rc = main(["train", str(data), "--batch-key", "batch", "--genes", "30", "--max-epochs", "200",
               "--max-time", "0.01", "--no-layout", "--threads", "1", "--out", str(model_path)])
    err = capsys.readouterr().err
    assert rc == 0
    m = ScMEDAL.load(model_path)
    for kind in ("fe", "re"):  # each network ends after the epoch that crosses its share of the cap
        h = m.history[kind]
        assert h["stopped"] == "max_time" and h["best_epoch"] is not None and len(h["epochs"]) < 200
        assert f"{kind.upper()}: {len(h['epochs'])} epoch" in err and "stopped: time cap reached" in err


def test_health_problems_are_printed_even_when_quiet(capsys):
    from napari_scmedal import cli

    health = {"fe": {"ok": True, "problems": [], "status": "checked", "gene_mean_r2": 0.98},
              "re": {"ok": False, "problems": ["RE reconstructs poorly; train longer."], "status": "checked",
                     "gene_mean_r2": 0.2}}
    assert cli.report_health(health, cli._Console(quiet=True)) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["[scmedal] WARNING: training health: RE: RE reconstructs poorly; train longer."]
    assert cli.report_health(health, cli._Console()) == 1
    err = capsys.readouterr().err
    assert "FE ok: gene-mean R^2 0.98" in err and "RE PROBLEM: gene-mean R^2 0.20" in err
    assert cli.report_health({"fe": {"ok": None, "problems": [], "status": "not checked"}}, cli._Console()) == 0
    assert "FE: not checked" in capsys.readouterr().err


def test_embed_writes_latents_and_layers_without_touching_input(tiny, tmp_path):
    data, model_path, a = tiny
    before = _digest(data)
    out = tmp_path / "emb.h5ad"
    assert main(["embed", str(model_path), str(data), "--out", str(out), "-q"]) == 0
    e = ad.read_h5ad(out)
    assert e.n_obs == a.n_obs and e.n_vars == a.n_vars
    lat = [k for k in e.obsm if "scmedal" in k.lower()]
    assert lat and all(e.obsm[k].shape == (a.n_obs, 50) for k in lat)
    out2 = tmp_path / "emb_layers.h5ad"
    assert main(["embed", str(model_path), str(data), "--out", str(out2), "--reconstructions",
                 "--counterfactuals", "Dropseq_3cl", "-q"]) == 0
    e2 = ad.read_h5ad(out2)
    assert e2.n_vars == N_GENES
    assert {"scmedal_fe_reconstruction", "scmedal_re_reconstruction",
            "scmedal_counterfactual_Dropseq_3cl"} <= set(e2.layers)
    assert e2.layers["scmedal_counterfactual_Dropseq_3cl"].shape == (a.n_obs, N_GENES)
    assert _digest(data) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_genomap_cells_groups_and_pixel_test(tiny, tmp_path):
    data, model_path, a = tiny
    out = tmp_path / "gm"
    cells = [a.obs_names[0], a.obs_names[5]]
    assert main(["genomap", str(model_path), str(data), "--cells", *cells, "--group", "cell_line=H1975",
                 "--formats", "png,svg", "--dpi", "40", "--test", "CELseq2_3cl,CELseq2_5cl_p1", "Dropseq_3cl",
                 "--out", str(out), "-q"]) == 0
    z = np.load(out / "genomaps.npz")
    names = list(z["names"])
    batches = sorted(a.obs["batch"].unique())
    assert names[:3] == ["Original", "FE reconstruction", "RE reconstruction"]
    assert len(names) == 3 + len(batches) + 1 + 2 * len(batches)
    assert z["image_000"].shape == (3, 7, 7)  # two cells + one averaged group
    assert list(z["row_titles"])[2].startswith("cell_line=H1975")
    for f in ["genomaps.png", "genomaps.svg", "genomaps_top_genes.csv", "genomaps_top_genes_overall.csv",
              "pixel_test.csv", "pixel_test_significant.csv", "pixel_test.png", "pixel_test_overlay.npz",
              "genomaps.json"]:
        assert (out / f).is_file(), f
    top = pd.read_csv(out / "genomaps_top_genes.csv")
    assert set(top["row"]) == {0, 1, 2} and (top.groupby("row").size() == 10).all()
    pt = pd.read_csv(out / "pixel_test.csv")
    assert {"gene", "row", "col", "p", "q", "significant"} <= set(pt.columns)
    assert len(pt) <= N_GENES
    ov = np.load(out / "pixel_test_overlay.npz")
    assert ov["significant"].shape == (7, 7) and ov["significant"].dtype == bool
    summary = json.loads((out / "genomaps.json").read_text())
    assert summary["pixel_test"]["batches_b"] == ["Dropseq_3cl"]


def test_evaluate_writes_csv_and_json(tiny, tmp_path, capsys):
    from napari_scmedal._training_report import health_lines, health_problems
    from napari_scmedal.model import ScMEDAL

    data, model_path, a = tiny
    out = tmp_path / "ev"
    assert main(["evaluate", str(model_path), str(data), "--target", "protocol", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    table = json.loads((out / "metrics.json").read_text())
    assert {"fe", "re"} <= set(table["latents"])
    # the model's stored training health: in metrics.json and printed, each problem once as a WARNING
    health = ScMEDAL.load(model_path).health
    assert set(table["health"]) == set(health) == {"fe", "fec", "re"}
    assert all(table["health"][k]["problems"] == health[k]["problems"] for k in health)
    assert all(line in err for line in health_lines(health))
    for p in health_problems(health):
        assert err.count(f"WARNING: training health: {p}") == 1
    csv = pd.read_csv(out / "metrics.csv")
    assert {"latent", "grouping", "metric", "value"} <= set(csv.columns)
    assert set(csv["metric"]) >= {"asw", "inv_db", "ch"}
    assert csv[csv["grouping"] == "classify:protocol"].shape[0] == 3
    assert set(csv.loc[csv["grouping"] == "classify:protocol", "n_folds"]) == {5}  # the default


def test_evaluate_folds_option(tiny, tmp_path, capsys):
    data, model_path, _ = tiny
    for k, want in (("3", 3), ("1", 1)):
        out = tmp_path / f"ev{k}"
        assert main(["evaluate", str(model_path), str(data), "--target", "protocol", "--folds", k, "--out",
                     str(out), "-q"]) == 0
        cls = json.loads((out / "metrics.json").read_text())["classification"]
        assert cls["n_folds"] == want
        assert cls["protocol"] == ("train_test" if want == 1 else "kfold")
    capsys.readouterr()
    assert main(["evaluate", str(model_path), str(data), "--folds", "0", "--out", str(tmp_path / "ev0")]) != 0
    assert "--folds 0" in capsys.readouterr().err


def test_demo_fast_runs_everything(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--no-viewer", "--out", str(out), "--dpi", "30", "--threads", "1", "-q"]) == 0
    lines = ["A549", "H1975", "H2228", "H838", "HCC827"]
    for f in ["model.safetensors", "latents.h5ad", "metrics.csv", "metrics.json", "report.html", "summary.json",
              "genomap_overview.png", "top_genes_cells.csv", "mwu_celseq2_vs_dropseq.csv",
              "mwu_celseq2_vs_dropseq_significant.csv", "mwu_celseq2_vs_dropseq.png"]:
        assert (out / f).is_file(), f
    for line in lines:
        assert (out / f"genomap_{line}.png").is_file()
        assert (out / f"genomap_{line}_top_genes.csv").is_file()
        z = np.load(out / f"genomap_{line}.npz")
        assert z["image_000"].shape[1:] == (8, 8)
        assert "Counterfactual -> Dropseq_3cl - Counterfactual -> own batch" in list(z["names"])
    # A549 was never sequenced with Drop-seq or the 3-line plate: 3 rows, one per 5-line plate
    assert np.load(out / "genomap_A549.npz")["image_000"].shape[0] == 3
    report = (out / "report.html").read_text()
    for line in lines:
        assert f"genomap_{line}.png" in report
    assert "mwu_celseq2_vs_dropseq.png" in report and "Mann-Whitney" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mann_whitney"]["batches_b"] == ["Dropseq_3cl"]
    # the default auto preset, with --fast's explicit 2-epoch cap; the training health is reported
    tr = summary["training"]
    assert tr["derived"]["preset"] == "auto" and tr["derived"]["settings"]["max_epochs"] == 2
    assert tr["derived"]["reasons"]["max_epochs"] == "given"
    assert tr["derived"]["reasons"]["batch_size"].startswith("derived")
    assert set(tr["health"]) == {"fe", "fec", "re"} and set(tr["stopped"]) == {"fe", "fec", "re"}
    assert "<h2>Training</h2>" in report and "auto preset" in report
    assert len(summary["mann_whitney"]["batches_a"]) == 4
    lat = ad.read_h5ad(out / "latents.h5ad")
    assert any("scmedal" in k.lower() for k in lat.obsm)


@pytest.mark.parametrize("argv,needle", [
    (["train", "{missing}", "--batch-key", "batch", "--out", "{tmp}/m.safetensors"], "does not exist"),
    (["train", "{data}", "--batch-key", "nope", "--out", "{tmp}/m.safetensors"], "nope"),
    (["train", "{data}", "--batch-key", "batch", "--out", "{data}"], "inputs are never overwritten"),
    (["embed", "{model}", "{missing}", "--out", "{tmp}/o.h5ad"], "does not exist"),
    (["embed", "{missing}", "{data}", "--out", "{tmp}/o.h5ad"], "does not exist"),
    (["embed", "{model}", "{data}", "--out", "{data}"], "inputs are never overwritten"),
    (["embed", "{model}", "{data}", "--out", "{tmp}/o.h5ad", "--counterfactuals", "zz"],
     "Unknown --counterfactuals batch(es) ['zz']; the model knows these batches"),
    (["genomap", "{model}", "{data}", "--out", "{tmp}/g"], "Choose cells"),
    (["genomap", "{model}", "{data}", "--cells", "no_such_cell", "--out", "{tmp}/g"], "Unknown cell name"),
    (["genomap", "{model}", "{data}", "--group", "cell_line=XYZ", "--out", "{tmp}/g"], "Values of 'cell_line'"),
    (["genomap", "{model}", "{data}", "--cells", "0", "--formats", "jpg", "--out", "{tmp}/g"], "format"),
    (["genomap", "{data}", "{data}", "--cells", "0", "--out", "{tmp}/g"], "model"),
    (["evaluate", "{model}", "{missing}", "--out", "{tmp}/e"], "does not exist"),
    (["train", "{data}", "--batch-key", "batch", "--device", "gpu9", "--out", "{tmp}/m.safetensors"],
     "Unknown --device"),
    (["train", "{data}", "--batch-key", "batch", "--threads", "0", "--out", "{tmp}/m.safetensors"], "--threads"),
    (["train", "{data}", "--batch-key", "batch", "--max-time", "0", "--out", "{tmp}/m.safetensors"], "--max-time"),
    (["genomap", "{model}", "{data}", "--cells", "0", "--test", "CELseq2_3cl", "CELseq2_3cl", "--out", "{tmp}/g"],
     "both groups"),
])
def test_bad_input_gives_clear_message_and_nonzero_exit(tiny, tmp_path, capsys, argv, needle):
    data, model_path, a = tiny
    subs = {"{data}": str(data), "{model}": str(model_path), "{missing}": str(tmp_path / "missing.h5ad"),
            "{tmp}": str(tmp_path)}
    args = []
    for x in argv:
        for k, v in subs.items():
            x = x.replace(k, v)
        args.append(x)
    before = _digest(data)
    rc = main(args + ["-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error:" in err and needle.lower() in err.lower()
    assert "Traceback" not in err
    assert _digest(data) == before


def test_argparse_errors_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 2
    assert main([]) == 2
    for cmd in ["train", "embed", "genomap", "evaluate", "demo"]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "--seed" in out and "--threads" in out and "--device" in out
        if cmd == "train":
            assert "--max-time" in out and "{auto,paper,quick}" in out and "derived" in out
    p = build_parser()
    assert p.parse_args(["demo"]).out == "scmedal_demo"


def test_python_dash_m_is_the_same_command():
    r = subprocess.run([sys.executable, "-m", "napari_scmedal", "genomap", "--help"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "Mann-Whitney" in r.stdout
    r = subprocess.run([sys.executable, "-m", "napari_scmedal", "embed", "nope.safetensors", "nope.h5ad",
                        "--out", "x.h5ad"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_viewer_opens_only_with_a_display(monkeypatch, capsys):
    import types

    from napari_scmedal import cli

    calls = []
    fake = types.ModuleType("napari_scmedal._napari.launch")
    fake.open_viewer = lambda adata, model, comp: calls.append((adata, model, comp))
    monkeypatch.setitem(sys.modules, "napari_scmedal._napari.launch", fake)
    con = cli._Console()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.maybe_open_viewer("A", "M", "C", con) is False
    assert "no display" in capsys.readouterr().err
    monkeypatch.setenv("DISPLAY", ":99")
    assert cli.maybe_open_viewer("A", "M", "C", con, no_viewer=True) is False
    assert calls == []
    assert cli.maybe_open_viewer("A", "M", "C", con) is True
    assert calls == [("A", "M", "C")]


def test_genomap_computes_and_writes_a_layout_when_the_model_has_none(tiny, tmp_path):
    data, _, a = tiny
    model = tmp_path / "nolayout.safetensors"
    assert main(["train", str(data), "--batch-key", "batch", "--genes", "30", "--preset", "quick", "--epochs", "1",
                 "--no-layout", "--out", str(model), "-q"]) == 0
    from napari_scmedal.genomap import GenomapLayout
    from napari_scmedal.model import ScMEDAL

    assert ScMEDAL.load(model).layout is None
    out = tmp_path / "g"
    assert main(["genomap", str(model), str(data), "--group", "batch=Dropseq_3cl", "--scale", "zscore",
                 "--batches", "Dropseq_3cl", "CELseq2_3cl", "--out", str(out), "-q"]) == 0
    layout = GenomapLayout.from_dict(json.loads((out / "layout.json").read_text()))
    assert tuple(layout.shape) == (5, 6) and layout.n_genes == 30  # smallest grid that fits
    z = np.load(out / "genomaps.npz")
    assert list(z["names"])[3:5] == ["Counterfactual -> Dropseq_3cl", "Counterfactual -> CELseq2_3cl"]
    assert z["image_000"].shape == (1, *layout.shape)
