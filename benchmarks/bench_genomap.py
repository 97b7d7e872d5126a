"""Benchmark of the genomap engine against the ``genomap`` package (1.3.6), side by side in one run.

Run in the benchmark environment (it has both napari-scmedal and genomap)::

    bash benchmarks/setup_bench_env.sh
    .venv-bench/bin/python benchmarks/bench_genomap.py            # full run (the package takes minutes)
    .venv-bench/bin/python benchmarks/bench_genomap.py --no-package   # ours only (runs in .venv too)

Data: the bundled real sample ``napari_scmedal.datasets.cellbench()`` (1,408 cells), normalised to
10,000 counts per cell, log1p, then the top 2,916 (54 x 54) or 1,089 (33 x 33) highly variable genes
(scanpy, flavour "seurat", ranked by normalised dispersion so the count is exact).

Measured:
* euclidean layout, 2,916 genes on 54 x 54 (and 1,089 on 33 x 33): wall time, quality;
* radial layout (genomap-compatible), 1,089 genes on 33 x 33: wall time, quality, and the fraction of
  genes on the same ring as the package's own result on the same input;
* the package's ``construct_genomap_returnT`` (epsilon=0, num_iter=1000, its defaults) on the same
  input: wall time, number of EMD iterations (counted by wrapping ``ot.lp.emd``), quality;
* projection throughput (cells per second) at 2,916 genes, dense float32 and sparse CSR input.

Results: benchmarks/results/genomap.json and genomap.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load():
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def prepare(n_genes: int):
    import scanpy as sc

    from napari_scmedal.datasets import cellbench

    ad = cellbench()
    sc.pp.filter_cells(ad, min_genes=10)
    sc.pp.filter_genes(ad, min_cells=3)
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=n_genes, flavor="seurat")
    # exact count: rank by normalised dispersion (ties can make scanpy keep a few more)
    disp = ad.var["dispersions_norm"].to_numpy(dtype=float)
    disp = np.where(np.isfinite(disp), disp, -np.inf)
    top = np.sort(np.argsort(-disp, kind="stable")[:n_genes])
    sub = ad[:, top]
    X = sub.X.toarray() if hasattr(sub.X, "toarray") else np.asarray(sub.X)
    return X.astype(np.float32), [str(g) for g in sub.var_names]


def timed(fn, repeats: int, cpu: list | None = None):
    """Wall-clock seconds of each call; the process CPU seconds are appended to ``cpu`` if given
    (on a shared machine CPU time shows what a dedicated core would take for single-threaded code)."""
    times, out = [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return out, times


def q_round(q: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in q.items()}


def ring_of(layout) -> np.ndarray:
    from napari_scmedal.genomap import radial_rings

    ring_sq, _ = radial_rings(layout.shape)
    return ring_sq[layout.pixel_of_gene[:, 0], layout.pixel_of_gene[:, 1]]


def run_package(X: np.ndarray, genes, rows: int, cols: int, num_iter: int):
    """The genomap package on X; returns its layout as a GenomapLayout plus timing and iterations."""
    import genomap
    import ot
    import ot.lp

    from napari_scmedal.genomap import GenomapLayout

    calls = {"n": 0}
    real_emd = ot.lp.emd

    def counting_emd(*a, **k):
        calls["n"] += 1
        return real_emd(*a, **k)

    ot.lp.emd = counting_emd
    try:
        t, c = time.perf_counter(), time.process_time()
        _, T = genomap.construct_genomap_returnT(X.astype(np.float64), rows, cols, epsilon=0, num_iter=num_iter)
        seconds = time.perf_counter() - t
        cpu_seconds = time.process_time() - c
    finally:
        ot.lp.emd = real_emd
    k = T.argmax(1)
    one_to_one = bool(len(np.unique(k)) == len(k) and np.allclose(T.max(1), T.sum(1)))
    # the package's flat index k = a + b * rows is image pixel (row a, column b) (reshape order="F")
    pog = np.column_stack([k % rows, k // rows])
    lay = GenomapLayout((rows, cols), genes, pog, geometry="radial")
    return lay, {"seconds": seconds, "cpu_seconds": cpu_seconds, "emd_iterations": calls["n"], "one_to_one": one_to_one}


def bench_projection(layout, n_cells: int, repeats: int, seed: int = 0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    Y = rng.random((n_cells, layout.n_genes), dtype=np.float32)
    cpu_dense: list = []
    _, t_dense = timed(lambda: layout.project(Y), repeats, cpu_dense)
    buf = np.empty((n_cells,) + layout.shape, dtype=np.float32)
    cpu_buf: list = []
    _, t_buf = timed(lambda: layout.project(Y, out=buf), repeats, cpu_buf)
    Ys = sp.random(n_cells // 5, layout.n_genes, density=0.1, format="csr", dtype=np.float32, random_state=seed)
    _, t_sparse = timed(lambda: layout.project(Ys), repeats)
    _, t_copy = timed(lambda: Y.copy(), repeats)   # the memory-bandwidth ceiling: a plain copy of the input
    return {
        "plain_copy_cells_per_s_best": round(n_cells / min(t_copy), 1),
        "dense_cells_per_cpu_s_best": round(n_cells / min(cpu_dense), 1),
        "dense_out_buffer_cells_per_s_best": round(n_cells / min(t_buf), 1),
        "dense_out_buffer_cells_per_cpu_s_best": round(n_cells / min(cpu_buf), 1),
        "n_cells_dense": n_cells,
        "dense_cells_per_s_best": round(n_cells / min(t_dense), 1),
        "dense_cells_per_s_median": round(n_cells / statistics.median(t_dense), 1),
        "n_cells_sparse": Ys.shape[0],
        "sparse_density": 0.1,
        "sparse_cells_per_s_best": round(Ys.shape[0] / min(t_sparse), 1),
        "sparse_cells_per_s_median": round(Ys.shape[0] / statistics.median(t_sparse), 1),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-package", action="store_true", help="skip the genomap package (ours only)")
    ap.add_argument("--package-iter", type=int, default=1000, help="num_iter for the package (its default 1000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--proj-cells", type=int, default=50_000)
    ap.add_argument("--out", default=str(RESULTS / "genomap.json"))
    args = ap.parse_args(argv)

    res: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform(), "load_avg_start": list(_load())}}
    t = time.perf_counter()
    import ot  # noqa: F401  (POT's import is slow; measured apart from the layouts)
    res["machine"]["import_ot_s"] = round(time.perf_counter() - t, 3)
    import scipy

    from napari_scmedal.genomap import compute_layout, layout_quality

    res["versions"] = {"numpy": np.__version__, "scipy": scipy.__version__, "pot": ot.__version__}
    try:
        import importlib.metadata as md

        res["versions"]["genomap"] = md.version("genomap")
    except Exception:
        res["versions"]["genomap"] = None

    X54, g54 = prepare(2916)
    X33, g33 = prepare(1089)
    res["data"] = {"source": "napari_scmedal.datasets.cellbench() (bundled real sample)", "cells": int(X54.shape[0]),
                   "preprocessing": "filter, normalize_total 1e4, log1p, top HVG (seurat) by dispersions_norm"}

    # --- euclidean 2916 on 54 x 54
    cpu54: list = []
    lay54, t54 = timed(lambda: compute_layout(X54, shape=(54, 54), genes=g54, seed=0), args.repeats, cpu54)
    q54 = layout_quality(lay54, X54, seed=0)
    res["euclidean_2916_54x54"] = {"seconds": [round(v, 3) for v in t54], "seconds_median": round(statistics.median(t54), 3),
                                   "cpu_seconds": [round(v, 3) for v in cpu54],
                                   "iterations": lay54.info["iterations"], "quality": q_round(q54)}
    print("euclidean 2916:", res["euclidean_2916_54x54"], flush=True)

    # --- 1089 on 33 x 33: ours (both geometries)
    lay33e, t33e = timed(lambda: compute_layout(X33, shape=(33, 33), genes=g33, seed=0), args.repeats)
    res["euclidean_1089_33x33"] = {"seconds": [round(v, 3) for v in t33e], "seconds_median": round(statistics.median(t33e), 3),
                                   "iterations": lay33e.info["iterations"],
                                   "quality": q_round(layout_quality(lay33e, X33, seed=0))}
    print("euclidean 1089:", res["euclidean_1089_33x33"], flush=True)
    cpu33r: list = []
    lay33r, t33r = timed(lambda: compute_layout(X33, shape=(33, 33), genes=g33, geometry="radial", seed=0),
                         args.repeats, cpu33r)
    res["radial_1089_33x33"] = {"seconds": [round(v, 3) for v in t33r], "seconds_median": round(statistics.median(t33r), 3),
                                "cpu_seconds": [round(v, 3) for v in cpu33r],
                                "iterations": lay33r.info["iterations"], "stop": lay33r.info["stop"],
                                "cycle_period": lay33r.info["cycle_period"],
                                "quality": q_round(layout_quality(lay33r, X33, seed=0))}
    print("radial 1089:", res["radial_1089_33x33"], flush=True)

    # --- the package on the same input
    if not args.no_package:
        pkg, info = run_package(X33, g33, 33, 33, args.package_iter)
        same = ring_of(pkg) == ring_of(lay33r)
        res["package_1089_33x33"] = {"seconds": round(info["seconds"], 3), "cpu_seconds": round(info["cpu_seconds"], 3),
                                     "emd_iterations": info["emd_iterations"],
                                     "num_iter": args.package_iter, "one_to_one": info["one_to_one"],
                                     "quality": q_round(layout_quality(pkg, X33, seed=0))}
        res["radial_vs_package"] = {
            "same_ring_fraction": round(float(same.mean()), 5),
            "genes_on_other_ring": int((~same).sum()),
            "same_pixel_fraction": round(float(np.all(pkg.pixel_of_gene == lay33r.pixel_of_gene, axis=1).mean()), 5),
            "speedup_vs_median": round(info["seconds"] / statistics.median(t33r), 1),
            "speedup_cpu_time": round(info["cpu_seconds"] / statistics.median(cpu33r), 1),
        }
        print("package 1089:", res["package_1089_33x33"], res["radial_vs_package"], flush=True)

    # --- projection
    res["projection_2916"] = bench_projection(lay54, args.proj_cells, args.repeats)
    print("projection:", res["projection_2916"], flush=True)
    res["machine"]["load_avg_end"] = list(_load())

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(to_markdown(res))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return res


def to_markdown(res: dict) -> str:
    m = res["machine"]
    e54, e33, r33 = res["euclidean_2916_54x54"], res["euclidean_1089_33x33"], res["radial_1089_33x33"]
    pkg = res.get("package_1089_33x33")
    cmp_ = res.get("radial_vs_package")

    def qrow(name, q, secs):
        return (f"| {name} | {secs} | {q['spearman']:.3f} ({q['spearman_random']:.3f}) | "
                f"{q['neighbour_correlation']:.3f} ({q['neighbour_correlation_random']:.3f}) = "
                f"{q['neighbour_ratio']:.1f}x | {q['gw_objective']:.4f} ({q['gw_objective_random']:.4f}) |")

    lines = [
        "# Genomap engine benchmark",
        "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}; load average at start {m['load_avg_start'][0]:.1f}, "
        f"at end {m['load_avg_end'][0]:.1f} (other jobs shared the machine when this was above the CPU count). "
        f"Versions: {res['versions']}. `import ot` took {m['import_ot_s']} s once per process (not in the times below).",
        f"Data: {res['data']['source']}, {res['data']['cells']} cells; {res['data']['preprocessing']}.",
        "",
        "Quality: value (random one-to-one placement on the same pixels in brackets). Spearman = between gene",
        "correlation distance and 2-D pixel distance; neighbour = mean correlation of 4-neighbour genes; GW = square-loss",
        "Gromov-Wasserstein objective (lower is better).",
        "",
        "| layout | seconds (median) | Spearman | neighbour correlation | GW objective |",
        "|---|---|---|---|---|",
        qrow("ours, euclidean, 2,916 genes, 54 x 54", e54["quality"], e54["seconds_median"]),
        qrow("ours, euclidean, 1,089 genes, 33 x 33", e33["quality"], e33["seconds_median"]),
        qrow("ours, radial, 1,089 genes, 33 x 33", r33["quality"], r33["seconds_median"]),
    ]
    if pkg:
        lines.append(qrow(f"genomap 1.3.6, 1,089 genes, 33 x 33 ({pkg['emd_iterations']} EMD iterations)",
                          pkg["quality"], pkg["seconds"]))
    lines += ["", "Targets:"]
    q = e54["quality"]
    lines.append(f"- euclidean 2,916 on 54 x 54: Spearman {q['spearman']:.3f} (target >= 0.5), neighbour correlation "
                 f"{q['neighbour_ratio']:.1f} x random (target >= 3), {e54['seconds_median']} s (target <= 10 s).")
    if cmp_:
        lines.append(f"- radial 1,089 on 33 x 33: same ring as the package for {100 * cmp_['same_ring_fraction']:.2f}% of "
                     f"genes (target >= 99%; {cmp_['genes_on_other_ring']} genes differ), {cmp_['speedup_vs_median']} x "
                     f"faster than the package in wall time ({cmp_['speedup_cpu_time']} x in CPU time; target >= 50 x); "
                     f"same pixel for {100 * cmp_['same_pixel_fraction']:.1f}% "
                     "(the place within a ring is arbitrary in the package).")
    p = res["projection_2916"]
    lines.append(f"- projection at 2,916 genes: {p['dense_cells_per_s_best']:,.0f} cells/s best, "
                 f"{p['dense_cells_per_s_median']:,.0f} median, dense float32, {p['n_cells_dense']:,} cells, fresh output "
                 f"(target >= 200,000); {p['dense_cells_per_cpu_s_best']:,.0f} cells per CPU second (single-threaded, "
                 f"what a dedicated core gives); into a reused buffer (`out=`) {p['dense_out_buffer_cells_per_s_best']:,.0f} "
                 f"cells/s ({p['dense_out_buffer_cells_per_cpu_s_best']:,.0f} per CPU second); sparse CSR (10% density): "
                 f"{p['sparse_cells_per_s_median']:,.0f} cells/s median. For scale, a plain copy of the same input "
                 f"(numpy `Y.copy()`, the memory-bandwidth ceiling) ran at {p['plain_copy_cells_per_s_best']:,.0f} cells/s.")
    lines.append(f"- euclidean 2,916 CPU seconds per run: {e54.get('cpu_seconds')} (BLAS may use both cores).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
