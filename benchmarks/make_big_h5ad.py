"""Write the large synthetic sparse-count .h5ad used by the out-of-core benchmarks (issue 7).

    .venv/bin/python benchmarks/make_big_h5ad.py [--cells 500000] [--genes 2916] [--batches 19]
        [--labels 8] [--seed 0] [--chunk-cells 20000] [--out benchmarks/data/synthetic_500k.h5ad]
        [--overwrite] [--results benchmarks/results/make_big_h5ad.json | --no-results]

Calls :func:`napari_scmedal.data.synthetic.write_synthetic_h5ad` (streamed, memory bounded by
the chunk, written atomically) and prints the wall time, file size, nnz, density and the peak RSS of
this process (``resource.getrusage``), then checks that anndata opens the file backed and times one
backed read of ``chunk_cells`` rows. The numbers go to ``--results`` (JSON) and a short .md beside it.
``benchmarks/data/`` is git-ignored.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=500_000)
    p.add_argument("--genes", type=int, default=2916)
    p.add_argument("--batches", type=int, default=19)
    p.add_argument("--labels", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-cells", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "synthetic_500k.h5ad")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "make_big_h5ad.json")
    p.add_argument("--no-results", action="store_true", help="only print, write no results file")
    args = p.parse_args(argv)

    import anndata as ad
    import h5py

    from napari_scmedal._utils import atomic_output, json_safe
    from napari_scmedal.data.synthetic import write_synthetic_h5ad

    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it or choose another --out", file=sys.stderr)
        return 2

    last = [0.0]

    def progress(info):
        now = time.perf_counter()
        if now - last[0] > 10 or info["cells_written"] == info["n_cells"]:
            last[0] = now
            print(f"  {info['cells_written']:>9,} / {info['n_cells']:,} cells  nnz {info['nnz']:,}  "
                  f"{info['elapsed_s']:.1f} s", flush=True)

    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    path = write_synthetic_h5ad(args.out, args.cells, args.genes, args.batches, args.labels, args.seed,
                                chunk_cells=args.chunk_cells, overwrite=args.overwrite, progress=progress)
    write_s = time.perf_counter() - t0
    rss_write = _peak_rss_mb()

    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        nnz = int(f["X/data"].shape[0])
    density = nnz / (args.cells * args.genes)

    backed = ad.read_h5ad(path, backed="r")
    try:
        lo = max(0, args.cells // 2 - args.chunk_cells // 2)
        hi = min(args.cells, lo + args.chunk_cells)
        t1 = time.perf_counter()
        rows = backed.X[lo:hi]
        read_s = time.perf_counter() - t1
        assert rows.shape == (hi - lo, args.genes)
        n_obs, n_vars = backed.shape
    finally:
        backed.file.close()

    result = {
        "what": "write_synthetic_h5ad: streamed synthetic NB counts to a CSR .h5ad",
        "command": "benchmarks/make_big_h5ad.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cells": args.cells, "genes": args.genes, "batches": args.batches, "labels": args.labels,
        "seed": args.seed, "chunk_cells": args.chunk_cells,
        "out": os.path.relpath(path, ROOT) if path.resolve().is_relative_to(ROOT) else str(path),
        "write_s": round(write_s, 2),
        "file_bytes": size, "file_gb": round(size / 1e9, 3),
        "nnz": nnz, "density": round(density, 5),
        "peak_rss_mb_before_write": round(rss_before, 1),
        "peak_rss_mb_after_write": round(rss_write, 1),
        "backed_shape": [n_obs, n_vars],
        "backed_read_rows": hi - lo, "backed_read_s": round(read_s, 3),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_1_5_15": list(os.getloadavg())},
        "note": "measured on the shared 2-core box while other jobs ran (loaded); peak RSS is the "
                "process maximum (ru_maxrss), including the Python/anndata import",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"wrote {path}\n  time {write_s:.1f} s, size {size / 1e9:.3f} GB, nnz {nnz:,}, density {density:.4f}, "
          f"peak RSS {rss_write:.0f} MB (before writing {rss_before:.0f} MB)\n"
          f"  backed read of {hi - lo:,} rows: {read_s:.2f} s")

    if not args.no_results:
        with atomic_output(args.results) as tmp:
            Path(tmp).write_text(json.dumps(json_safe(result), indent=2) + "\n")
        md = args.results.with_suffix(".md")
        with atomic_output(md) as tmp:
            Path(tmp).write_text(
                "# Synthetic large .h5ad (benchmarks/make_big_h5ad.py)\n\n"
                f"{args.cells:,} cells x {args.genes:,} genes, {args.batches} batches, {args.labels} cell types, "
                f"seed {args.seed}, chunk {args.chunk_cells:,} cells -> `{result['out']}`\n\n"
                "| write time | file size | nnz | density | peak RSS | backed read of one chunk |\n"
                "|---|---|---|---|---|---|\n"
                f"| {write_s:.1f} s | {size / 1e9:.2f} GB | {nnz:,} | {100 * density:.2f}% | {rss_write:.0f} MB "
                f"| {read_s:.2f} s ({hi - lo:,} rows) |\n\n"
                f"Measured {result['date_utc']} on {os.cpu_count()} CPUs, load average "
                f"{result['machine']['loadavg_1_5_15'][0]:.1f} (a shared, loaded box: times are indicative). "
                "Peak RSS is the whole process (ru_maxrss), imports included.\n")
        print(f"results: {args.results} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
