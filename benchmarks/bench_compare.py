"""Speed of the comparison core, the analyses and the figures (and, optionally, the demo).

    .venv/bin/python benchmarks/bench_compare.py [--demo]

* compare_cells: 1 cell x 20 target batches x 2,916 genes (54 x 54 genomaps), the GUI's
  interactive case (requirement: well under 1 s once model and layout exist); an averaged group
  of 200 cells; the first z-score call (reference stack) and a cached one.
* per-pixel Mann-Whitney U + BH on 1,200 vs 300 genomaps of 54 x 54.
* comparison_figure + save_figure (PNG, 200 dpi) for 5 rows x 14 columns.
* --demo: runs ``scmedal demo --no-viewer`` and records its per-step timings.

The model is trained for one epoch on seeded synthetic data (20 batches): the speed of inference
does not depend on how well it is trained.  Writes benchmarks/results/compare.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _log(msg):
    print(f"[bench_compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _best(fn, repeat=5):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", action="store_true", help="also time the full demo")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from napari_scmedal.analysis import pixel_test
    from napari_scmedal.compare import compare_cells, zscore_reference
    from napari_scmedal.data import make_synthetic
    from napari_scmedal.figures import comparison_figure, save_figure
    from napari_scmedal.genomap import GenomapLayout
    from napari_scmedal.model import ScMEDAL

    res: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "cpus": os.cpu_count(), "threads": args.threads,
                             "loadavg_at_start": os.getloadavg()[0]}}
    a = make_synthetic(n_cells=1000, n_genes=3000, n_batches=20, n_labels=3, seed=0)
    m = ScMEDAL(a, batch_key="batch", label_key="cell_type", n_genes=2916, preset="quick", seed=0)
    m.train(max_epochs=1)
    layout = GenomapLayout((54, 54), m.genes, np.stack(np.divmod(np.arange(2916), 54), axis=1))
    m.layout = layout

    _log("model trained; timing compare_cells")
    best, med, comp = _best(lambda: compare_cells(m, [0]))
    res["compare_1cell_20batches_s"] = {"best": best, "median": med, "versions": len(comp.names)}
    best, med, _ = _best(lambda: compare_cells(m, np.arange(200), average=True), repeat=3)
    res["compare_group200_average_s"] = {"best": best, "median": med}
    t0 = time.perf_counter()
    zscore_reference(m)
    res["zscore_reference_first_s"] = time.perf_counter() - t0
    best, med, _ = _best(lambda: compare_cells(m, [1], scale="zscore"))
    res["compare_1cell_zscore_cached_s"] = {"best": best, "median": med}

    _log("timing the pixel test")
    rng = np.random.default_rng(0)
    ga = rng.normal(size=(1200, 54, 54)).astype(np.float32)
    gb = rng.normal(size=(300, 54, 54)).astype(np.float32)
    best, med, _ = _best(lambda: pixel_test(ga, gb, layout=layout), repeat=3)
    res["mannwhitney_bh_1200_vs_300_54x54_s"] = {"best": best, "median": med}

    _log("timing a figure")
    five = compare_cells(m, np.arange(5), target_batches=[str(b) for b in m.batches[:5]])
    cols = five.names_of_kind("expression") + ["FE - Original"] + [
        n for n in five.names if n.endswith("own batch")]
    with tempfile.TemporaryDirectory() as d:
        def fig():
            f = comparison_figure(five, columns=cols, gene_labels=10)
            return save_figure(f, Path(d) / "panel.png", dpi=200)
        best, med, _ = _best(fig, repeat=2)
    res["figure_5rows_x_14cols_png200_s"] = {"best": best, "median": med, "columns": len(cols)}

    if args.demo:
        _log("running the demo")
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "napari_scmedal", "demo", "--no-viewer", "-q", "--out", d,
                            "--threads", str(args.threads)], check=True)
            res["demo_wall_s"] = time.perf_counter() - t0
            res["demo_steps_s"] = json.loads((Path(d) / "summary.json").read_text())["timings_s"]
    res["machine"]["loadavg_at_end"] = os.getloadavg()[0]

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# Comparison core, analyses and figures: speed", "",
             f"Machine: {res['machine']['cpus']} CPUs, torch threads {args.threads}, load average "
             f"{res['machine']['loadavg_at_start']:.1f} at start (other jobs were running if > 2).", "",
             "| step | best (s) | median (s) |", "|---|---|---|"]
    for k, v in res.items():
        if isinstance(v, dict) and "best" in v:
            lines.append(f"| {k} | {v['best']:.3f} | {v['median']:.3f} |")
    lines.append(f"| zscore_reference_first_s | {res['zscore_reference_first_s']:.3f} | |")
    if "demo_wall_s" in res:
        lines += ["", f"Demo (`scmedal demo --no-viewer`): {res['demo_wall_s']:.0f} s wall; steps: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in res["demo_steps_s"].items())]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
