"""Out-of-core training benchmark: peak memory and speed of training from an on-disk .h5ad (issue 7).

Each measurement runs ``scmedal train --backed`` in a fresh child process (so the peak resident set
size, ``ru_maxrss`` of the child, is that run's alone) on the synthetic 500,000-cell x 2,916-gene file
written by ``benchmarks/make_big_h5ad.py``:

* ``prepare``: the two streaming preprocessing passes only (``stream_prepare`` in a child).
* ``partial``: preprocessing + FE, FEC and RE each for one epoch capped at ``--steps`` minibatches,
  with the full validation pass over the 100,000 validation cells after each (what one epoch costs
  in memory: the training minibatches come from the same bounded buffers).
* ``full`` (``--full``): one complete epoch of each network (300,000 training cells each).

The in-memory alternative is reported as arithmetic (dense float32 model inputs of all cells), not run.
Usage: ``.venv/bin/python benchmarks/bench_out_of_core.py [--steps 300] [--full] [--chunk-cells 8192]``.
Writes benchmarks/results/out_of_core.json and .md.
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

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
DEFAULT_FILE = HERE / "data" / "synthetic_500k.h5ad"


PREPARE = """
import json, resource, sys, time
from napari_scmedal.data.ondisk import stream_prepare
t = time.perf_counter()
plan = stream_prepare(sys.argv[1], "batch", label_key="cell_type", n_genes=2916, chunk_cells=int(sys.argv[2]))
print(json.dumps({"s": time.perf_counter() - t, "info": plan.info,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--steps", type=int, default=300, help="minibatches per network for the partial epoch")
    ap.add_argument("--chunk-cells", type=int, default=8192)
    ap.add_argument("--full", action="store_true", help="also run one complete epoch of each network")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    data = Path(args.file)
    if not data.exists():
        print(f"{data} is missing: run benchmarks/make_big_h5ad.py first", file=sys.stderr)
        return 1
    py = sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = {"file": str(data), "file_gb": round(data.stat().st_size / 1e9, 3), "chunk_cells": args.chunk_cells,
           "threads": args.threads, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "date": time.strftime("%Y-%m-%d %H:%M")}
    def isolated(cmd):
        """Run ``cmd`` under a fresh wrapper interpreter whose only child it is, so the wrapper's
        RUSAGE_CHILDREN peak RSS is that command's alone."""
        wrapper = ("import resource, subprocess, sys, json, time;"
                   "t=time.perf_counter(); r=subprocess.run(sys.argv[1:], capture_output=True, text=True);"
                   "print(json.dumps({'rc': r.returncode, 'wall_s': time.perf_counter()-t, "
                   "'peak_rss_gb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1e6, "
                   "'out': r.stdout[-3000:], 'err': r.stderr[-1500:]}))")
        r = subprocess.run([py, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
        return json.loads(r.stdout)

    imp = isolated([py, "-c", "import napari_scmedal, napari_scmedal.model, torch, scanpy"])
    res["import_only_peak_rss_gb"] = round(imp["peak_rss_gb"], 3)
    prep = isolated([py, "-c", PREPARE, str(data), str(args.chunk_cells)])
    res["prepare"] = {"rc": prep["rc"], "wall_s": round(prep["wall_s"], 2), "peak_rss_gb": round(prep["peak_rss_gb"], 3)}
    if prep["rc"] == 0:
        res["prepare"]["detail"] = json.loads(prep["out"].strip().splitlines()[-1])
    else:
        res["prepare"]["error"] = prep["err"]

    with tempfile.TemporaryDirectory() as tmp:
        base = [py, "-m", "napari_scmedal", "train", str(data), "--batch-key", "batch", "--label-key", "cell_type",
                "--preset", "quick", "--backed", "--chunk-cells", str(args.chunk_cells), "--epochs", "1",
                "--no-layout", "--threads", str(args.threads), "-q"]
        part = isolated(base + ["--steps-per-epoch", str(args.steps), "--out", f"{tmp}/partial.safetensors"])
        res["partial"] = {"rc": part["rc"], "wall_s": round(part["wall_s"], 2),
                          "peak_rss_gb": round(part["peak_rss_gb"], 3), "steps_per_network": args.steps}
        if part["rc"] == 0:
            res["partial"].update(_history(f"{tmp}/partial.safetensors"))
        else:
            res["partial"]["error"] = part["err"]
        if args.full:
            full = isolated(base + ["--out", f"{tmp}/full.safetensors"])
            res["full"] = {"rc": full["rc"], "wall_s": round(full["wall_s"], 2),
                           "peak_rss_gb": round(full["peak_rss_gb"], 3)}
            if full["rc"] == 0:
                res["full"].update(_history(f"{tmp}/full.safetensors"))
            else:
                res["full"]["error"] = full["err"]
    n, g = 500_000, 2916
    res["in_memory_estimate_gb"] = {
        "dense_model_inputs_X_and_X_log": round(2 * n * g * 4 / 1e9, 2),
        "note": "prepare_training keeps X (scaled) and X_log (log1p) as dense float32 for every cell, plus "
                "scanpy's normalised sparse copy of the whole matrix while selecting genes"}
    OUT.mkdir(exist_ok=True)
    (OUT / "out_of_core.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "out_of_core.md").write_text(_markdown(res))
    print(_markdown(res))
    return 0


def _history(path) -> dict:
    from napari_scmedal import ScMEDAL

    m = ScMEDAL.load(path)
    out = {}
    for k, h in m.history.items():
        out[k] = {"steps": h["steps"], "cells_seen": h["cells_seen"], "elapsed_s": round(h["elapsed_s"], 2),
                  "train_cells_per_s": round(h["cells_per_s"], 1), "val_total": h["val"]["total"][-1]}
    return {"networks": out}


def _markdown(res) -> str:
    lines = [f"# Out-of-core training ({res['date']}, {res['machine']['cpus']} CPUs, {res['threads']} torch thread(s))",
             "", f"File: {res['file']} ({res['file_gb']} GB on disk), blocks of {res['chunk_cells']} cells.", "",
             "| run | wall (s) | peak RSS (GB) |", "|---|---|---|",
             f"| imports only | - | {res['import_only_peak_rss_gb']} |",
             f"| streaming preprocessing (2 passes) | {res['prepare']['wall_s']} | {res['prepare']['peak_rss_gb']} |",
             f"| partial epoch ({res['partial']['steps_per_network']} steps x FE, FEC, RE + full validation) | "
             f"{res['partial']['wall_s']} | {res['partial']['peak_rss_gb']} |"]
    if "full" in res:
        lines.append(f"| one full epoch of FE, FEC and RE | {res['full']['wall_s']} | {res['full']['peak_rss_gb']} |")
    lines += ["", f"In memory the dense model inputs alone would take "
                  f"{res['in_memory_estimate_gb']['dense_model_inputs_X_and_X_log']} GB.", ""]
    for run in ("partial", "full"):
        if run in res and "networks" in res[run]:
            lines += [f"{run}: " + ", ".join(f"{k.upper()} {v['steps']} steps, {v['train_cells_per_s']} cells/s "
                                             f"(incl. validation), val {v['val_total']:.2f}"
                                             for k, v in res[run]["networks"].items()), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
