"""Regenerate the user-guide screenshots (docs/images/) by driving the real plugin in napari.

Run under Xvfb (napari needs a display; screenshots need a shown window on xcb):

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/make_screenshots.py

Every step of docs/user-guide.md is performed exactly as a user would through the widgets
(open the sample, train with the quick preset, compute a comparison, hover, export) and the
window is captured after each step. Options: ``--out DIR`` (default docs/images),
``--epochs N`` (cap the quick preset's epochs, default 30, to keep the run short),
``--threads N`` (torch threads, default 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--genes", type=int, default=2916)
    ap.add_argument("--scale", default="zscore", choices=["log1p", "zscore"],
                    help="genomap scale in the explorer (default zscore, as in the paper's figures)")
    ap.add_argument("--save-model", help="also save the trained model here")
    ap.add_argument("--only", help="development only: comma-separated screenshot numbers to write (e.g. 04,05)")
    ap.add_argument("--load-model", help="development only: load this model instead of training "
                    "(the training screenshots then show loading)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a private settings dir, so the screenshots never depend on a user's remembered settings
    os.environ["NAPARI_SCMEDAL_CONFIG_DIR"] = tempfile.mkdtemp(prefix="scmedal-shots-")

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-scmedal", show=True)
    win = viewer.window._qt_window  # noqa: SLF001 - sizing the window for reproducible screenshots
    win.resize(1920, 1080)  # a full-HD screen with all three widgets docked (issue 12)
    app = QApplication.instance()

    def pump(seconds=0.3):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    def wait(widget, what, timeout=1800):
        t0 = time.monotonic()
        while widget.busy:
            pump(0.1)
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what} did not finish in {timeout} s")
        pump(0.5)
        if getattr(widget, "last_error", None):
            raise RuntimeError(f"{what} failed: {widget.last_error}")

    only = set(args.only.split(",")) if args.only else None

    def shot(name):
        if only is not None and name[:2] not in only:
            return
        pump(0.5)
        path = out / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        print("wrote", path, flush=True)

    # 1. open the sample data
    viewer.open_sample("napari-scmedal", "cellbench")
    pump()
    shot("01_sample_data.png")

    # 2. train with the quick preset
    dock, mw = viewer.window.add_plugin_dock_widget("napari-scmedal", "scMEDAL model")
    mw.batch_combo.setCurrentText("batch")
    mw.label_combo.setCurrentText("cell_line")
    mw.genes_spin.setValue(args.genes)
    mw.preset_combo.setCurrentText("quick")
    mw.epochs_spin.setValue(args.epochs)
    mw.threads_spin.setValue(args.threads)
    viewer.reset_view()
    if args.load_model:
        mw.load_model(args.load_model)
    else:
        mw.start_training()
    t0 = time.monotonic()
    while mw.busy and not mw.loss_canvas.curves.get("re") and time.monotonic() - t0 < 900:
        pump(0.2)
    win.statusBar()._toggle_activity_dock(True)  # noqa: SLF001 - show the progress bars
    pump(1.0)
    mw.loss_canvas.redraw(force=True)
    mw.loss_canvas.wait_idle()
    shot("02_training.png")
    win.statusBar()._toggle_activity_dock(False)  # noqa: SLF001
    wait(mw, "training")
    if args.save_model:
        mw.save_model(args.save_model)
    viewer.reset_view()
    shot("03_latents_and_metrics.png")

    # 3. genomap explorer: one cell line, a few cells, every batch as target
    viewer.window.remove_dock_widget(dock)
    dock, ex = viewer.window.add_plugin_dock_widget("napari-scmedal", "Genomap explorer")
    ex._refresh_layers()
    ex.mode_combo.setCurrentText("group (label x batch)")
    ex.label_combo.setCurrentText("H1975")
    ex.batch_combo.setCurrentText("(any)")
    ex.max_cells_spin.setValue(2)
    ex.scale_combo.setCurrentText(args.scale)
    ex.compute()
    wait(ex, "comparison")
    ex.focus()
    shot("04_explorer.png")

    # 4. hover: the gene under the cursor and every layer's value there
    comp = ex.comparison
    top = comp.top_genes_overall.iloc[0]
    y, x = ex.tile_origin("Original")
    pos = np.array([y + float(top["row_px"]), x + float(top["col_px"])])
    ex._on_mouse_move(viewer, SimpleNamespace(position=pos))
    shot("05_hover.png")

    # 4b. find genes (marked on every tile, their values in a table) and a pasted gene set (outlined, scored)
    from qtpy.QtCore import QPoint, Qt

    panel = ex.gene_panel
    genes = {str(g) for g in comp.layout.genes}
    width = dock.width()
    win.resizeDocks([dock], [560], Qt.Orientation.Horizontal)  # room for the tables' columns
    pump()
    ex.focus()

    def scroll_to(widget):  # vertically only: the dock's content is wider than the dock
        ex.scroll_area.verticalScrollBar().setValue(widget.mapTo(ex.scroll_area.widget(), QPoint(0, 0)).y() - 8)

    marked = [str(top["gene"])] + [g for g in ("MGP", "KRT19", "VIM", "CDH1") if g in genes][:1]
    panel.search_edit.setText(", ".join(marked))
    panel.mark()
    scroll_to(panel)
    shot("09_gene_search.png")
    interferon = ["IFIT1", "IFIT2", "IFIT3", "ISG15", "MX1", "MX2", "OASL", "OAS1", "IFI6", "IFI27", "IFI44L",
                  "IFITM3", "RIGI", "IFIH1", "DDX60", "SAMD9L", "GBP1", "GBP2", "STAT1", "IRF7", "PSMB8", "B2M",
                  "HLA-A", "HLA-B", "HLA-E", "HLA-F", "NMI", "LY6E", "CD274"]
    panel.clear()
    panel.paste_edit.setPlainText(", ".join(interferon))
    panel.use_paste_btn.click()
    wait(panel, "gene-set scores")
    scroll_to(panel.load_btn)
    y, x = ex.tile_origin("Original")  # zoomed on the first tiles: the outline along the pixels' edges
    viewer.camera.center = (y + comp.n_rows * (comp.shape[0] + 2) / 2, x + 1.5 * comp.shape[1] + 8)
    viewer.camera.zoom *= 3
    shot("10_gene_set.png")
    ex.focus()
    panel.clear_set()
    panel.search_edit.clear()
    panel.paste_edit.clear()
    ex.scroll_area.verticalScrollBar().setValue(0)

    # 4c. mixed-model pixel test: the two 3-cell-line experiments against the three 5-cell-line plates (a
    # batch-level attribute). With 2 + 3 batches the t p-values (3 df) find nothing at q < 0.05; the normal
    # p-values (statsmodels') do, and the panel's status line says how many.
    viewer.reset_view()
    tp = ex.test_panel
    tp.method_combo.setCurrentText("mixed model (batch random effect)")
    tp.dist_combo.setCurrentText("normal (as statsmodels)")
    tp.set_groups(["CELseq2_3cl", "Dropseq_3cl"], ["CELseq2_5cl_p1", "CELseq2_5cl_p2", "CELseq2_5cl_p3"],
                  names=("3-line mix", "5-line plates"))
    tp.run_btn.click()
    wait(tp, "mixed-model test")
    print(tp.status_label.text(), flush=True)
    scroll_to(tp)
    ex.focus()
    y, x = ex.tile_origin("Original")
    viewer.camera.center = (y + comp.n_rows * (comp.shape[0] + 2) / 2, x + 1.5 * comp.shape[1] + 8)
    viewer.camera.zoom *= 3
    shot("11_mixed_model.png")
    tp.clear_overlay()
    tp.dist_combo.setCurrentText("t (batches - 2 df)")
    ex.scroll_area.verticalScrollBar().setValue(0)
    win.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    pump()
    ex.focus()

    # 5. average a group, selected in the cells layer
    cells = viewer.layers["CellBench sample"]
    feats = cells.features
    sel = np.flatnonzero((feats["cell_line"].astype(str) == "H1975").to_numpy()
                         & (feats["batch"].astype(str) == "Dropseq_3cl").to_numpy())
    ex.average_check.setChecked(True)
    ex.mode_combo.setCurrentText("selected points")
    ex.cells_combo.setCurrentText("CellBench sample")
    cells.selected_data = set(int(i) for i in sel)
    pump(0.5)
    wait(ex, "averaged comparison")
    ex.focus()
    shot("06_group_average.png")

    # 6. export the panel
    viewer.window.remove_dock_widget(dock)
    dock, xw = viewer.window.add_plugin_dock_widget("napari-scmedal", "Export figure")
    xw.refresh()
    keep = ("Original", "FE reconstruction")
    for i in range(xw.columns_list.count()):
        it = xw.columns_list.item(i)
        it.setSelected(it.text() in keep or (it.text().startswith("Counterfactual -> ")
                                             and " - " not in it.text()))
    xw.width_spin.setValue(0.0)  # auto: sized from the number of rows and columns
    xw.height_spin.setValue(0.0)
    xw.dpi_spin.setValue(150)
    xw.title_edit.setText("H1975, Drop-seq: original, FE and counterfactuals")
    xw.export(str(out / "07_exported_panel.png"))
    wait(xw, "export")
    shot("08_export_widget.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
