"""Training benchmark on the bundled CellBench sample (CPU).

Measures, in one run on one machine: throughput (cells x epochs / s) and time to early-stopped
convergence of scMEDAL FE and RE (quick preset, seed 0) with 1 and 2 threads, the done-criteria
silhouettes on the test split, and scvi-tools' SCVI on the same cells and genes as the reference
point. Run with ``.venv-bench/bin/python benchmarks/bench_training.py`` (scvi-tools lives there).

Writes benchmarks/results/training.json and training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results"


def bench_scmedal(threads: int, seed: int = 0) -> dict:
    import napari_scmedal as sm
    from napari_scmedal.datasets import cellbench
    from napari_scmedal.metrics import evaluate_model

    torch.set_num_threads(threads)
    model = sm.ScMEDAL(cellbench(), batch_key="batch", label_key="cell_line", preset="quick", seed=seed,
                       threads=threads, train_fec=False)
    n_train = len(model.splits["train"])
    t0 = time.perf_counter()
    model.train()
    wall = time.perf_counter() - t0
    res = {"threads": threads, "seed": seed, "n_train": n_train, "wall_fe_re_s": wall, "models": {}}
    for k, h in model.history.items():
        ep = len(h["epochs"])
        res["models"][k] = {"epochs": ep, "best_epoch": h["best_epoch"], "time_s": h["elapsed_s"],
                            "cells_epochs_per_s": n_train * ep / h["elapsed_s"], "stopped": h["stopped"]}
    tab = evaluate_model(model, "test")
    res["test_scores"] = {k: {g: {m: v[g][m] for m in ("asw", "inv_db", "ch")} for g in ("batch", "label")}
                          for k, v in tab["latents"].items()}
    return res


def bench_scvi(threads: int, seed: int = 0) -> dict:
    try:
        import scvi
    except ImportError as e:
        return {"error": f"scvi-tools not importable: {e}"}
    from napari_scmedal.data import prepare_training
    from napari_scmedal.datasets import cellbench
    from napari_scmedal.metrics import latent_scores

    torch.set_num_threads(threads)
    scvi.settings.seed = seed
    a = cellbench()
    td = prepare_training(a, "batch", "cell_line", n_genes=2916)
    ad = a[td.prepared.obs_names, td.recipe.genes].copy()  # raw counts of the same cells and genes
    tr = td.splits["train"]
    scvi.model.SCVI.setup_anndata(ad, batch_key="batch")
    m = scvi.model.SCVI(ad)
    t0 = time.perf_counter()
    m.train(max_epochs=400, early_stopping=True, early_stopping_patience=10, accelerator="cpu",
            train_size=0.8, enable_progress_bar=False)
    wall = time.perf_counter() - t0
    ep = len(m.history["elbo_train"])
    z = m.get_latent_representation()
    te = td.splits["test"]
    s = latent_scores(z[te], ad.obs["batch"].to_numpy()[te], ad.obs["cell_line"].to_numpy()[te])
    return {"threads": threads, "version": scvi.__version__, "epochs": ep, "time_s": wall,
            "cells_epochs_per_s": int(0.8 * ad.n_obs) * ep / wall, "n_train": int(0.8 * ad.n_obs),
            "test_scores": {g: {k: s[g][k] for k in ("asw", "inv_db", "ch")} for g in ("batch", "label")},
            "n_train_split_of_scmedal": int(len(tr))}


def render(result: dict) -> str:
    """Write training.md from a result dict (also usable on a partial training.json)."""
    load = result["machine"]["loadavg_at_start"]
    lines = ["# Training benchmark (CellBench sample, 1,408 cells x 2,916 genes, CPU)", "",
             f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} cores, "
             f"load at start {load[0]:.1f}; torch {result['machine']['torch']}. Shared box: upper bounds.", "",
             "| run | threads | epochs (best) | time s | cells x epochs / s | test batch ASW | test label ASW |",
             "|---|---|---|---|---|---|---|"]
    for r in result["scmedal"]:
        for k, v in r["models"].items():
            sc = r["test_scores"][k]
            lines.append(f"| scMEDAL {k.upper()} (quick, seed {r.get('seed', 0)}) | {r['threads']} | "
                         f"{v['epochs']} ({v['best_epoch']}) | "
                         f"{v['time_s']:.1f} | {v['cells_epochs_per_s']:.0f} | {sc['batch']['asw']:.3f} | "
                         f"{sc['label']['asw']:.3f} |")
        lines.append(f"| scMEDAL FE + RE total (seed {r.get('seed', 0)}) | {r['threads']} | | {r['wall_fe_re_s']:.1f} | | | |")
    for r in result.get("scvi", []):
        if "error" in r:
            lines.append(f"| scVI | | | | {r['error']} | | |")
        else:
            lines.append(f"| scVI {r['version']} (early stop, patience 10) | {r['threads']} | {r['epochs']} | "
                         f"{r['time_s']:.1f} | {r['cells_epochs_per_s']:.0f} | {r['test_scores']['batch']['asw']:.3f} | "
                         f"{r['test_scores']['label']['asw']:.3f} |")
    text = "\n".join(lines) + "\n"
    (OUT / "training.md").write_text(text)
    print(text)
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="seeds trained with the first thread count (the others run seed 0)")
    ap.add_argument("--no-scvi", action="store_true")
    ap.add_argument("--scvi-from", help="reuse the scvi entry of an earlier training.json (with --no-scvi)")
    ap.add_argument("--render-only", action="store_true", help="rewrite training.md from training.json")
    args = ap.parse_args()
    if args.render_only:
        render(json.loads((OUT / "training.json").read_text()))
        return
    import napari_scmedal

    load = os.getloadavg()
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "loadavg_at_start": load,
                          "torch": torch.__version__, "napari_scmedal": napari_scmedal.__version__,
                          "note": "shared 2-core box with other jobs running: timings are upper bounds"},
              "scmedal": []}
    OUT.mkdir(exist_ok=True)

    def dump():  # written after every run so a killed benchmark keeps what it measured
        (OUT / "training.json").write_text(json.dumps(result, indent=2))

    for i, t in enumerate(args.threads):
        for seed in (args.seeds if i == 0 else [0]):
            result["scmedal"].append(bench_scmedal(t, seed))
            dump()
    if not args.no_scvi:
        result["scvi"] = [bench_scvi(t) for t in args.threads[:1]]
        dump()
    elif args.scvi_from:
        prev = json.loads(Path(args.scvi_from).read_text())
        result["scvi"] = [dict(r, reused_from=str(args.scvi_from), loadavg_then=prev["machine"]["loadavg_at_start"])
                          for r in prev.get("scvi", [])]
        dump()
    render(result)


if __name__ == "__main__":
    main()
