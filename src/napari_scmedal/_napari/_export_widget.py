"""Dock widget: export the genomap explorer's current comparison as a publication panel.

The panel itself is drawn by :func:`napari_scmedal.figures.comparison_figure` and written by
:func:`napari_scmedal.figures.save_figure` (PNG, SVG, PDF or TIFF) in a worker thread.  Sizes are
physical, in millimetres: by default a full-page panel 180 mm wide (narrower with few columns)
whose height follows from the rows, laid out so that every text is at least 6 pt at that size.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
)

from ._base import DockWidget
from ._common import notify_error, notify_info, scroll_root
from ._settings import load_settings, save_settings

SECTION = "export_widget"
MM_PER_INCH = 25.4
FORMATS = "PNG (*.png);;SVG (*.svg);;PDF (*.pdf);;TIFF (*.tif *.tiff)"


def current_comparison(viewer):
    """The comparison shown by the genomap explorer (from its image layers), or None."""
    for ly in reversed(list(viewer.layers)):
        comp = ly.metadata.get("comparison")
        if comp is not None:
            return comp
    return None


class ExportWidget(DockWidget):
    """Choose versions, size, DPI, title and gene labels; write the panel to a file."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.last_path = None
        root = scroll_root(self)
        form = QFormLayout()
        self.columns_list = QListWidget()
        self.columns_list.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.columns_list.setMinimumHeight(140)
        self.refresh_btn = QPushButton("Refresh versions from the explorer")
        self.width_spin = QDoubleSpinBox()
        self.height_spin = QDoubleSpinBox()
        for sp in (self.width_spin, self.height_spin):
            sp.setRange(0.0, 1500.0)
            sp.setSingleStep(5.0)
            sp.setDecimals(1)
            sp.setSuffix(" mm")
        from napari_scmedal.figures import DEFAULT_WIDTH_MM

        self.width_spin.setSpecialValueText(f"auto ({DEFAULT_WIDTH_MM:g} mm, full page)")
        self.height_spin.setSpecialValueText("auto (square tiles)")
        self.width_spin.setToolTip(
            f"Physical width of the panel. auto: {DEFAULT_WIDTH_MM:g} mm (a full page), narrower when "
            "there are few columns. Fonts stay at least 6 pt at this size.")
        self.height_spin.setToolTip("Physical height of the panel. auto: follows from the rows, "
                                    "so that genomap pixels stay square.")
        self.dpi_spin = QSpinBox()
        self.dpi_spin.setRange(30, 1200)
        self.dpi_spin.setValue(300)
        self.title_edit = QLineEdit()
        self.genes_check = QCheckBox("label the top varying genes")
        self.genes_check.setChecked(True)
        form.addRow("versions (columns)", self.columns_list)
        form.addRow(self.refresh_btn)
        form.addRow("width (mm)", self.width_spin)
        form.addRow("height (mm)", self.height_spin)
        form.addRow("DPI", self.dpi_spin)
        form.addRow("title", self.title_edit)
        form.addRow(self.genes_check)
        root.addLayout(form)
        self.export_btn = QPushButton("Export panel...")
        root.addWidget(self.export_btn)
        self.add_status_label(root, "Compute a comparison in the genomap explorer, then export it here.")
        root.addStretch(1)

        s = load_settings(SECTION)
        for sp, key in ((self.width_spin, "width"), (self.height_spin, "height")):
            value = s.get(f"{key}_mm")
            if not isinstance(value, (int, float)) and isinstance(s.get(key), (int, float)):
                value = float(s[key]) * MM_PER_INCH  # settings of older versions: inches
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sp.setValue(float(value))
        if isinstance(s.get("dpi"), int):
            self.dpi_spin.setValue(s["dpi"])
        self.genes_check.setChecked(bool(s.get("gene_labels", True)))
        self._last_dir = s.get("folder", str(Path.home()))

        self.refresh_btn.clicked.connect(self.refresh)
        self.export_btn.clicked.connect(self._export_dialog)
        self.viewer.layers.events.inserted.connect(self.refresh)
        self.refresh()

    def refresh(self, *_):
        comp = current_comparison(self.viewer)
        names = list(comp.names) if comp is not None else []
        current = [self.columns_list.item(i).text() for i in range(self.columns_list.count())]
        if names == current:
            return
        chosen = set(self.selected_columns()) & set(names)
        self.columns_list.clear()
        self.columns_list.addItems(names)
        for i in range(self.columns_list.count()):
            it = self.columns_list.item(i)
            # default: every expression image plus the "minus Original" differences
            default = comp.kinds[it.text()] == "expression" or it.text().endswith(" - Original")
            it.setSelected(it.text() in chosen if chosen else default)

    def selected_columns(self):
        return [self.columns_list.item(i).text() for i in range(self.columns_list.count())
                if self.columns_list.item(i).isSelected()]

    def size_inches(self):
        """The chosen physical size as ``(width, height)`` inches for the figure, or None (auto).

        An auto width is the figures' default (180 mm, narrower with few columns); an auto height
        (with a width given) follows from the rows."""
        w, h = self.width_spin.value(), self.height_spin.value()
        if w <= 0 and h <= 0:
            return None
        from napari_scmedal.figures import DEFAULT_WIDTH_MM

        return ((w if w > 0 else DEFAULT_WIDTH_MM) / MM_PER_INCH, h / MM_PER_INCH if h > 0 else None)

    def _export_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export comparison panel",
                                              str(Path(self._last_dir) / "genomap_panel.png"), FORMATS)
        if path:
            self.export(path)

    def export(self, path):
        """Draw the panel and write it to ``path`` in a worker; returns the worker (None on error)."""
        comp = current_comparison(self.viewer)
        if comp is None:
            notify_error(ValueError("Nothing to export: compute a comparison in the genomap explorer first."),
                         self)
            return None
        self.refresh()
        columns = self.selected_columns() or None
        w, h = self.width_spin.value(), self.height_spin.value()
        size = self.size_inches()
        dpi = self.dpi_spin.value()
        title = self.title_edit.text().strip() or None
        genes = self.genes_check.isChecked()
        save_settings(SECTION, {"width_mm": w, "height_mm": h, "dpi": dpi, "gene_labels": genes,
                                "folder": str(Path(path).parent)})
        self._last_dir = str(Path(path).parent)

        def _work():
            from napari_scmedal.figures import comparison_figure, save_figure

            fig = comparison_figure(comp, columns=columns, gene_labels=genes, title=title, size=size, dpi=dpi)
            return save_figure(fig, path, dpi=dpi)

        def _done(p):
            self.last_path = p
            self.status_label.setText(f"Wrote {p}")
            notify_info(f"Exported the comparison panel to {p}", self)

        return self.launch(_work, _done)
