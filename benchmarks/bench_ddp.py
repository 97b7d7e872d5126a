"""Data-parallel training benchmark: 2 processes (torchrun, gloo, CPU) against 1 process (issue 7).

Both runs train the same model (quick preset, same seed, same global minibatch, a fixed number of
epochs: patience is set so nothing stops early) out of core from the same synthetic .h5ad and are
compared on the final validation loss of FE, FEC and RE and on training throughput (cells per second,
all networks, validation passes included in the wall time). With 2 processes each rank takes half of
every global minibatch (BatchNorm statistics over the half) and draws its own RE weight noise, so the
losses agree within a tolerance rather than exactly; the tolerance is stated in the results.

Usage: ``.venv/bin/python benchmarks/bench_ddp.py [--cells 40000] [--epochs 3] [--batch-size 512]``.
Writes benchmarks/results/ddp.json and .md (and the data to benchmarks/data/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
TOLERANCE = 0.05  # relative difference of the final validation reconstruction loss accepted as "the same"
TOLERANCE_TOTAL = 0.10  # ... and of the total (FE's includes the negated adversary term, which fluctuates)


def _run(cmd, env) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, r


def _summary(path: str) -> dict:
    from napari_scmedal import ScMEDAL

    m = ScMEDAL.load(path)
    out = {}
    for k, h in m.history.items():
        out[k] = {"val_total": h["val"]["total"], "val_recon": h["val"]["recon"], "epochs": len(h["epochs"]), "cells_seen": h["cells_seen"],
                  "elapsed_s": round(h["elapsed_s"], 2), "cells_per_s": round(h["cells_per_s"], 1),
                  "world_size": h["world_size"], "max_rank_divergence": h.get("max_rank_divergence", 0.0)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=40_000)
    ap.add_argument("--genes", type=int, default=2916)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from napari_scmedal.data.synthetic import write_synthetic_h5ad

    data = HERE / "data" / f"synthetic_{args.cells // 1000}k.h5ad"
    if not data.exists():
        write_synthetic_h5ad(data, n_cells=args.cells, n_genes=args.genes, n_batches=19, n_labels=8, seed=args.seed)
    common = [str(data), "--batch-key", "batch", "--label-key", "cell_type", "--preset", "quick", "--backed",
              "--genes", str(min(args.genes, 2916) if args.genes >= 2916 else args.genes // 2),
              "--epochs", str(args.epochs), "--patience", str(args.epochs + 1), "--batch-size", str(args.batch_size),
              "--seed", str(args.seed), "--threads", "1", "--no-layout", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = {"data": str(data), "cells": args.cells, "genes": args.genes, "epochs": args.epochs,
           "global_batch_size": args.batch_size, "tolerance_rel": TOLERANCE, "tolerance_rel_total": TOLERANCE_TOTAL, "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as tmp:
        w1, r1 = _run([sys.executable, "-m", "napari_scmedal", "train", *common, "--out", f"{tmp}/one.safetensors"],
                      env)
        w2, r2 = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "napari_scmedal", "train", *common, "--out", f"{tmp}/two.safetensors"], env)
        for name, w, r in (("one_process", w1, r1), ("two_processes", w2, r2)):
            res[name] = {"rc": r.returncode, "wall_s": round(w, 1)}
            if r.returncode:
                res[name]["error"] = (r.stdout + r.stderr)[-2000:]
            else:
                res[name]["networks"] = _summary(f"{tmp}/{'one' if name == 'one_process' else 'two'}.safetensors")
    if "networks" in res["one_process"] and "networks" in res["two_processes"]:
        cmp = {}
        for k, a in res["one_process"]["networks"].items():
            b = res["two_processes"]["networks"][k]
            rel = abs(b["val_total"][-1] - a["val_total"][-1]) / abs(a["val_total"][-1])
            rel_r = abs(b["val_recon"][-1] - a["val_recon"][-1]) / abs(a["val_recon"][-1])
            cmp[k] = {"val_one": a["val_total"][-1], "val_two": b["val_total"][-1], "rel_diff": rel,
                      "recon_one": a["val_recon"][-1], "recon_two": b["val_recon"][-1], "rel_diff_recon": rel_r,
                      "within_tolerance": rel_r <= TOLERANCE and rel <= TOLERANCE_TOTAL,
                      "speedup_cells_per_s": b["cells_per_s"] / a["cells_per_s"]}
        res["comparison"] = cmp
        res["speedup_wall"] = res["one_process"]["wall_s"] / res["two_processes"]["wall_s"]
    OUT.mkdir(exist_ok=True)
    (OUT / "ddp.json").write_text(json.dumps(res, indent=2) + "\n")
    md = _markdown(res)
    (OUT / "ddp.md").write_text(md)
    print(md)
    return 0


def _markdown(res) -> str:
    lines = [f"# DDP on CPU: 2 gloo processes vs 1 process ({res['date']}, {res['cpus']} CPUs, 1 thread each)", "",
             f"{res['cells']} cells x {res['genes']} genes (synthetic, out of core), {res['epochs']} epochs per "
             f"network, global minibatch {res['global_batch_size']}; tolerance on the final validation losses: "
             f"{100 * res['tolerance_rel']:.0f}% relative on the reconstruction MSE, "
             f"{100 * res['tolerance_rel_total']:.0f}% on the total.", ""]
    if "comparison" not in res:
        return "\n".join(lines + ["Run failed: see ddp.json."]) + "\n"
    lines += ["| network | val recon MSE 1 proc / 2 procs (diff) | val total 1 proc / 2 procs (diff) | within | "
              "cells/s 1 proc | cells/s 2 procs |", "|---|---|---|---|---|---|"]
    for k, c in res["comparison"].items():
        a, b = res["one_process"]["networks"][k], res["two_processes"]["networks"][k]
        lines.append(f"| {k.upper()} | {c['recon_one']:.5f} / {c['recon_two']:.5f} ({100 * c['rel_diff_recon']:.1f}%) | "
                     f"{c['val_one']:.3f} / {c['val_two']:.3f} ({100 * c['rel_diff']:.1f}%) | "
                     f"{'yes' if c['within_tolerance'] else 'NO'} | {a['cells_per_s']} | {b['cells_per_s']} |")
    lines += ["", f"Wall time (process start to model written): 1 process {res['one_process']['wall_s']} s, "
                  f"2 processes {res['two_processes']['wall_s']} s (x{res['speedup_wall']:.2f}).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
