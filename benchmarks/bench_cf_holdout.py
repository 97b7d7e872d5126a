r"""Counterfactual accuracy against truth: every method side by side, seeds 0, 1, 2, in ONE run.

Settings (scores from ``napari_scmedal.holdout.score_counterfactual``: r2_all, r2_top100, shift_corr and,
with per-cell truth, cell_rmse; log1p-normalised units over the model's genes):

* ``synthetic_seen``: ``make_synthetic(1500 cells, 500 genes, 3 batches, 4 types, interaction_strength=0.3,
  dropout=0.3, seed=s)``, one model on all cells; every type's cells of batch a sent into batch b (all
  ordered pairs); truth = ``synthetic_expected_log`` (the same cells' exact expected expression in b).
* ``synthetic_heldout``: the same data; ``counterfactual_holdout`` on every (type, batch) pair (that type's
  cells in that batch removed from training) with the exact truth of the source cells.
* ``cellbench_dropseq`` / ``cellbench_celseq2``: ``counterfactual_holdout`` on the full CellBench file
  (../shared/data/cellbench_5batches.h5ad, label cell_line, batch batch), every pair with >= 30 cells,
  truth = the held-out cells' observed mean; split by the target batch's protocol.

Methods: the model's ``--methods`` (default balanced,matched,reference), the baselines identity, mean_shift,
balanced_shift, and ``scgen`` (benchmarks/cf_baselines.py: scGen-style VAE latent shift, cell-type
balanced); on CellBench also ``scvi`` and ``scvi_sampled`` (cf_baselines.ScviCF: scVI's ``transform_batch``
counterfactual, one scVI model per pair, ``--scvi-epochs`` max epochs, read as log1p of the normalised
expression and as the mean of log1p-normalised counts drawn in the target batch) when ``import scvi`` works,
i.e. in the benchmark environment (``bash benchmarks/setup_bench_env.sh`` -> .venv-bench), unless
``--no-scvi``. CellBench targets: ``--dropseq-only`` / ``--celseq2-only``; ``--first-pair N`` starts each
target list at pair N (the runs are deterministic per seed, so a cut run can be finished and merged).

Run (full; hours on a 2-core CPU, one model per pair and seed):
    .venv/bin/python benchmarks/bench_cf_holdout.py
The tables of docs/benchmarks.md (CellBench only, benchmark env for scVI):
    .venv-bench/bin/python benchmarks/bench_cf_holdout.py --skip synthetic_seen synthetic_heldout \
        --dropseq-only --stem cf_holdout.dropseq_scvi
    .venv-bench/bin/python benchmarks/bench_cf_holdout.py --seeds 0 --skip synthetic_seen synthetic_heldout \
        --celseq2-only --no-scvi --stem cf_holdout.celseq2_seed0
Smoke: ``--quick`` (one seed, 3 epochs, small synthetic data, 500 CellBench genes, 2 pairs per setting).
Writes benchmarks/results/cf_holdout.{json,md} (``--quick``: cf_holdout.quick.{json,md}; ``--stem``: that
name), after every setting and, on CellBench, after every pair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

OUT = Path(__file__).resolve().parent / "results"
CELLBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cellbench_5batches.h5ad"
METRICS = ("r2_all", "r2_top100", "shift_corr", "cell_rmse")


def _baselines(args, batch_key, scvi=False):
    """identity, mean_shift, balanced_shift, scgen and, with ``scvi`` (CellBench: raw counts) when scvi-tools
    imports and ``--no-scvi`` is off, scvi and scvi_sampled (one scVI model per pair)."""
    from cf_baselines import latent_shift_baseline, scvi_baselines, scvi_status

    from napari_scmedal.holdout import BASELINES

    items = list(BASELINES) + [("scgen", latent_shift_baseline(steps=args.vae_steps))]
    if scvi and scvi_status().startswith("available") and not args.no_scvi:
        items += scvi_baselines(batch_key, max_epochs=args.scvi_epochs, n_samples=args.scvi_samples)
    return items


def seen_setting(adata, seed, methods, baselines, ctor_kw, train_kw, n_draws, vae_steps) -> list[dict]:
    """Every type's cells of batch a -> batch b with one model trained on all cells; exact synthetic truth."""
    import napari_scmedal as sm
    from napari_scmedal.data.synthetic import synthetic_expected_log
    from napari_scmedal.holdout import _baseline, score_counterfactual

    t0 = time.perf_counter()
    model = sm.ScMEDAL(adata, batch_key="batch", label_key="cell_type", seed=seed, **ctor_kw).train(**train_kw)
    train_s = time.perf_counter() - t0
    genes = list(model.genes)
    gidx = adata.var_names.get_indexer(genes)
    X = model.recipe.transform(adata).X_log.astype(np.float64)
    lab, bat = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["batch"].astype(str).to_numpy()
    fitted = {}  # callable baselines that can be fitted once on all cells (the scgen VAE)
    rows = []
    for k in sorted(set(lab)):
        for s in sorted(set(bat)):
            src = (lab == k) & (bat == s)
            a_src = adata[np.flatnonzero(src)].copy()
            for t in sorted(set(bat) - {s}):
                truth = synthetic_expected_log(a_src, t, n_draws=n_draws, seed=seed)[:, gidx]
                ctx = {"X_source": X[src], "batch_source": bat[src], "X_train": X, "batch_train": bat,
                       "label_train": lab, "target_batch": t, "genes": genes, "seed": seed,
                       "adata_train": adata, "adata_source": a_src}
                preds = {m: model.get_counterfactual_expression(t, adata=a_src, method=m) for m in methods}
                for name, b in ((b, b) if isinstance(b, str) else b for b in baselines):
                    if name == "scgen":
                        from cf_baselines import LatentShift

                        if name not in fitted:
                            fitted[name] = LatentShift(steps=vae_steps, seed=seed).fit(X, bat, lab)
                        preds[name] = fitted[name].predict(X[src], bat[src], t)
                    else:
                        preds[name] = _baseline(b, ctx)
                for name, p in preds.items():
                    rows.append({"label": k, "source_batch": s, "target_batch": t, "method": name, "seed": seed,
                                 "n_source": int(src.sum()), "train_s": train_s,
                                 **score_counterfactual(p, truth.mean(0), X[src].mean(0), truth)})
    return rows


def summarise(rows: list[dict]) -> dict:
    """{setting: {metric: {method: {"seed<s>": mean over pairs, "mean": mean of the seeds}}}}."""
    df = pd.DataFrame(rows)
    out = {}
    for setting, d in df.groupby("setting", sort=False):
        first = d["method"].iloc[0]
        out[setting] = {"n_pairs": {f"seed{int(s)}": int((g["method"] == first).sum()) for s, g in d.groupby("seed")}}
        for metric in METRICS:
            if metric not in d or d[metric].isna().all():
                continue
            per_seed = d.groupby(["method", "seed"], sort=False)[metric].mean().unstack("seed")
            table = {}
            for method, r in per_seed.iterrows():
                table[method] = {f"seed{int(s)}": float(v) for s, v in r.items()}
                v = r.to_numpy(dtype=float)
                table[method]["mean"] = float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")
            out[setting][metric] = table
    return out


def render(result: dict) -> str:
    lines = ["# Counterfactual accuracy against truth (held-out and exact synthetic)", "",
             f"Machine: {result['machine']['platform']}, {result['machine']['device']}; "
             f"config: {json.dumps(result['config'])}. scVI: {result['scvi']}.", "",
             "Per setting and metric: mean over pairs for each seed, and the mean of the seeds. r2_all / r2_top100: "
             "R^2 of predicted vs true per-gene means (all model genes / the 100 genes that change most); "
             "shift_corr: correlation of predicted and true shifts from the source mean; cell_rmse: per-cell "
             "error against the exact synthetic truth (lower is better).", ""]
    for setting, s in result["summary"].items():
        lines.append(f"## {setting} (pairs per seed: {s['n_pairs']})")
        for metric in METRICS:
            if metric not in s:
                continue
            seeds = sorted({k for v in s[metric].values() for k in v if k != "mean"})
            lines += ["", f"**{metric}**", "", "| method | " + " | ".join(seeds) + " | mean |",
                      "|---" * (len(seeds) + 2) + "|"]
            for method, v in s[metric].items():
                lines.append(f"| {method} | " + " | ".join(f"{v.get(k, float('nan')):.3f}" for k in seeds)
                             + f" | {v['mean']:.3f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="balanced,matched,reference")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="smoke run: one seed, 3 epochs, tiny settings")
    ap.add_argument("--dropseq-only", action="store_true", help="CellBench: only Drop-seq target pairs")
    ap.add_argument("--celseq2-only", action="store_true", help="CellBench: only CEL-seq2-plate target pairs")
    ap.add_argument("--no-scvi", action="store_true", help="leave scVI out even when it can be imported")
    ap.add_argument("--skip", nargs="*", default=[], choices=["synthetic_seen", "synthetic_heldout", "cellbench"])
    ap.add_argument("--max-pairs", type=int, default=None, help="at most this many pairs per setting")
    ap.add_argument("--first-pair", type=int, default=1, help="CellBench: start at this pair (1-based) of each "
                    "target list, to finish a cut run (the pairs are deterministic)")
    ap.add_argument("--preset", default=None, help="training preset (default: the model's default)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--cellbench-genes", type=int, default=2916)
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--scvi-epochs", type=int, default=100, help="scVI max epochs (early stopping on)")
    ap.add_argument("--scvi-samples", type=int, default=20, help="scVI posterior draws per source cell")
    ap.add_argument("--truth-draws", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--stem", default=None, help="results file name (default cf_holdout); lets seeds run in "
                    "parallel processes")
    ap.add_argument("--merge", nargs="+", default=None, help="merge these result .json files (seeds run in "
                    "separate processes) into --stem and exit")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = dict(parts[0])
        merged["rows"] = [r for p in parts for r in p["rows"]]
        merged["config"] = dict(merged["config"], seeds=sorted({s for p in parts for s in p["config"]["seeds"]}))
        merged["time_s"] = {k: v for p in parts for k, v in p["time_s"].items()}
        merged["summary"] = summarise(merged["rows"])
        stem = args.stem or "cf_holdout"
        (OUT / f"{stem}.json").write_text(json.dumps(merged, indent=1, default=float))
        (OUT / f"{stem}.md").write_text(render(merged))
        return
    syn = dict(n_cells=1500, n_genes=500, n_batches=3, n_labels=4, interaction_strength=0.3, dropout=0.3)
    syn_genes = 400
    if args.quick:
        args.seeds = args.seeds[:1]
        args.max_epochs = args.max_epochs or 3
        args.max_pairs = args.max_pairs or 2
        args.cellbench_genes = min(args.cellbench_genes, 500)
        args.vae_steps = min(args.vae_steps, 50)
        args.truth_draws = min(args.truth_draws, 8)
        syn.update(n_cells=480, n_genes=200)
        syn_genes = 150
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning, message=".*")  # health warnings of short runs
    import napari_scmedal as sm
    from napari_scmedal.data import read_h5ad
    from napari_scmedal.data.synthetic import make_synthetic
    from napari_scmedal.holdout import counterfactual_holdout, default_pairs, synthetic_truth

    from cf_baselines import scvi_status

    methods = [m for m in args.methods.split(",") if m]
    ctor = {"threads": 1, **({"preset": args.preset} if args.preset else {}),
            **({"device": args.device} if args.device else {})}
    train_kw = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "CPU, 1 thread"
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": dev,
                          "loadavg_at_start": os.getloadavg(), "torch": torch.__version__,
                          "napari_scmedal": sm.__version__},
              "config": {"methods": methods, "seeds": args.seeds, "quick": args.quick, "synthetic": syn,
                         "synthetic_model_genes": syn_genes, "cellbench_genes": args.cellbench_genes,
                         "preset": args.preset or "default", "max_epochs": args.max_epochs,
                         "max_pairs": args.max_pairs, "vae_steps": args.vae_steps, "dropseq_only": args.dropseq_only,
                         "celseq2_only": args.celseq2_only, "first_pair": args.first_pair,
                         **({} if args.no_scvi else {"scvi_epochs": args.scvi_epochs,
                                                     "scvi_samples": args.scvi_samples})},
              "scvi": "left out (--no-scvi)" if args.no_scvi else scvi_status(), "rows": [], "time_s": {}}
    stem = args.stem or ("cf_holdout.quick" if args.quick else "cf_holdout")
    OUT.mkdir(exist_ok=True)

    def dump():
        result["summary"] = summarise(result["rows"]) if result["rows"] else {}
        (OUT / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
        (OUT / f"{stem}.md").write_text(render(result))

    def say(info):
        if info.get("stage") == "pair":
            print(f"  pair {info['pair']}/{info['n_pairs']} {info['label']} -> {info['target_batch']} "
                  f"({info['train_s']:.0f} s)", flush=True)

    cb = None
    if "cellbench" not in args.skip:
        cb = read_h5ad(CELLBENCH)
    for seed in args.seeds:
        t0 = time.perf_counter()
        a = make_synthetic(seed=seed, **syn)
        base = dict(ctor, n_genes=syn_genes)
        if "synthetic_seen" not in args.skip:
            print(f"seed {seed}: synthetic_seen", flush=True)
            rows = seen_setting(a, seed, methods, _baselines(args, "batch"), base, train_kw, args.truth_draws,
                                args.vae_steps)
            result["rows"] += [dict(r, setting="synthetic_seen") for r in rows]
            dump()
        if "synthetic_heldout" not in args.skip:
            print(f"seed {seed}: synthetic_heldout", flush=True)
            pairs = default_pairs(a.obs, "batch", "cell_type", 30)[:args.max_pairs]
            df = counterfactual_holdout(a, "batch", "cell_type", pairs=pairs, methods=methods,
                                        baselines=_baselines(args, "batch"), seed=seed, progress=say,
                                        truth=synthetic_truth(args.truth_draws, seed), **base, **train_kw)
            result["rows"] += [dict(r, setting="synthetic_heldout") for r in df.to_dict("records")]
            dump()
        if cb is not None:
            print(f"seed {seed}: cellbench", flush=True)
            pairs = default_pairs(cb.obs, "batch", "cell_line", 30)
            drop = [] if args.celseq2_only else [p for p in pairs if "Dropseq" in p[1]]
            cel = [] if args.dropseq_only else [p for p in pairs if "Dropseq" not in p[1]]
            first = args.first_pair - 1
            pairs = drop[first:][:args.max_pairs] + cel[first:][:args.max_pairs]

            def say_and_keep(info):  # rows recorded (and written) after every pair: a cut run keeps its pairs
                say(info)
                if info.get("stage") == "pair":
                    for r in info["rows"]:
                        r = dict(r, setting="cellbench_dropseq" if "Dropseq" in r["target_batch"]
                                 else "cellbench_celseq2")
                        result["rows"].append(r)
                    dump()

            counterfactual_holdout(cb, "batch", "cell_line", pairs=pairs, methods=methods,
                                   baselines=_baselines(args, "batch", scvi=True), seed=seed, progress=say_and_keep,
                                   **dict(ctor, n_genes=args.cellbench_genes), **train_kw)
            dump()
        result["time_s"][f"seed{seed}"] = time.perf_counter() - t0
        dump()
    print(render(result))


if __name__ == "__main__":
    main()
