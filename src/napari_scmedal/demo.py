"""The end-to-end demo on the bundled CellBench sample, as one Python function.

:func:`run_demo` trains scMEDAL (the ``"auto"`` preset) on the sample, computes the genomap layout and
writes into one folder: the model, the latents, the latent metrics, genomap panels per cell line with
their top genes, an overview, per-cell top genes, a per-pixel Mann-Whitney test (CEL-seq2 vs Drop-seq
counterfactuals), ``summary.json`` and ``report.html`` (docs/cli.md, "scmedal demo").  ``scmedal demo``
(:mod:`napari_scmedal.cli.demo`) is this function plus its options and the napari viewer at the end.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._utils import check_writable_folder
from .errors import ScMEDALError
from .progress import Console
from .report import (
    demo_report_html,
    pixel_test_outputs,
    report_training,
    write_comparison_outputs,
    write_h5ad,
    write_json,
    write_metrics,
    write_text,
)
from .selection import stratified_subsample

__all__ = ["DEMO_FAST", "DEMO_FULL", "DemoResult", "run_demo"]

#: The demo's sizes: model genes, epoch cap (None: the preset's), cells (None: all), cells of the
#: Mann-Whitney test and per-line cells of the top-gene table; ``fast`` is the reduced mode for tests.
DEMO_FULL = {"n_genes": 1024, "epochs": None, "cells": None, "mwu_cells": 300, "top_cells": 10}
DEMO_FAST = {"n_genes": 64, "epochs": 2, "cells": 240, "mwu_cells": 60, "top_cells": 2}

BATCH_KEY, LABEL_KEY = "batch", "cell_line"


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the folder, the trained model, the latents (the sample with the
    model's obsm), the overview comparison (one row per cell line), ``summary.json``'s content and the
    path of ``report.html``."""

    out: Path
    model: Any
    latents: Any
    overview: Any
    summary: dict
    report: Path


def demo_columns(comp) -> list[str]:
    """Figure columns of the demo: every expression version, FE - Original and the pure batch
    effect (counterfactual to b minus counterfactual to the own batch); the
    ``Counterfactual -> b - Original`` maps stay in the .npz arrays."""
    from .compare import FE_MINUS_ORIGINAL, cf_minus_own_name

    cols = comp.names_of_kind("expression") + [FE_MINUS_ORIGINAL] + [cf_minus_own_name(b) for b in comp.batches]
    return [c for c in cols if c in comp.images]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def run_demo(out="scmedal_demo", *, fast: bool = False, n_genes: int | None = None, epochs: int | None = None,
             formats: Sequence[str] = ("png",), dpi: int = 150, seed: int = 0, device: str | None = None,
             threads: int | None = None, con: Console | None = None,
             progress: Callable[[dict], None] | None = None) -> DemoResult:
    """Run the demo and write its files into ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder (created when missing; must be writable).
    fast : bool
        Reduced mode for tests: 240 cells, 64 genes, at most 2 epochs per network (everything still runs;
        expect training-health warnings).
    n_genes, epochs : int, optional
        Model genes (default 1024, 32 x 32 genomaps) and the epoch cap per network (default: derived from
        the data by the ``"auto"`` preset; 2 with ``fast``).
    formats : sequence of str
        Figure formats (png, svg, pdf, tif).
    dpi : int
        Figure resolution.
    seed : int
        Seed of the subsample, the training, the layout and the metrics.
    device, threads : optional
        Torch device and CPU threads of the model.
    con : Console, optional
        Where messages go (default: a :class:`~napari_scmedal.progress.Console` on stderr).
    progress : callable, optional
        ``model.train``'s per-epoch progress callback (e.g. a :class:`~napari_scmedal.progress.ProgressBars`);
        its ``close()``, when it has one, is called when training ends.

    Returns
    -------
    DemoResult
    """
    con = con if con is not None else Console()
    cfg: dict[str, Any] = dict(DEMO_FAST if fast else DEMO_FULL)
    if n_genes is not None:
        cfg["n_genes"] = n_genes
    if epochs is not None:
        cfg["epochs"] = epochs
    out = check_writable_folder(out, ScMEDALError, "output folder")
    formats = list(formats)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    adata = _sample(cfg, seed, con, fast)
    model = _train(adata, cfg, seed, device, threads, con, progress, timings)

    t0 = time.perf_counter()
    con.say(f"computing the genomap layout of {len(model.genes)} genes (Gromov-Wasserstein)")
    from .compare import ensure_layout

    layout = ensure_layout(model, seed=seed)
    timings["layout_s"] = time.perf_counter() - t0
    model_path = out / "model.safetensors"
    model.save(model_path)

    lat = adata.copy()
    model.write_to_adata(lat)
    write_h5ad(lat, out / "latents.h5ad")
    t0 = time.perf_counter()
    from .metrics import evaluate_model

    table = evaluate_model(model, "test", seed=seed, target="protocol")
    metric_files = write_metrics(table, out)
    timings["metrics_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    panels, overview = _genomap_panels(model, adata, out, formats, dpi)
    _top_genes_cells(model, adata, layout, out, cfg["top_cells"])
    timings["genomaps_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res, mwu = _mann_whitney(model, adata, out, formats, dpi, cfg["mwu_cells"], seed)
    timings["mwu_s"] = time.perf_counter() - t0
    con.say(f"Mann-Whitney U (CEL-seq2 vs Drop-seq counterfactuals, {mwu['cells']} cells): "
            f"{mwu['significant_pixels']} of {mwu['tested_pixels']} pixels significant at BH q < 0.05")

    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "data": {"cells": int(adata.n_obs), "genes_in_file": int(adata.n_vars), "model_genes": len(model.genes),
                 "batches": [str(b) for b in model.batches], "cell_lines": [p["line"] for p in panels],
                 "fast": bool(fast)},
        "layout_shape": list(layout.shape), "timings_s": timings, "seed": seed,
        "training": {"derived": model.derived, "health": model.health,
                     "stopped": {k: h.get("stopped") for k, h in model.history.items()}},
        "mann_whitney": {k: mwu[k] for k in ("batches_a", "batches_b", "cells", "significant_pixels",
                                             "tested_pixels")},
        "files": {"model": str(model_path), "latents": str(out / "latents.h5ad"), "metrics": metric_files,
                  "mann_whitney": mwu["files"]},
    }
    write_json(out / "summary.json", summary)
    report = write_text(out / "report.html", demo_report_html(summary, table, panels, res, formats, model))
    con.say(f"report: {report}  ({timings['total_s']:.0f} s in all)")
    return DemoResult(out=out, model=model, latents=lat, overview=overview, summary=summary, report=report)


def _sample(cfg: dict, seed: int, con: Console, fast: bool):
    """The CellBench sample (a stratified subsample of it in the reduced mode)."""
    from .datasets import cellbench

    adata = cellbench()
    if cfg["cells"]:
        adata = adata[stratified_subsample(adata.obs, BATCH_KEY, cfg["cells"], seed)].copy()
    con.say(f"CellBench sample: {adata.n_obs} cells x {adata.n_vars} genes, "
            f"{adata.obs[BATCH_KEY].nunique()} batches, {adata.obs[LABEL_KEY].nunique()} cell lines"
            + (" (reduced --fast mode)" if fast else ""))
    return adata


def _train(adata, cfg: dict, seed: int, device, threads, con: Console, progress, timings: dict):
    """Train FE, FEC and RE with the default "auto" preset (batch size, lr, epochs and patience derived
    from the number of training cells) and report the settings, the stops and the health."""
    from .model import ScMEDAL

    t0 = time.perf_counter()
    kw = {"batch_key": BATCH_KEY, "label_key": LABEL_KEY, "n_genes": cfg["n_genes"], "seed": seed}
    if device is not None:
        kw["device"] = device
    if threads is not None:
        kw["threads"] = threads
    model = ScMEDAL(adata, **kw)
    try:
        # epochs: None = derived; fast caps at 2. Health is printed below, from model.health
        model.train(max_epochs=cfg["epochs"], progress=progress, health_warnings=False)
    finally:
        if hasattr(progress, "close"):  # e.g. ProgressBars: end the bar before the next messages
            progress.close()
    timings["train_s"] = time.perf_counter() - t0
    con.say(f"trained FE, FEC and RE in {timings['train_s']:.1f} s")
    if report_training(model, con) and cfg["epochs"] is not None:
        con.say(f"(the epochs were capped at {cfg['epochs']} for speed, so health problems are expected)")
    return model


def _genomap_panels(model, adata, out: Path, formats, dpi: int):
    """One panel per cell line (its mean genomap in each batch, one row per batch) and the overview (one
    row per cell line); returns the panels' descriptions and the overview comparison."""
    from .compare import compare_cells, select_cells, stack_comparisons

    lines = sorted(adata.obs[LABEL_KEY].astype(str).unique())
    panels, overview_rows = [], []
    for line in lines:
        rows = []
        for b in [str(b) for b in model.batches]:
            try:
                idx = select_cells(adata, {LABEL_KEY: line, BATCH_KEY: b})
            except ScMEDALError:
                continue  # this line was not sequenced in this batch
            rows.append(compare_cells(model, idx, adata=adata, average=True, scale="zscore",
                                      group_name=f"{line} in {b}"))
        comp = stack_comparisons(rows)
        stem = f"genomap_{_safe(line)}"
        files = write_comparison_outputs(comp, out, stem, formats, dpi, gene_labels=10, columns=demo_columns(comp),
                                         title=f"{line}: mean genomap of its cells in each batch (rows), per-gene "
                                               "z-scores")
        panels.append({"line": line, "stem": stem, "files": files, "rows": comp.row_titles,
                       "top": comp.top_genes_overall})
        overview_rows.append(compare_cells(model, select_cells(adata, {LABEL_KEY: line}), adata=adata,
                                           average=True, scale="zscore", group_name=line))
    overview = stack_comparisons(overview_rows)
    write_comparison_outputs(overview, out, "genomap_overview", formats, dpi, gene_labels=0,
                             columns=demo_columns(overview),
                             title="Cell lines (mean of all their cells), per-gene z-scores")
    return panels, overview


def _top_genes_cells(model, adata, layout, out: Path, n_cells: int) -> str:
    """``top_genes_cells.csv``: the top genes of the first ``n_cells`` cells of each line."""
    import pandas as pd

    from ._utils import write_csv
    from .analysis import top_genes_table
    from .compare import compare_cells, select_cells

    per_cell = []
    for line in sorted(adata.obs[LABEL_KEY].astype(str).unique()):
        idx = select_cells(adata, {LABEL_KEY: line})[:n_cells]
        c = compare_cells(model, idx, adata=adata)
        t = top_genes_table(c.counterfactual_stack(), layout=layout, row_names=[r[0] for r in c.row_cells])
        t.insert(1, LABEL_KEY, line)
        t.insert(2, BATCH_KEY, [c.row_batches[[r[0] for r in c.row_cells].index(n)] for n in t["cell"]])
        per_cell.append(t)
    return write_csv(pd.concat(per_cell, ignore_index=True), out / "top_genes_cells.csv")


def _mann_whitney(model, adata, out: Path, formats, dpi: int, n_cells: int, seed: int):
    """Per-pixel Mann-Whitney U between counterfactuals to the CEL-seq2 batches and to Drop-seq, on a
    stratified subsample of cells; returns the result and its summary (batches, counts, files)."""
    from .compare import compare_cells

    batches = [str(b) for b in model.batches]
    proto = adata.obs.groupby(BATCH_KEY, observed=True)["protocol"].first().astype(str)
    a = [b for b in batches if proto.get(b) == "CEL-seq2"]
    bb = [b for b in batches if proto.get(b) == "Drop-seq"]
    idx = stratified_subsample(adata.obs, LABEL_KEY, n_cells, seed)
    cf = compare_cells(model, idx, adata=adata)
    res, files = pixel_test_outputs(cf, a, bb, out, "mwu_celseq2_vs_dropseq", ("CEL-seq2", "Drop-seq"),
                                    formats, dpi, alpha=0.05)
    return res, {"batches_a": a, "batches_b": bb, "cells": len(idx),
                 "significant_pixels": int(res.significant.sum()), "tested_pixels": len(res.table),
                 "files": files}
