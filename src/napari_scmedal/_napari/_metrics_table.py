"""The model widget's metrics table: the core's metric rows (:func:`napari_scmedal.metrics.metrics_rows`, one
row per metric) arranged as one table row per latent and grouping, one column per metric, with tooltips that
say what each metric means and which direction is good."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QTableWidgetItem

from napari_scmedal.metrics import LATENT_NAMES as SHORT_NAMES
from napari_scmedal.metrics import metric_goal

#: What each metric column means (header tooltips).
METRIC_TIPS = {
    "better": "Which direction is good for this row's 1/DB, CH and ASW: batch scores should be LOW for FE/FEC and the "
              "PCA/Harmony baselines (batch removed) and HIGH for RE (batch captured); cell-type scores HIGH (types "
              "kept apart). iLISI runs the other way (hover a cell for each metric).",
    "1/DB": "Inverse Davies-Bouldin index: higher = groups more separated.",
    "CH": "Calinski-Harabasz index: higher = groups more separated.",
    "ASW": "Average silhouette width (-1..1): higher = groups more separated; near 0 = mixed.",
    "iLISI": "Scaled integration LISI by batch (0..1): 1 = every cell's 90 nearest neighbours mix all batches evenly, "
             "0 = they come from its own batch. HIGHER = batches mixed (wanted for FE, FEC, PCA, Harmony; RE should "
             "stay low).",
    "cLISI": "Scaled cell-type LISI (0..1): 1 = every cell's neighbours share its label, 0 = labels fully mixed. "
             "Higher = types kept apart.",
    "NMI": "Normalised mutual information between the labels and k-means clusters (one per label): 1 = the "
           "clusters are the labels.",
    "ARI": "Adjusted Rand index between the labels and the same k-means clusters: 1 = identical, ~0 = unrelated.",
    "accuracy": "Random-forest accuracy predicting the target from the latent: mean over stratified k folds of the "
                "test cells (or over held-out batches).",
    "95% CI": "95% t-interval of the mean accuracy over the folds.",
    "chance": "Accuracy of a majority-class dummy classifier on the same folds: the level to beat.",
}
#: Table columns in display order (metric columns appear when present).
TABLE_COLUMNS = ["latent", "by", "better", "1/DB", "CH", "ASW", "iLISI", "cLISI", "NMI", "ARI", "accuracy",
                 "95% CI", "chance"]
_COLUMN_OF = {"inv_db": "1/DB", "ch": "CH", "asw": "ASW", "ilisi": "iLISI", "clisi": "cLISI", "nmi": "NMI",
              "ari": "ARI"}


def table_rows(rows) -> list[dict]:
    """Arrange :func:`napari_scmedal.metrics.metrics_rows` (one row per metric) as the widget's table: one row
    per latent and grouping, one column per metric (:data:`TABLE_COLUMNS`)."""
    out: dict = {}
    for r in rows:
        kind, grouping = r["latent"], str(r["grouping"])
        name = SHORT_NAMES.get(kind, str(kind).upper())
        if grouping.startswith("classify:"):
            by = f"RF accuracy, {grouping.split(':', 1)[1]}"
            row = out.setdefault((kind, by), {"latent": name, "by": by, "better": "higher"})
            row["accuracy"] = float(r["value"])
            lo, hi = r.get("ci_low", float("nan")), r.get("ci_high", float("nan"))
            if lo == lo and hi == hi:  # noqa: PLR0124 (not NaN)
                row["95% CI"] = f"{lo:.3f}-{hi:.3f}"
            row["chance"] = float(r.get("chance", float("nan")))
        elif r["metric"] in _COLUMN_OF:
            row = out.setdefault((kind, grouping), {"latent": name, "by": grouping,
                                                    "better": metric_goal(kind, grouping), "better_tip": ""})
            col = _COLUMN_OF[r["metric"]]
            row[col] = r["value"]
            row["better_tip"] += f"{col}: {r.get('better') or metric_goal(kind, grouping, r['metric'])}\n"
    return list(out.values())


def fill_metrics_table(table, rows) -> None:
    """Show :func:`table_rows` in the QTableWidget ``table`` (metric columns that no row has are left out;
    headers and the "better" cells carry tooltips)."""
    header = [c for c in TABLE_COLUMNS if c in ("latent", "by", "better", "1/DB", "CH", "ASW")
              or any(c in r for r in rows)]
    table.setRowCount(len(rows))
    table.setColumnCount(len(header))
    table.setHorizontalHeaderLabels(header)
    for i, row in enumerate(rows):
        for j, key in enumerate(header):
            v = row.get(key, "")
            text = f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
            item = QTableWidgetItem(text)
            if key == "better" and row.get("better_tip"):
                item.setToolTip(row["better_tip"].rstrip())
            table.setItem(i, j, item)
    for j, key in enumerate(header):
        tip = METRIC_TIPS.get(key)
        if tip:
            table.horizontalHeaderItem(j).setToolTip(tip)
    table.resizeColumnsToContents()
