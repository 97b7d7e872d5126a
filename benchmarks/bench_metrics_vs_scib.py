"""Our kNN and clustering scores against scib-metrics, and the CellBench evaluation table with baselines.

    .venv-bench/bin/python benchmarks/bench_metrics_vs_scib.py [--data PATH] [--seed 0] [--threads 1]

1. Trains scMEDAL with the library defaults (``ScMEDAL(adata, batch_key="batch", label_key="cell_line")``,
   the "auto" preset) on the full CellBench file and writes ``evaluate_model(model, "test",
   target="protocol", baselines=("pca", "harmony"))`` -- FE, FEC, RE, PCA and Harmony scored alike.
2. On every cell, for each of those five latents, compares napari_scmedal.metrics' iLISI, cLISI, k-means
   NMI/ARI and label silhouette with scib-metrics (a benchmark-only dependency: ``pip install scib-metrics``
   in .venv-bench, never a runtime one): LISI on the same exact 90 neighbours (sklearn) and on
   scib-metrics' own pynndescent graph (what its Benchmarker uses).

Writes benchmarks/results/metrics_vs_scib.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cellbench_5batches.h5ad"
OUT = ROOT / "benchmarks" / "results"
SCORES = ["ilisi", "clisi", "nmi", "ari", "asw_label"]


def ours(z, batch, label, neigh, seed):
    from sklearn.metrics import silhouette_score

    from napari_scmedal.metrics import clisi, ilisi, kmeans_nmi_ari

    out = {"ilisi": ilisi(z, batch, neighbors=neigh), "clisi": clisi(z, label, neighbors=neigh),
           **kmeans_nmi_ari(z, label, seed=seed),
           "asw_label": (float(silhouette_score(z, label)) + 1) / 2}  # scIB's rescaling of the label ASW
    return out


def scib(z, batch, label, neigh):
    from scib_metrics import clisi_knn, ilisi_knn, nmi_ari_cluster_labels_kmeans, silhouette_batch, silhouette_label
    from scib_metrics.nearest_neighbors import NeighborsResults, pynndescent
    from scib_metrics.utils import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    exact = NeighborsResults(indices=neigh[1], distances=neigh[0])
    approx = pynndescent(z, n_neighbors=90, random_state=0, n_jobs=1)
    r = nmi_ari_cluster_labels_kmeans(z, label)
    # the same with 10 k-means starts (ours uses 10): separates k-means local optima from the score itself
    km = KMeans(len(np.unique(label)), n_init=10, seed=0).fit(z)
    pred = np.asarray(km.labels_)
    return {"nmi_10_starts": float(normalized_mutual_info_score(label, pred, average_method="arithmetic")),
            "ari_10_starts": float(adjusted_rand_score(label, pred)),
            "ilisi": float(ilisi_knn(exact, batch)), "clisi": float(clisi_knn(exact, label)),
            "nmi": float(r["nmi"]), "ari": float(r["ari"]), "asw_label": float(silhouette_label(z, label)),
            "ilisi_pynndescent": float(ilisi_knn(approx, batch)), "clisi_pynndescent": float(clisi_knn(approx, label)),
            "asw_batch_scib": float(silhouette_batch(z, label, batch))}  # a different definition: report only


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    import scib_metrics
    import sklearn
    import torch

    import napari_scmedal
    from napari_scmedal import ScMEDAL
    from napari_scmedal.data import read_h5ad
    from napari_scmedal.metrics import baseline_latents, evaluate_model, knn

    torch.set_num_threads(args.threads)
    adata = read_h5ad(args.data)
    t0 = time.perf_counter()
    model = ScMEDAL(adata, batch_key="batch", label_key="cell_line", seed=args.seed, threads=args.threads)
    model.train(health_warnings=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = evaluate_model(model, "test", target="protocol", baselines=("pca", "harmony"), seed=args.seed)
    eval_s = time.perf_counter() - t0

    ad_ = model._training_adata()
    batch = ad_.obs["batch"].astype(str).to_numpy()
    label = ad_.obs["cell_line"].astype(str).to_numpy()
    lat = {k: model.get_latent_representation(k) for k in model.trained_kinds}
    lat.update(baseline_latents(model, seed=args.seed))
    comparison = {}
    for name, z in lat.items():
        z = np.asarray(z, dtype=np.float64)
        neigh = knn(z, 90)
        a, b = ours(z, batch, label, neigh, args.seed), scib(z, batch, label, neigh)
        comparison[name] = {"ours": a, "scib_metrics": b, "abs_diff": {k: abs(a[k] - b[k]) for k in SCORES}}
        print(name, {k: (round(a[k], 4), round(b[k], 4)) for k in SCORES}, flush=True)

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "sklearn": sklearn.__version__, "scib_metrics": scib_metrics.__version__,
           "napari_scmedal": napari_scmedal.__version__, "load_avg_start": os.getloadavg()}
    try:
        import harmonypy

        env["harmonypy"] = getattr(harmonypy, "__version__", "?")
    except ImportError:
        pass
    res = {"data": str(args.data), "n_cells": int(ad_.n_obs), "n_genes": len(model.genes), "seed": args.seed,
           "threads": args.threads, "train_s": train_s, "evaluate_s": eval_s, "derived": model.derived["settings"],
           "history": {k: {"best_epoch": v.get("best_epoch"), "stopped": v.get("stopped")}
                       for k, v in model.history.items()},
           "table": table, "comparison_all_cells": comparison, "env": env}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from napari_scmedal._utils import json_safe

    (out / "metrics_vs_scib.json").write_text(json.dumps(json_safe(res), indent=1))
    (out / "metrics_vs_scib.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res) -> str:
    from napari_scmedal.metrics import LATENT_NAMES

    lines = [f"# scMEDAL metrics vs scib-metrics {res['env']['scib_metrics']} (CellBench, {res['n_cells']} cells)", "",
             "All cells; iLISI/cLISI scaled as scIB (1 = batches mixed / types apart), on the same exact 90-neighbour "
             "graph; scib-metrics' pynndescent graph in brackets. NMI/ARI: k-means with one cluster per cell line "
             "(ours: scikit-learn, 10 restarts; scib-metrics: its JAX k-means, 1 start, as its "
             "Benchmarker). ASW label rescaled (ASW + 1) / 2 as scIB.",
             "scib-metrics' k-means with 10 starts in brackets.", "",
             "| latent | iLISI ours / scib | cLISI ours / scib | NMI ours / scib | ARI ours / scib "
             "| label ASW ours / scib |",
             "|---|---|---|---|---|---|"]
    for name, c in res["comparison_all_cells"].items():
        a, b = c["ours"], c["scib_metrics"]
        lines.append(f"| {LATENT_NAMES.get(name, name)} | {a['ilisi']:.4f} / {b['ilisi']:.4f} "
                     f"({b['ilisi_pynndescent']:.4f}) | {a['clisi']:.4f} / {b['clisi']:.4f} "
                     f"({b['clisi_pynndescent']:.4f}) | {a['nmi']:.4f} / {b['nmi']:.4f} ({b['nmi_10_starts']:.4f}) | "
                     f"{a['ari']:.4f} / {b['ari']:.4f} ({b['ari_10_starts']:.4f}) | {a['asw_label']:.4f} / "
                     f"{b['asw_label']:.4f} |")
    worst = {k: max(c["abs_diff"][k] for c in res["comparison_all_cells"].values()) for k in SCORES}
    lines += ["", "Largest absolute difference: " + ", ".join(f"{k} {v:.2g}" for k, v in worst.items()), ""]
    t = res["table"]
    lines += [f"## Test split ({t['n_cells']} cells), library defaults, seed {res['seed']}: "
              f"training {res['train_s']:.0f} s, evaluation {res['evaluate_s']:.0f} s", "",
              "| latent | batch ASW | batch 1/DB | iLISI | cell-line ASW | cLISI | NMI | ARI |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in t["latents"].items():
        b, lab = s["batch"], s["label"]
        lines.append(f"| {LATENT_NAMES.get(name, name)} | {b['asw']:.3f} | {b['inv_db']:.3f} | {b['ilisi']:.3f} | "
                     f"{lab['asw']:.3f} | {lab['clisi']:.3f} | {lab['nmi']:.3f} | {lab['ari']:.3f} |")
    c = t.get("classification")
    if c:
        lines += ["", f"Random forest predicting `{c['target']}` ({c['protocol']}, {c['n_folds']} folds of the test "
                  f"cells), mean [95% t-interval]; chance (majority class) {c['chance']:.3f}:", ""]
        for k in ("fe", "re", "fe+re"):
            lo, hi = c["ci"][k]
            lines.append(f"* {k.upper()}: {c[k]:.3f} [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
