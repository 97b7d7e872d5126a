"""Reporting results: the training report, result files and the demo's HTML report.

Shared by the ``scmedal`` command (:mod:`napari_scmedal.cli`) and the end-to-end demo
(:mod:`napari_scmedal.demo`):

* :func:`report_training` and :func:`report_health` -- a trained model's settings, how each network
  stopped and its training health, printed through a :class:`~napari_scmedal.progress.Console`.
* :func:`write_text`, :func:`write_json`, :func:`write_h5ad` -- atomic writes (temporary file, then
  ``os.replace``); :func:`write_comparison_outputs`, :func:`pixel_test_outputs`, :func:`write_metrics` --
  the files of a genomap comparison, of a per-pixel test and of the latent metrics.
* :func:`holdout_summary` -- the mean holdout score per method; :func:`demo_report_html` -- the demo's
  ``report.html`` (with :func:`training_html`, its training section).

No Qt or napari imports; the heavy modules (figures, metrics, pandas) are imported where used.
"""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._utils import atomic_output, json_safe
from .progress import Console

__all__ = ["demo_report_html", "holdout_summary", "pixel_test_outputs", "report_health", "report_training",
           "training_html", "write_comparison_outputs", "write_h5ad", "write_json", "write_metrics", "write_text"]


def report_training(model, con: Console) -> int:
    """Print what ``train()`` did: the settings it used (value and reason, one line each), how each network
    stopped and the training health (docs/model.md "Training health").

    Parameters
    ----------
    model : a trained :class:`~napari_scmedal.ScMEDAL`.
    con : the :class:`Console` (or any object with ``say`` and ``warn``).

    Returns
    -------
    int
        The number of training-health problems.
    """
    from ._training_report import settings_lines, stop_lines

    d = model.derived or {}
    if d:
        con.say(f"settings ({d.get('preset')} preset, {d.get('n_train')} training cells):")
        for line in settings_lines(d):
            con.say(f"  {line}")
    for line in stop_lines(model.history):
        con.say(line)
    return report_health(model.health, con)


def report_health(health, con: Console, full: bool = True) -> int:
    """Print ``model.health``: one line per network (``full``) and every problem as a warning, shown even
    when the console is quiet.

    Parameters
    ----------
    health : dict or None
        ``model.health``.
    con : the :class:`Console` (or any object with ``say`` and ``warn``).
    full : bool
        Also print the one-line summary of each network.

    Returns
    -------
    int
        The number of problems.
    """
    from ._training_report import health_lines, health_problems

    if full and health:
        con.say("training health:")
        for line in health_lines(health):
            con.say(f"  {line}")
    problems = health_problems(health)
    for p in problems:
        con.warn(f"training health: {p}")
    return len(problems)


# ----------------------------------------------------------------------------------------------
# result files
# ----------------------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NumPy values made plain) to ``path`` atomically; return ``path``."""
    return write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_h5ad(adata, path: Path) -> Path:
    """Write ``adata`` to ``path`` atomically (``uns["scmedal"]`` made plain JSON types first, so h5py can
    store it); return ``path``."""
    if "scmedal" in adata.uns:
        adata.uns["scmedal"] = json_safe(adata.uns["scmedal"], drop_none=True)
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def write_comparison_outputs(comp, out: Path, stem: str, formats: Sequence[str], dpi: int,
                             gene_labels: int, columns=None, title=None, figure_kw=None) -> dict[str, list[str]]:
    """Write the files of one genomap comparison into ``out``.

    Parameters
    ----------
    comp : :class:`~napari_scmedal.compare.Comparison`
    out : Path
        Output folder.
    stem : str
        File-name stem: ``STEM.npz`` (arrays), ``STEM.FORMAT`` (panel figures), ``STEM_top_genes.csv`` (per
        row) and ``STEM_top_genes_overall.csv``.
    formats : sequence of str
        Figure formats (png, svg, pdf, tif).
    dpi : int
        Figure resolution.
    gene_labels : int
        Top genes labelled on the figure.
    columns, title : optional
        Versions drawn and figure title (:func:`~napari_scmedal.figures.comparison_figure`).
    figure_kw : dict, optional
        More arguments of ``comparison_figure`` (e.g. highlighted genes and a gene set).

    Returns
    -------
    dict
        ``{"arrays": [...], "figures": [...], "tables": [...]}``: the paths written.
    """
    from ._utils import write_csv
    from .figures import comparison_figure, save_figure

    files: dict[str, list[str]] = {"arrays": [], "figures": [], "tables": []}
    files["arrays"].append(comp.save_npz(out / f"{stem}.npz"))
    fig = comparison_figure(comp, columns=columns, gene_labels=gene_labels, title=title, **(figure_kw or {}))
    for fmt in formats:
        files["figures"].append(save_figure(fig, out / f"{stem}.{fmt}", dpi=dpi))
    top = comp.top_genes.copy()
    if len(top):
        top.insert(1, "title", [comp.row_titles[int(r)] for r in top["row"]])
    files["tables"].append(write_csv(top, out / f"{stem}_top_genes.csv"))
    files["tables"].append(write_csv(comp.top_genes_overall, out / f"{stem}_top_genes_overall.csv"))
    return files


def pixel_test_outputs(comp, batches_a, batches_b, out: Path, stem: str, names, formats, dpi, alpha,
                       method="mannwhitney", dist="normal"):
    """Run :func:`~napari_scmedal.lmm.counterfactual_pixel_test` on ``comp`` and write its files.

    Writes ``STEM.csv``, ``STEM_significant.csv``, ``STEM_overlay.npz`` (significant, q, p, diff) and the
    figure in each of ``formats``. ``names``: the two groups' names for the figure title.

    Returns
    -------
    (result, list of str)
        The test result and the paths written.
    """
    import numpy as np

    from .figures import pixel_test_figure, save_figure
    from .lmm import counterfactual_pixel_test

    res = counterfactual_pixel_test(comp, batches_a, batches_b, method=method, alpha=alpha, names=names, dist=dist)
    files = [res.to_csv(out / f"{stem}.csv"), res.to_csv(out / f"{stem}_significant.csv", significant_only=True)]
    overlay = out / f"{stem}_overlay.npz"
    with atomic_output(overlay) as tmp:
        np.savez_compressed(tmp, significant=res.significant, q=res.q, p=res.p, diff=res.diff)
    files.append(str(overlay))
    fig = pixel_test_figure(res, title=f"{res.description}, counterfactuals to {names[1]} vs {names[0]}: "
                                       f"{int(res.significant.sum())} significant pixel(s), BH q < {alpha:g}")
    for fmt in formats:
        files.append(save_figure(fig, out / f"{stem}.{fmt}", dpi=dpi))
    return res, files


def write_metrics(table: dict, out: Path) -> list[str]:
    """Write :func:`~napari_scmedal.metrics.evaluate_model`'s table as ``metrics.json`` and ``metrics.csv``
    (one row per score) in ``out``; return the two paths."""
    import pandas as pd

    from ._utils import write_csv
    from .metrics import metrics_rows

    cols = ["split", "latent", "grouping", "metric", "value", "better", "ci_low", "ci_high", "chance", "n_folds"]
    return [str(write_json(out / "metrics.json", table)),
            write_csv(pd.DataFrame(metrics_rows(table), columns=cols), out / "metrics.csv")]


def holdout_summary(df) -> Any:
    """Mean score per method over the pairs (and the number of pairs).

    Parameters
    ----------
    df : pandas.DataFrame
        :func:`~napari_scmedal.holdout.counterfactual_holdout`'s table.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``pairs`` and the mean of every score column that has values.
    """
    cols = [c for c in ("r2_all", "r2_top100", "shift_corr", "cell_rmse") if df[c].notna().any()]
    out = df.groupby("method", sort=False)[cols].mean()
    out.insert(0, "pairs", df.groupby("method", sort=False).size())
    return out


# ----------------------------------------------------------------------------------------------
# the demo's HTML report
# ----------------------------------------------------------------------------------------------
def training_html(model) -> str:
    """The report's training section: settings used (and why), how each network stopped, training health."""
    from ._training_report import (
        health_lines,
        health_problems,
        settings_summary,
        stop_lines,
    )

    e = html.escape
    items = "".join(f"<li>{e(x)}</li>" for x in stop_lines(model.history) + health_lines(model.health))
    problems = health_problems(model.health)
    warn = ("<p style='color:#b34700'><b>Training health problems:</b></p><ul style='color:#b34700'>"
            + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>") if problems else ""
    return (f"<h2>Training</h2><p>Settings: {e(settings_summary(model.derived) or 'not recorded')}.</p>"
            f"<ul>{items}</ul>{warn}")


def _metrics_html(table) -> str:
    """The report's metrics table (one row per latent) and the classification sentence."""
    import pandas as pd

    from .metrics import metrics_rows

    e = html.escape
    rows = pd.DataFrame(metrics_rows(table))
    if not len(rows):
        return "<p>No metrics.</p>"
    names = {"asw": "ASW", "inv_db": "1/DB", "ch": "CH", "ilisi": "iLISI", "clisi": "cLISI", "nmi": "NMI"}
    sc = rows[rows["metric"].isin(list(names))].copy()
    sc["metric"] = sc["metric"].map(names)
    sc["latent"] = sc["latent"].str.upper()
    pivot = sc.pivot_table(index="latent", columns=["grouping", "metric"], values="value", aggfunc="first")
    metrics_html = pivot.to_html(float_format=lambda v: f"{v:.3f}", classes="tbl")
    cl = rows[rows["grouping"].str.startswith("classify:")]
    if len(cl):
        target = cl["grouping"].iloc[0].split(":", 1)[1]
        acc = ", ".join(f"{k.upper()} {v:.3f}" + ("" if pd.isna(lo) else f" (95% CI {lo:.3f}-{hi:.3f})")
                        for k, v, lo, hi in zip(cl["latent"], cl["value"], cl["ci_low"], cl["ci_high"]))
        acc += f"; chance (majority class) {cl['chance'].iloc[0]:.3f}"
        metrics_html += (f"<p>Random-forest classification of <code>{e(target)}</code> from the latents "
                         f"({e(cl['metric'].iloc[0])}): {acc}. Every batch is seen in training, so this "
                         "mostly measures batch recognition (METHOD.md section 4).</p>")
    return metrics_html


def demo_report_html(summary, table, panels, res, formats, model) -> str:
    """The demo's ``report.html``.

    Parameters
    ----------
    summary : dict
        The demo's ``summary.json`` content (data, layout shape, timings, Mann-Whitney counts).
    table : dict
        :func:`~napari_scmedal.metrics.evaluate_model`'s table.
    panels : list of dict
        One per cell line: ``{"line", "stem", "rows", "top"}`` (its figure stem, row titles, top genes).
    res : the Mann-Whitney :func:`~napari_scmedal.lmm.counterfactual_pixel_test` result.
    formats : sequence of str
        Figure formats written (the page shows PNG when there is one).
    model : the trained :class:`~napari_scmedal.ScMEDAL`.

    Returns
    -------
    str
        The HTML page (images and tables referenced by file name, relative to the output folder).
    """
    e = html.escape
    img_ext = "png" if "png" in formats else formats[0]
    t = summary["timings_s"]
    d = summary["data"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>scMEDAL demo report</title>",
        ("<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
         "img{max-width:100%;border:1px solid #ddd}.tbl{border-collapse:collapse;font-size:0.9em}"
         ".tbl td,.tbl th{border:1px solid #ccc;padding:3px 6px}code{background:#f4f4f4}</style></head><body>"),
        "<h1>scMEDAL demo on the CellBench sample</h1>",
        (f"<p>{d['cells']} cells, {d['model_genes']} model genes (genomap {summary['layout_shape'][0]} x "
         f"{summary['layout_shape'][1]}), batches: {e(', '.join(d['batches']))}; cell lines: "
         f"{e(', '.join(d['cell_lines']))}.{' <b>Reduced --fast mode.</b>' if d['fast'] else ''}</p>"),
        (f"<p>Training {t['train_s']:.0f} s, genomap layout {t['layout_s']:.0f} s, total {t['total_s']:.0f} s. "
         f"Model: <code>model.safetensors</code>; latents: <code>latents.h5ad</code> (obsm).</p>"),
        training_html(model),
        "<h2>Latent-space metrics (test split, METHOD.md section 4)</h2>",
        ("<p>Batch-invariant latents (FE, FEC) want low batch scores and high cell-line scores; the RE latent "
         "wants high batch scores. Files: <code>metrics.csv</code>, <code>metrics.json</code>.</p>"),
        _metrics_html(table),
        "<h2>Genomaps</h2>",
        ("<p>Each pixel is a gene; co-expressed genes sit close together. Pixel values are per-gene z-scores "
         "over a reference stack of cells in every version (METHOD.md section 5), so all panels share one colour "
         "scale; differences use a diverging scale centred on zero. The framed counterfactual is the row's own "
         "batch; <i>Counterfactual &rarr; b - Counterfactual &rarr; own batch</i> is the batch effect the model "
         "attributes to moving the cells to batch b. Red circles: the 10 genes varying most across the "
         "counterfactual batches. The arrays of every version (also <i>Counterfactual &rarr; b - Original</i>) "
         "are in the <code>.npz</code> files.</p>"),
        ("<p><b>Reading the counterfactuals.</b> They use the default <code>method=\"balanced\"</code> "
         "(docs/model.md, \"Counterfactuals\"): each cell's RE reconstruction changed by the batch change "
         "measured on its own cell line where that line was seen in both batches, else on the other lines "
         "(extrapolated, flagged). Between the CEL-seq2 plates the real differences are about the size of "
         "sampling noise. The Mann-Whitney test treats every cell x batch genomap as an independent sample, "
         "as the paper does, so its p-values are optimistic.</p>"),
        f"<h3>Overview: one row per cell line</h3><img src='genomap_overview.{img_ext}'>",
    ]
    for p in panels:
        top = p["top"]
        genes = ", ".join(e(str(g)) for g in top["gene"].head(10)) if len(top) else "-"
        parts.append(f"<h3>{e(p['line'])}</h3><p>Rows: {e('; '.join(p['rows']))}. Top genes across "
                     f"counterfactual batches: {genes} (<code>{p['stem']}_top_genes.csv</code>).</p>"
                     f"<img src='{p['stem']}.{img_ext}'>")
    parts += _mann_whitney_html(summary, res, img_ext)
    parts.append("<p>Per-cell top genes: <code>top_genes_cells.csv</code>.</p></body></html>")
    return "\n".join(parts)


def _mann_whitney_html(summary, res, img_ext: str) -> list[str]:
    """The report's Mann-Whitney section: counts, figure and the 20 largest significant differences."""
    e = html.escape
    sig = res.significant_genes
    parts = [
        "<h2>Per-pixel Mann-Whitney U: counterfactuals to CEL-seq2 batches vs Drop-seq</h2>",
        (f"<p>{res.n_a} vs {res.n_b} counterfactual genomaps ({summary['mann_whitney']['cells']} cells); "
         f"Benjamini-Hochberg over {len(res.table)} tested pixels: <b>{int(res.significant.sum())}</b> significant "
         f"at q &lt; {res.alpha:g} (<code>mwu_celseq2_vs_dropseq.csv</code>, "
         f"<code>mwu_celseq2_vs_dropseq_significant.csv</code>).</p>"),
        f"<img src='mwu_celseq2_vs_dropseq.{img_ext}'>",
    ]
    if len(sig):
        sig = sig.reindex(sig["diff"].abs().sort_values(ascending=False).index)
        parts.append("<p>The 20 significant pixels with the largest difference of means "
                     f"({e(res.group_b)} - {e(res.group_a)}):</p>")
        parts.append(sig.head(20).to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="tbl"))
    return parts
