"""The Genomap explorer's pixel-test panel: which genomap pixels differ between two groups of batches?

The science is in :func:`napari_scmedal.lmm.counterfactual_pixel_test`: either the mixed model
``value ~ group + (1 | batch)`` per pixel (batches as random effects, the reference's model for
donor-level designs) or Mann-Whitney U per pixel (every cell x batch genomap an independent sample).
Both run on the counterfactual genomaps of the explorer's current comparison (one row per cell, with
a counterfactual into every batch named). This panel gathers the two groups, runs the test in a
worker (the mixed model reports progress and can be cancelled), outlines the significant pixels on
every tile and saves the gene table as CSV.
"""

from __future__ import annotations

import threading

from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
)

from ._common import Bridge, notify_error
from ._annotations import hide_layer
from ._tile_overlays import outline_on_tiles
from ._tiles import SIGNIFICANT_LAYER

#: p-values of the mixed model's group coefficient: a t distribution with (batches - 2) degrees of freedom, or the
#: normal (statsmodels MixedLM's z-test). With few batches the z-test is anti-conservative (measured with 20
#: batches: 19% of its significant pixels false vs 7.5% with t; docs/benchmarks.md), hence t by default here.
DISTS = {"t (batches - 2 df)": "t", "normal (as statsmodels)": "normal"}
METHODS = {"mixed model (batch random effect)": "mixedlm", "Mann-Whitney (cells independent)": "mannwhitney"}
NOTES = {
    "mixedlm": "value ~ group + (1 | batch) per pixel, Benjamini-Hochberg. The same cells are projected into "
               "every batch: the random intercept absorbs batch-level correlation, not the repeated cells.",
    "mannwhitney": "Mann-Whitney U per pixel treats every cell x batch genomap as an independent sample: with "
                   "cells from few donors it overstates significance. Prefer the mixed model for donor designs.",
}


class PixelTestPanel(QGroupBox):
    """Two groups of target batches -> per-pixel test -> significant pixels outlined on the tiles + CSV."""

    def __init__(self, explorer):
        super().__init__("Pixel test between two groups of batches")
        self.explorer = explorer
        self.result = None
        self.workers = []
        self._cancel = threading.Event()
        self._bridge = Bridge()  # progress from the worker, shown in the status line
        self._bridge.message.connect(self._on_progress)
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.a_list, self.b_list = QListWidget(), QListWidget()
        for lst in (self.a_list, self.b_list):
            lst.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
            lst.setMaximumHeight(90)
        self.a_name, self.b_name = QLineEdit("A"), QLineEdit("B")
        self.alpha_spin = QDoubleSpinBox()
        self.alpha_spin.setRange(0.001, 0.5)
        self.alpha_spin.setDecimals(3)
        self.alpha_spin.setSingleStep(0.01)
        self.alpha_spin.setValue(0.05)
        self.dist_combo = QComboBox()
        self.dist_combo.addItems(list(DISTS))
        form.addRow("test", self.method_combo)
        form.addRow("mixed-model p-values", self.dist_combo)
        form.addRow("group A name", self.a_name)
        form.addRow("group A batches", self.a_list)
        form.addRow("group B name", self.b_name)
        form.addRow("group B batches", self.b_list)
        form.addRow("FDR (q <)", self.alpha_spin)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.run_btn = QPushButton("Run test")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.save_btn = QPushButton("Save CSV...")
        self.save_btn.setEnabled(False)
        for b in (self.run_btn, self.cancel_btn, self.save_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.note_label = QLabel(NOTES["mixedlm"])
        self.note_label.setWordWrap(True)
        self.status_label = QLabel("Compute a comparison of single cells with counterfactuals into the batches "
                                   "of both groups, then Run test.")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.note_label)
        lay.addWidget(self.status_label)
        self.method_combo.currentTextChanged.connect(
            lambda t: (self.note_label.setText(NOTES[METHODS[t]]), self.dist_combo.setEnabled(METHODS[t] == "mixedlm")))
        self.run_btn.clicked.connect(self.run_test)
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(lambda: self.save_csv())

    # ------------------------------------------------------------------ choices
    def comparison_shown(self, comp) -> None:
        """The explorer shows a new comparison: offer its target batches; the old result no longer applies."""
        batches = [str(b) for b in comp.batches]
        for lst in (self.a_list, self.b_list):
            chosen = {it.text() for it in lst.selectedItems()}
            lst.clear()
            lst.addItems(batches)
            for i in range(lst.count()):
                if lst.item(i).text() in chosen:
                    lst.item(i).setSelected(True)
        if self.result is not None:
            self.clear_overlay()
            self.status_label.setText("The comparison changed: run the test again.")

    def set_groups(self, a, b, names=("A", "B")) -> None:
        """Select the batches of group A and B (as a user would in the lists)."""
        for lst, chosen in ((self.a_list, set(map(str, a))), (self.b_list, set(map(str, b)))):
            for i in range(lst.count()):
                lst.item(i).setSelected(lst.item(i).text() in chosen)
        self.a_name.setText(str(names[0]))
        self.b_name.setText(str(names[1]))

    @property
    def method(self) -> str:
        return METHODS[self.method_combo.currentText()]

    @property
    def busy(self) -> bool:
        return bool(self.workers)

    # ------------------------------------------------------------------ run
    def run_test(self):
        """Run the chosen test on the explorer's comparison in a worker."""
        from napari_scmedal.lmm import counterfactual_pixel_test

        comp = self.explorer.comparison
        a = [it.text() for it in self.a_list.selectedItems()]
        b = [it.text() for it in self.b_list.selectedItems()]
        try:
            if comp is None:
                raise ValueError("No comparison yet: compute one in the explorer first.")
            if comp.averaged:
                raise ValueError("The comparison averages its cells into one row; the test needs one row per "
                                 "cell. Untick 'average the selected cells' and compute again.")
            if not a or not b:
                raise ValueError("Select at least one batch for each group.")
        except ValueError as exc:
            notify_error(exc, self)
            self.status_label.setText(str(exc))
            return None
        method, alpha = self.method, float(self.alpha_spin.value())
        dist = DISTS[self.dist_combo.currentText()]
        names = (self.a_name.text().strip() or "A", self.b_name.text().strip() or "B")
        self._cancel = threading.Event()
        cancel, bridge = self._cancel, self._bridge
        self.status_label.setText(f"Running the {'mixed model' if method == 'mixedlm' else 'Mann-Whitney'} test "
                                  f"on {comp.n_rows} cell(s) x {len(a) + len(b)} batches...")

        def _work():
            kw = {}
            if method == "mixedlm":
                kw = dict(progress=bridge.message.emit, cancel=cancel.is_set, dist=dist)
            return counterfactual_pixel_test(comp, a, b, method=method, alpha=alpha, names=names, **kw)

        def _done(res):
            self.result = res
            n_sig = int(res.significant.sum())
            self.status_label.setText(
                f"{n_sig} significant pixel(s) of {len(res.table)} tested (q < {res.alpha:g}), "
                f"{res.group_b} vs {res.group_a}; outlined in '{SIGNIFICANT_LAYER}'.")
            self.save_btn.setEnabled(True)
            self.show_overlay(res)

        def _then():
            self.cancel_btn.setEnabled(False)

        self.cancel_btn.setEnabled(True)
        return self.explorer.launch(_work, _done, self.workers, [self.run_btn], _then, on_error=self._failed)

    def _on_progress(self, info):
        if isinstance(info, dict) and info.get("total"):
            self.status_label.setText(f"Mixed model: {info['done']} of {info['total']} pixels fitted...")

    def _failed(self, exc):
        cancelled = self._cancel.is_set()
        self.status_label.setText("Test cancelled: nothing changed." if cancelled else f"Failed: {exc}")
        if not cancelled:
            notify_error(exc, self)

    def cancel(self):
        self._cancel.set()
        self.status_label.setText("Cancelling the test...")

    # ------------------------------------------------------------------ output
    def show_overlay(self, res) -> None:
        """Outline the significant pixels on every tile and row of the comparison."""
        outline_on_tiles(self.explorer, res.significant, SIGNIFICANT_LAYER, color="#ff7f00",
                         meta={"pixel_test": res.test})

    def clear_overlay(self) -> None:
        self.result = None
        self.save_btn.setEnabled(False)
        hide_layer(self.explorer.viewer, SIGNIFICANT_LAYER)

    def save_csv(self, path=None, significant_only: bool = False):
        """Write the result's per-pixel gene table (a file dialog when ``path`` is None)."""
        if self.result is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the pixel-test table", "pixel_test.csv",
                                                  "CSV (*.csv)")
            if not path:
                return None
        try:
            out = self.result.to_csv(path, significant_only=significant_only)
        except Exception as exc:  # unwritable path: say so, keep the result
            notify_error(exc, self)
            return None
        self.status_label.setText(f"Saved {out}.")
        return out

