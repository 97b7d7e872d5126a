"""How the scVI counterfactual baseline of bench_cf_holdout.py depends on its training length (one pair).

The CellBench held-out protocol of ``bench_cf_holdout.py`` (pair: a cell line's cells in the target batch
held out of training; the same line's cells in the other batches sent into it; truth = the held-out cells'
observed mean, log1p-normalised, model genes), with only the scVI baselines (``cf_baselines.ScviCF``) trained
for each of ``--epochs`` (early stopping on, as in the table). The model genes are those the package picks
(``prepare_training`` on the training cells: 2,916 Seurat HVGs), without training an scMEDAL model.

Run (benchmark env, ``bash benchmarks/setup_bench_env.sh``); docs/benchmarks.md quotes
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/bench_cf_scvi_epochs.py --epochs 100 --stem cf_scvi_check100
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/bench_cf_scvi_epochs.py --epochs 400 --stem cf_scvi_check400
Writes benchmarks/results/<stem>.{json,md} (default stem cf_scvi_epochs). Besides the held-out pair it scores
``--seen-label`` (default H2228), whose target-batch cells were in training: its other-batch cells sent into the
target, and its target cells decoded in their own batch, both against their observed mean.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench_cf_holdout import CELLBENCH, OUT


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--label", default="H1975")
    ap.add_argument("--target", default="Dropseq_3cl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seen-label", default="H2228", help="also score a line whose target-batch cells were in "
                    "training: its other-batch cells sent into the target (seen counterfactual) and its target "
                    "cells decoded in their own batch (reconstruction), against their observed mean")
    ap.add_argument("--stem", default="cf_scvi_epochs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from cf_baselines import ScviCF

    from napari_scmedal.data import read_h5ad
    from napari_scmedal.data.preprocess import prepare_training
    from napari_scmedal.holdout import score_counterfactual

    cb = read_h5ad(CELLBENCH)
    lab, bat = cb.obs["cell_line"].astype(str).to_numpy(), cb.obs["batch"].astype(str).to_numpy()
    held = (lab == args.label) & (bat == args.target)
    src = (lab == args.label) & ~held
    train = cb[np.flatnonzero(~held)].copy()
    recipe = prepare_training(train, "batch", "cell_line").recipe
    X = recipe.transform(cb).X_log.astype(np.float64)
    rows = []
    for ep in args.epochs:
        t0, c0 = time.perf_counter(), time.process_time()
        m = ScviCF("batch", max_epochs=ep, seed=args.seed).fit(train, recipe.genes)
        pred = m.predict(cb[np.flatnonzero(src)].copy(), args.target)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        checks = [("held-out", pred, src, held)]
        if args.seen_label:
            s_tgt = (lab == args.seen_label) & (bat == args.target)
            s_src = (lab == args.seen_label) & (bat != args.target)
            checks += [("seen", m.predict(cb[np.flatnonzero(s_src)].copy(), args.target), s_src, s_tgt),
                       ("reconstruction", m.predict(cb[np.flatnonzero(s_tgt)].copy(), args.target), s_src, s_tgt)]
        for check, pr, s_idx, t_idx in checks:
            for name, key in (("scvi", "mean"), ("scvi_sampled", "sampled")):
                sc = score_counterfactual(pr[key], X[t_idx].mean(0), X[s_idx].mean(0))
                rows.append({"max_epochs": ep, "epochs_run": m.epochs_run, "check": check, "method": name,
                             "wall_s": wall, "cpu_s": cpu, **{k: sc[k] for k in ("r2_top100", "shift_corr", "r2_all")}})
                print(rows[-1], flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.stem}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=float))
    lines = [f"# scVI counterfactual vs training length ({args.label} -> {args.target}, seed {args.seed})", "",
             f"Checks: held-out ({args.label}); seen ({args.seen_label}, other batches -> {args.target}; "
             f"reconstruction: its {args.target} cells decoded in their own batch; shift from its other-batch mean)."
             , "", "| max_epochs | epochs run | check | method | r2_top100 | shift_corr | r2_all | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['max_epochs']} | {r['epochs_run']} | {r['check']} | {r['method']} | {r['r2_top100']:.3f} "
              f"| {r['shift_corr']:.3f} | {r['r2_all']:.3f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |" for r in rows]
    (OUT / f"{args.stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
