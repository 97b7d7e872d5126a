"""Counterfactual quality benchmark on the bundled CellBench sample (CPU).

Trains FE + RE (quick preset, seed 0, all 2,916 genes, 1 thread, like tests/test_models_real.py) and
scores both counterfactual methods (``"matched"``, the default, and ``"reference"``, METHOD.md's
literal one-hot swap) per cell line x (source, target) batch pair, split into cross-protocol
(CEL-seq2 <-> Drop-seq) and same-protocol pairs:

* ``after_before``: |mean counterfactual of the source cells - mean of the target batch's cells of
  that line| / |source mean - target mean| (< 1: the cells moved toward the target batch);
* ``corr``: correlation of the predicted shift (counterfactual - RE reconstruction, group means)
  with the real shift (target mean - source mean);
* ``shift_ratio``: |predicted shift| / |real shift|.

Cell sets: all cells (groups >= 20 cells) and held-out cells (validation + test, groups >= 10;
the matched method's anchors are training cells). ``target_space="model"`` replaces the data
means by the RE reconstructions' means (where the model itself puts the cells). Also: the share of
sampling noise in each pair's squared mean difference and the RE reconstruction's group-mean error
relative to the real difference.

Run: ``.venv/bin/python benchmarks/bench_counterfactual.py``; writes
benchmarks/results/counterfactual.json and counterfactual.md.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "results"


def _summary(rows: list[tuple[float, float, float]]) -> dict:
    v = np.array(rows)
    return {"n_pairs": len(v), "after_before_median": float(np.median(v[:, 0])),
            "after_before_max": float(v[:, 0].max()), "frac_closer": float((v[:, 0] < 1).mean()),
            "corr_median": float(np.median(v[:, 1])), "corr_min": float(v[:, 1].min()),
            "shift_ratio_median": float(np.median(v[:, 2]))}


def main() -> dict:
    import napari_scmedal as sm
    from napari_scmedal.datasets import cellbench

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = sm.ScMEDAL(cellbench(), batch_key="batch", label_key="cell_line", preset="quick", seed=0,
                       threads=1, train_fec=False)
    model.train()
    train_s = time.perf_counter() - t0
    p = model._prepared
    X, b = p.X_log, np.asarray(p.batch)
    lab = model._adata.obs["cell_line"].astype(str).to_numpy()
    drop = np.array(["Dropseq" in x for x in model.batches])
    nb = len(model.batches)
    rec = model.get_reconstruction("re")
    held = np.zeros(len(b), bool)
    held[model._split_idx["val"]] = True
    held[model._split_idx["test"]] = True
    res = {"machine": platform.node(), "note": "shared 2-core machine, loaded by other jobs; times are upper bounds",
           "n_cells": len(b), "n_genes": len(model.genes), "train_fe_re_s": train_s, "scores": {}, "time_s": {}}
    for method in ("matched", "reference"):
        t = time.perf_counter()
        cfs = [model.get_counterfactual_expression(batch_index=k, method=method) for k in range(nb)]
        res["time_s"][method] = time.perf_counter() - t
        for cells_name, cells, min_n in (("all", np.ones(len(b), bool), 20), ("held_out", held, 10)):
            for space, ref in (("data", X), ("model", rec)):
                rows = {"cross": [], "same": []}
                for tg in range(nb):
                    for s in range(nb):
                        for line in np.unique(lab):
                            ms = (b == s) & (lab == line) & cells
                            mt = (b == tg) & (lab == line) & cells
                            if s == tg or ms.sum() < min_n or mt.sum() < min_n:
                                continue
                            real = ref[mt].mean(0) - ref[ms].mean(0)
                            pred = cfs[tg][ms].mean(0) - rec[ms].mean(0)
                            rows["cross" if drop[s] != drop[tg] else "same"].append((
                                np.linalg.norm(cfs[tg][ms].mean(0) - ref[mt].mean(0)) / np.linalg.norm(real),
                                np.corrcoef(pred, real)[0, 1], np.linalg.norm(pred) / np.linalg.norm(real)))
                for k, v in rows.items():
                    res["scores"][f"{method}/{cells_name}/{space}/{k}"] = _summary(v)
    diag = {"cross": [], "same": []}
    for tg in range(nb):
        for s in range(nb):
            for line in np.unique(lab):
                ms, mt = (b == s) & (lab == line), (b == tg) & (lab == line)
                if s == tg or ms.sum() < 20 or mt.sum() < 20:
                    continue
                real = X[mt].mean(0) - X[ms].mean(0)
                noise = (X[mt].var(0, ddof=1) / mt.sum() + X[ms].var(0, ddof=1) / ms.sum()).sum()
                diag["cross" if drop[s] != drop[tg] else "same"].append(
                    (noise / (real ** 2).sum(), np.linalg.norm(rec[ms].mean(0) - X[ms].mean(0)) / np.linalg.norm(real)))
    res["diagnostics"] = {k: {"noise_share_median": float(np.median(np.array(v)[:, 0])),
                              "recon_mean_error_over_real_median": float(np.median(np.array(v)[:, 1]))}
                          for k, v in diag.items()}
    OUT.mkdir(exist_ok=True)
    (OUT / "counterfactual.json").write_text(json.dumps(res, indent=1))
    lines = ["# Counterfactual quality on the CellBench sample", "",
             f"quick preset, seed 0, {len(model.genes)} genes, {len(b)} cells, 1 thread; {res['note']}.",
             (f"FE + RE training {train_s:.0f} s; all cells x {nb} batches: matched "
              f"{res['time_s']['matched']:.1f} s, reference {res['time_s']['reference']:.1f} s."), "",
             ("| method | cells | target means | pairs | n | after/before median (max) | closer | corr median (min) "
              "| shift ratio |"), "|---|---|---|---|---|---|---|---|---|"]
    for key, v in res["scores"].items():
        method, cells_name, space, k = key.split("/")
        lines.append(f"| {method} | {cells_name} | {space} | {k} | {v['n_pairs']} | {v['after_before_median']:.2f} "
                     f"({v['after_before_max']:.2f}) | {v['frac_closer']:.0%} | {v['corr_median']:.2f} "
                     f"({v['corr_min']:.2f}) | {v['shift_ratio_median']:.2f} |")
    lines += ["", "Diagnostics (all cells, groups >= 20): " + "; ".join(
        f"{k}-protocol: sampling-noise share of the squared mean difference {v['noise_share_median']:.2f}, RE "
        f"reconstruction group-mean error / real difference {v['recon_mean_error_over_real_median']:.2f}"
        for k, v in res["diagnostics"].items()), ""]
    (OUT / "counterfactual.md").write_text("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
