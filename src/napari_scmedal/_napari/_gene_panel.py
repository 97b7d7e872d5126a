"""The Genomap explorer's gene panel: find genes (marked on every tile and row, their value in every version in a
table, cells coloured by one gene's expression) and overlay a gene set (its pixels outlined on every tile and row,
its set score per version in a table).

No science here: names are matched, files read, pixels placed and values computed by
:mod:`napari_scmedal.genesets`; this module only turns its results into napari layers and Qt tables. The two
layers (``genomap | marked genes``, ``genomap | gene set``) are explorer annotation layers (they carry the
explorer's metadata key, so the writer skips them and a new comparison keeps them); they follow each new
comparison through :meth:`GenePanel.comparison_steps`, which the explorer runs after its own layer steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtWidgets import (
    QCompleter,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ._annotations import hide_layer, replace_layer
from ._common import notify_error
from ._layers import ADATA_KEY
from ._tiles import MARKS_LAYER, SET_LAYER, row_title, short_title

MARK_COLOR = "#ff8000"  # orange rings: apart from viridis, RdBu_r, the white top-gene rings and the set's outline
SET_COLOR = "#ff00ff"  # magenta pixel-edge outline (as in the figures)
MARK_SIZE = 3.0  # pixels: a ring around the pixel (its colour stays visible inside), readable at fit-to-view zoom
SET_EDGE_WIDTH = 0.3  # pixels: a member pixel keeps its colour inside the outline
CELL_CMAP = "magma"
TABLE_HEIGHT = 320  # px
GENE_SET_FILTER = "Gene sets (*.txt *.csv *.tsv *.gmt);;All files (*)"


class GeneCompleter(QCompleter):
    """Completes the last of several comma-separated gene names (case-insensitive, contained anywhere)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setModel(QStringListModel(self))
        self.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterMode(Qt.MatchFlag.MatchContains)
        self.setMaxVisibleItems(12)

    def splitPath(self, path):
        return [path.split(",")[-1].strip()]

    def pathFromIndex(self, index):
        head = self.widget().text().rsplit(",", 1)[0] + ", " if "," in self.widget().text() else ""
        return head + str(index.data())


def _row(layout, first, *more):
    row = QHBoxLayout()
    row.addWidget(first, 1)
    for w in more:
        row.addWidget(w)
    layout.addLayout(row)


def _table():
    t = QTableWidget()
    t.setVisible(False)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    return t


def fill_table(table, rows, cols, values, signed):
    """``values[i, j]`` under ``cols[j]`` in row ``rows[i]``; ``signed[i]``: write a sign (differences).
    An empty table is hidden."""
    table.setVisible(bool(len(rows) and len(cols)))
    table.clear()
    table.setRowCount(len(rows))
    table.setColumnCount(len(cols))
    table.setVerticalHeaderLabels(rows)
    table.setHorizontalHeaderLabels(cols)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(values[i, j])
            text = "\u2013" if not np.isfinite(v) else (f"{v:+.2f}" if signed[i] else f"{v:.2f}")
            item = QTableWidgetItem(text)
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(i, j, item)
    table.resizeColumnsToContents()
    need = (table.horizontalHeader().sizeHint().height() + table.verticalHeader().length() + 2 * table.frameWidth()
            + table.horizontalScrollBar().sizeHint().height())
    table.setFixedHeight(min(need, TABLE_HEIGHT))  # every version at once, up to TABLE_HEIGHT


class GenePanel(QGroupBox):
    """Find genes and overlay a gene set on the explorer's comparison (``explorer``: a GenomapExplorer)."""

    def __init__(self, explorer):
        super().__init__("Find a gene / gene set")
        self.ex = explorer
        self.viewer = explorer.viewer
        self.marked: list[str] = []  # model gene names
        self.set_name, self.set_queries = None, []  # the gene set as given (names, files' identifiers)
        self.set_genes: list[str] = []  # ... and its model genes
        self.values_df = self.scores_df = None
        self.workers = []
        self._genes_key = None
        self._coloured = None  # (cells layer, its colouring before "Colour cells by gene")

        lay = QVBoxLayout(self)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("gene(s), e.g. MGP, TFF1")
        self.completer = GeneCompleter(self.search_edit)
        self.search_edit.setCompleter(self.completer)
        self.mark_btn, self.clear_btn = QPushButton("Mark"), QPushButton("Clear")
        _row(lay, self.search_edit, self.mark_btn, self.clear_btn)
        self.values_table = _table()
        lay.addWidget(self.values_table)
        self.colour_btn, self.restore_btn = QPushButton("Colour cells by gene"), QPushButton("Restore colours")
        self.restore_btn.setEnabled(False)
        _row(lay, self.colour_btn, self.restore_btn)
        self.load_btn, self.use_paste_btn = QPushButton("Load gene set..."), QPushButton("Use pasted")
        self.clear_set_btn = QPushButton("Clear set")
        _row(lay, self.load_btn, self.use_paste_btn, self.clear_set_btn)
        self.paste_edit = QPlainTextEdit()
        self.paste_edit.setPlaceholderText("or paste a gene set here (commas, spaces or new lines)")
        self.paste_edit.setFixedHeight(3 * self.paste_edit.fontMetrics().lineSpacing() + 12)
        lay.addWidget(self.paste_edit)
        self.set_table = _table()
        lay.addWidget(self.set_table)
        self.status_label = QLabel("Mark genes or load a gene set; they follow every comparison.")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)

        self.search_edit.textEdited.connect(self._refresh_genes)
        self.search_edit.returnPressed.connect(self.mark)
        self.mark_btn.clicked.connect(self.mark)
        self.clear_btn.clicked.connect(self.clear)
        self.colour_btn.clicked.connect(self.colour_cells)
        self.restore_btn.clicked.connect(self.restore_colours)
        self.load_btn.clicked.connect(lambda: self.load_gene_set())
        self.use_paste_btn.clicked.connect(self.use_pasted)
        self.clear_set_btn.clicked.connect(self.clear_set)

    # ------------------------------------------------------------------ helpers
    @property
    def busy(self):
        return bool(self.workers)

    def _refresh_genes(self, *_):
        """The completer offers the current model's genes."""
        model = self.ex.model()
        if id(model) != self._genes_key:
            self._genes_key = id(model)
            self.completer.model().setStringList([] if model is None else [str(g) for g in model.genes])

    def _say(self, text):
        self.status_label.setText(text)

    def _resolve(self, queries):
        """``GeneMatch`` of ``queries`` against the model (identifiers through the cells layer's ``var``)."""
        from napari_scmedal.genesets import resolve_genes

        layer = self.ex.cells_layer()
        adata = layer.metadata.get(ADATA_KEY) if layer is not None else None
        return resolve_genes(queries, self.ex.model(), var=getattr(adata, "var", None))

    def _on_layout(self, genes):
        comp = self.ex.comparison
        names = {str(g) for g in comp.layout.genes}
        return [g for g in genes if g in names]

    def _tiles(self, comp):
        """``[(image name, world (y, x) of row r's top-left pixel)]`` for every tile and row shown."""
        from ._tile_overlays import tile_row_origins

        return tile_row_origins(self.ex, comp)

    # ------------------------------------------------------------------ marked genes
    def mark(self):
        """Add the genes typed in the search box to the marked genes (unknown names: a warning)."""
        if self.ex.model() is None:
            self._say("No model: train or load one first.")
            return
        self._refresh_genes()
        match = self._resolve(self.search_edit.text())
        if not match.ok or not match.queries:
            show_warning(match.message())
            self._say(match.message())
        self.marked += [g for g in match.found if g not in self.marked]
        if match.found:
            self._say(f"Marked: {', '.join(self.marked)}.")
        self.update_marks()

    def clear(self):
        self.marked = []
        self.update_marks()
        self._say("Marks cleared.")

    def update_marks(self):
        """Marks layer and values table for the current comparison (hidden / empty without marked genes)."""
        comp = self.ex.comparison
        genes = self._on_layout(self.marked) if comp is not None else []
        if not genes:
            self.values_df = None
            fill_table(self.values_table, [], [], np.empty((0, 0)), [])
            hide_layer(self.viewer, MARKS_LAYER)
            return
        from napari_scmedal.genesets import gene_pixels, gene_values

        pix = gene_pixels(comp.layout, genes)
        pts, labels = [], []
        named = comp.names[min(1, len(comp.names) - 1)]  # names once per row, on the FE tile (free of top genes')
        for name, (y, x) in self._tiles(comp):
            pts.extend((y + r, x + c) for r, c in pix)
            labels.extend(genes if name == named else [""] * len(genes))
        replace_layer(
            self.viewer, MARKS_LAYER, self.viewer.add_points, np.asarray(pts, dtype=float).reshape(-1, 2), size=MARK_SIZE,
            symbol="disc", face_color="transparent", border_color=MARK_COLOR, border_width=0.2,
            features={"gene": labels}, metadata={"marked_genes": list(genes)},
            text={"string": "{gene}", "size": 8, "color": MARK_COLOR, "anchor": "upper_left",
                  "translation": [-0.75 * MARK_SIZE, 0.75 * MARK_SIZE]})
        df = gene_values(comp, genes)
        self.values_df = df
        cols = [f"{g}\n{row_title(comp, int(r)).splitlines()[0][:22]}" for r, g in zip(df["row"], df["gene"])]
        fill_table(self.values_table, [short_title(n, comp) for n in comp.names], cols,
                   df[comp.names].to_numpy().T, [comp.kinds[n] == "difference" for n in comp.names])

    # ------------------------------------------------------------------ cells coloured by a gene
    def colour_gene(self):
        """The gene to colour cells by: the first known gene in the search box, else the last marked one."""
        found = self._resolve(self.search_edit.text()).found if self.search_edit.text().strip() else []
        return found[0] if found else (self.marked[-1] if self.marked else None)

    def colour_cells(self):
        """Colour the explorer's cells layer by one gene's expression (computed in a worker)."""
        model, layer = self.ex._model_and_layer()
        if model is None:
            return None
        gene = self.colour_gene()
        if gene is None:
            show_warning("No gene to colour by: type a model gene in the search box (or mark one).")
            return None
        adata, scale = layer.metadata[ADATA_KEY], self.ex.scale_combo.currentText()
        self._say(f"Computing {gene} in every cell of {layer.name}...")

        def _work():
            from napari_scmedal.genesets import cell_expression

            return cell_expression(model, adata, gene, version="original", scale=scale)

        return self.ex.launch(_work, lambda v: self.apply_cell_colours(layer, gene, v, scale), self.workers,
                              [self.colour_btn])

    def apply_cell_colours(self, layer, gene, values, scale="log1p"):
        if self._coloured is not None and self._coloured[0] is not layer:
            self.restore_colours()
        if self._coloured is None:
            props = getattr(layer._face, "color_properties", None)  # the colouring to restore
            self._coloured = (layer, getattr(props, "name", None), layer.face_color_mode,
                              layer.face_color_cycle, np.array(layer.face_color))
        col = "gene: " + gene
        feats = layer.features.copy()
        feats[col] = np.asarray(values, dtype=np.float64)
        layer.features = feats
        from napari_scmedal.genomap.limits import PERCENTILES, robust_limits

        lo, hi = robust_limits([values])  # the genomaps' contrast rule
        layer.face_colormap = CELL_CMAP
        layer.face_color = col
        layer.face_color_mode = "colormap"
        layer.face_contrast_limits = (lo, hi)
        layer.metadata["coloured_by_gene"] = gene
        self.restore_btn.setEnabled(True)
        self._say(f"{layer.name} coloured by {gene} ({scale}, original): {lo:.2f} (dark) to {hi:.2f} (light, "
                  f"{CELL_CMAP}; {PERCENTILES[0]:g}-{PERCENTILES[1]:g} percentiles). Restore colours goes back.")

    def restore_colours(self):
        """The cells layer's colouring from before it was coloured by a gene."""
        if self._coloured is None:
            return
        layer, name, mode, cycle, colors = self._coloured
        self._coloured = None
        self.restore_btn.setEnabled(False)
        layer.face_color = colors  # direct colours first: the gene column may then go
        if name is not None and name in layer.features.columns and not str(name).startswith("gene: "):
            layer.face_color_cycle = cycle
            layer.face_color = name
            layer.face_color_mode = mode
        extra = [c for c in layer.features.columns if str(c).startswith("gene: ")]
        if extra:
            layer.features = layer.features.drop(columns=extra)
        layer.metadata.pop("coloured_by_gene", None)
        self._say(f"{layer.name}: colours restored.")

    # ------------------------------------------------------------------ gene set
    def load_gene_set(self, path=None):
        """Read a .txt/.csv/.tsv/.gmt file (a file dialog without ``path``); several sets: choose one."""
        from napari_scmedal.genesets import read_gene_sets

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load a gene set", "", GENE_SET_FILTER)
            if not path:
                return
        try:
            sets = read_gene_sets(path)
        except Exception as exc:
            notify_error(exc, self.ex)
            self._say(str(exc))
            return
        name = next(iter(sets))
        if len(sets) > 1:
            name, ok = QInputDialog.getItem(self, "Choose a gene set", f"{Path(path).name} holds {len(sets)} sets:",
                                            list(sets), 0, False)
            if not ok or name not in sets:
                return
        self.use_gene_set(name, sets[name])

    def use_pasted(self):
        from napari_scmedal.genesets import parse_gene_list

        genes = parse_gene_list(self.paste_edit.toPlainText())
        if not genes:
            show_warning("No gene names pasted: paste names separated by commas, spaces or new lines.")
            return
        self.use_gene_set("pasted set", genes)

    def use_gene_set(self, name, genes):
        """Outline ``genes`` (names as given) on every tile and row, and score them per row and version."""
        if self.ex.model() is None:
            self._say("No model: train or load one first.")
            return
        match = self._resolve(genes)
        self.set_name, self.set_queries, self.set_genes = name, list(match.queries), list(match.found)
        text = f"Gene set '{name}': {len(match.found)} of {len(match.queries)} genes on the genomap"
        if match.missing:
            more = ", ..." if len(match.missing) > 5 else ""
            text += f"; {len(match.missing)} not among the model's genes: {', '.join(match.missing[:5])}{more}"
        self._say(text + ".")
        if not match.found:
            show_warning(match.message())
        self.update_set()

    def clear_set(self):
        self.set_name, self.set_queries, self.set_genes = None, [], []
        self.update_set()
        self._say("Gene set cleared.")

    def update_set(self):
        """Outline layer for the current comparison and its set scores (in a worker)."""
        comp = self.ex.comparison
        genes = self._on_layout(self.set_genes) if comp is not None else []
        if not genes:
            self.scores_df = None
            fill_table(self.set_table, [], [], np.empty((0, 0)), [])
            hide_layer(self.viewer, SET_LAYER)
            return
        from napari_scmedal.genesets import gene_set_mask

        from ._tile_overlays import outline_on_tiles

        outline_on_tiles(self.ex, gene_set_mask(comp.layout, genes), SET_LAYER, SET_COLOR, edge_width=SET_EDGE_WIDTH,
                         meta={"gene_set": self.set_name, "genes": list(genes)})
        self._score(comp, genes)

    def _score(self, comp, genes):
        model, layer = self.ex.model(), self.ex.cells_layer()
        adata = layer.metadata.get(ADATA_KEY) if layer is not None else None

        def _work():
            from napari_scmedal.genesets import set_scores

            return set_scores(comp, genes, model=model, adata=adata)

        def _show(df):
            if comp is not self.ex.comparison:  # a newer comparison has its own scores coming
                return
            self.scores_df = df
            cols = [row_title(comp, r).splitlines()[0][:22] for r in range(comp.n_rows)]
            fill_table(self.set_table, [short_title(n, comp) for n in comp.names], cols, df[comp.names].to_numpy().T,
                       [comp.kinds[n] == "difference" for n in comp.names])
            self.set_table.setToolTip(f"{self.set_name}: {df.attrs.get('units', '')}")

        self.ex.launch(_work, _show, self.workers, [self.load_btn])

    # ------------------------------------------------------------------ explorer hook
    def comparison_steps(self, comp):
        """Generator run by the explorer after it has shown ``comp``: marks, then the gene set (a layer a step)."""
        if self.marked or MARKS_LAYER in self.viewer.layers:
            self.update_marks()
            yield
        if self.set_genes or SET_LAYER in self.viewer.layers:
            self.update_set()
            yield
