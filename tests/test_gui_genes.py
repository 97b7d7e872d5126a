"""The Genomap explorer's gene panel (issue 15 items 1-2) driven through the real widgets under Xvfb: find and
mark genes, their values table, unknown names, cells coloured by a gene, gene sets from a GMT file and pasted."""

import numpy as np
import pytest

pytest.importorskip("napari")

from test_gui_defects import _compute_cells, _explorer  # noqa: E402  (the one copy of these GUI-test steps)

pytestmark = pytest.mark.gui
PLUGIN = "napari-scmedal"
TIMEOUT_MS = 180_000
MARKS = "genomap | marked genes"
SET = "genomap | gene set"


@pytest.fixture
def trained(sample_model):
    return sample_model


def _idle(ex, qtbot):
    qtbot.waitUntil(lambda: not ex.busy and not ex.gene_panel.busy, timeout=TIMEOUT_MS)


def _expected_positions(ex, genes):
    """World positions of ``genes`` on every tile and row, from the core's pixels and the tiles' origins."""
    from napari_scmedal.genesets import gene_pixels

    comp = ex.comparison
    pix = gene_pixels(comp.layout, genes)
    out = []
    for name in comp.names:
        y, x = ex.tile_origin(name)
        for r in range(comp.n_rows):
            out.extend((y + r * (comp.shape[0] + 2) + pr, x + pc) for pr, pc in pix)
    return np.asarray(out, dtype=float)


def _table_texts(table):
    return [[table.item(i, j).text() for j in range(table.columnCount())] for i in range(table.rowCount())]


def test_type_with_the_completer_mark_values_table_and_clear(make_napari_viewer, qtbot, trained):
    from qtpy.QtCore import Qt

    from napari_scmedal.genesets import gene_values

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    _compute_cells(ex, qtbot, "3, 300")
    comp, panel = ex.comparison, ex.gene_panel
    gene = str(comp.layout.genes[7])
    # the completer offers the gene for a lower-case fragment from its middle
    frag = gene[1:4].lower() if len(gene) > 3 else gene.lower()
    viewer.window._qt_window.activateWindow()  # the line edit takes its completer's choice only with focus
    panel.search_edit.setFocus()
    qtbot.waitUntil(panel.search_edit.hasFocus, timeout=5000)
    qtbot.keyClicks(panel.search_edit, frag)
    comp_model, popup = panel.completer.completionModel(), panel.completer.popup()
    offered = [comp_model.index(i, 0).data() for i in range(comp_model.rowCount())]
    assert gene in offered and popup.isVisible()
    popup.setCurrentIndex(comp_model.index(offered.index(gene), 0))
    qtbot.keyClick(popup, Qt.Key.Key_Return)
    assert panel.search_edit.text() == gene
    qtbot.keyClick(panel.search_edit, Qt.Key.Key_Return)  # Return marks, as the Mark button
    _idle(ex, qtbot)
    marks = viewer.layers[MARKS]
    assert marks.metadata.get("scmedal_genomap") and marks.visible
    assert len(marks.data) == len(comp.names) * comp.n_rows
    np.testing.assert_allclose(marks.data, _expected_positions(ex, [gene]))
    assert [t for t in marks.features["gene"] if t] == [gene] * comp.n_rows  # named once per row
    # a second gene (comma-separated, different case) through the Mark button
    other = str(comp.layout.genes[40])
    panel.search_edit.setText(f"{gene}, {other.lower()}")
    panel.mark_btn.click()
    assert panel.marked == [gene, other]
    df = gene_values(comp, [gene, other])
    np.testing.assert_allclose(marks.data, np.concatenate(
        [_expected_positions(ex, [gene, other])]))
    table = panel.values_table
    assert table.rowCount() == len(comp.names) and table.columnCount() == len(df)
    texts = _table_texts(table)
    for i, name in enumerate(comp.names):
        for j in range(len(df)):
            v = df[name].iloc[j]
            want = "\u2013" if not np.isfinite(v) else (f"{v:+.2f}" if comp.kinds[name] == "difference" else f"{v:.2f}")
            assert texts[i][j] == want
    assert gene in table.horizontalHeaderItem(0).text()
    # an all-cells stack (a third dimension) next to the marks, then a new comparison: marks and table follow it
    ex.add_all_cells_stack()
    qtbot.waitUntil(lambda: not ex.stack_busy, timeout=TIMEOUT_MS)
    assert ex.stack_layer is not None and ex.last_error is None
    _compute_cells(ex, qtbot, "5, 6, 8")
    _idle(ex, qtbot)
    assert ex.last_error is None
    assert ex.comparison.n_rows == 3 and len(marks.data) == len(ex.comparison.names) * 3 * 2
    np.testing.assert_allclose(marks.data, _expected_positions(ex, [gene, other]))
    assert table.columnCount() == 6
    assert MARKS in viewer.layers  # kept, not removed by the comparison update
    # the hover readout still names the gene under a marked pixel
    y, x = marks.data[0]
    assert ex.lookup((y, x))["gene"] == gene
    panel.clear_btn.click()
    assert panel.marked == [] and not marks.visible and table.rowCount() == 0


def test_an_unknown_gene_warns_with_a_suggestion_and_marks_nothing(make_napari_viewer, qtbot, trained):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    _compute_cells(ex, qtbot, "3")
    panel = ex.gene_panel
    gene = str(ex.comparison.layout.genes[3])
    typo = gene + "X"
    before = len(notification_manager.records)
    panel.search_edit.setText(typo)
    panel.mark_btn.click()
    new = [n for n in notification_manager.records[before:] if n.severity == NotificationSeverity.WARNING]
    assert new and typo in str(new[-1].message) and gene in str(new[-1].message)  # offered as a close name
    assert panel.marked == [] and MARKS not in viewer.layers


def test_colour_cells_by_a_gene_and_restore(make_napari_viewer, qtbot, trained):
    from napari_scmedal.genesets import cell_expression

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    model, _ = trained
    ex.scale_combo.setCurrentText("log1p")
    before = np.array(cells.face_color)
    mode = cells.face_color_mode
    panel = ex.gene_panel
    gene = str(model.genes[11])
    panel.search_edit.setText(gene)
    panel.colour_btn.click()
    _idle(ex, qtbot)
    assert ex.last_error is None
    expr = cell_expression(model, cells.metadata["adata"], gene)
    assert cells.face_color_mode == "colormap"
    np.testing.assert_allclose(cells.features["gene: " + gene].to_numpy(), expr, rtol=1e-5, atol=1e-6)
    lo, hi = cells.face_contrast_limits
    from napari_scmedal.genomap.limits import robust_limits

    assert (lo, hi) == pytest.approx(robust_limits([expr]), rel=1e-5)  # the genomaps' contrast rule
    t = np.clip((expr - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(cells.face_color, cells.face_colormap.map(t), atol=1e-3)
    assert not np.allclose(cells.face_color, before)
    panel.restore_btn.click()
    assert cells.face_color_mode == mode
    np.testing.assert_allclose(cells.face_color, before)
    assert "gene: " + gene not in cells.features.columns


def test_gene_set_from_a_gmt_with_two_sets_and_pasted(make_napari_viewer, qtbot, trained, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QInputDialog

    from napari_scmedal.genesets import gene_set_mask, outline_segments, set_scores

    viewer, cells, ex = _explorer(make_napari_viewer, trained)
    model, _ = trained
    _compute_cells(ex, qtbot, "3, 300")
    comp, panel = ex.comparison, ex.gene_panel
    genes = [str(g) for g in comp.layout.genes]
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(f"SET_A\tfirst\t{genes[0]}\t{genes[1]}\n"
                   f"SET_B\tsecond\t{genes[20]}\t{genes[21]}\t{genes[50]}\tNOT_A_GENE1\tNOT_A_GENE2\n")
    asked = []

    def choose(parent, title, label, items, current=0, editable=False):
        asked.append(list(items))
        return "SET_B", True

    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(choose))
    panel.load_gene_set(str(gmt))
    _idle(ex, qtbot)
    assert asked == [["SET_A", "SET_B"]]
    chosen = [genes[20], genes[21], genes[50]]
    assert panel.set_name == "SET_B" and panel.set_genes == chosen
    status = panel.status_label.text()
    assert "3 of 5" in status and "2 not among" in status and "NOT_A_GENE1" in status
    ly = viewer.layers[SET]
    assert ly._type_string == "vectors" and ly.metadata.get("scmedal_genomap")
    m = len(outline_segments(gene_set_mask(comp.layout, chosen)))
    n_tiles = len(comp.names) * comp.n_rows
    assert len(ly.data) == m * n_tiles
    # every tile and row has its outline: the segment starts lie inside each tile row's pixel box
    R, C = comp.shape
    starts = ly.data[:, 0]
    for name in comp.names:
        y, x = ex.tile_origin(name)
        for r in range(comp.n_rows):
            y0 = y + r * (R + 2)
            inside = ((starts[:, 0] >= y0 - 0.5) & (starts[:, 0] <= y0 + R - 0.5)
                      & (starts[:, 1] >= x - 0.5) & (starts[:, 1] <= x + C - 0.5))
            assert inside.sum() == m
    # the set-scores table: one row per version, one column per comparison row
    want = set_scores(comp, chosen, model=model, adata=cells.metadata["adata"])
    np.testing.assert_allclose(panel.scores_df[comp.names].to_numpy(), want[comp.names].to_numpy())
    table = panel.set_table
    assert table.rowCount() == len(comp.names) and table.columnCount() == comp.n_rows
    assert table.item(0, 0).text() == f"{want[comp.names[0]].iloc[0]:.2f}"
    # the writer still takes the whole selection of the explorer's layers (images, points, shapes, vectors)
    import tifffile

    mine = [layer for layer in viewer.layers if layer.metadata.get("scmedal_genomap")]
    viewer.layers.selection = set(mine)
    path = tmp_path / "comparison.genomap.tif"
    assert viewer.layers.save(str(path), selected=True)
    assert tifffile.imread(path).shape[0] == len(comp.names)
    # a pasted list replaces the set
    panel.paste_edit.setPlainText(f"{genes[5]}\n{genes[6].lower()}; {genes[7]}")
    panel.use_paste_btn.click()
    _idle(ex, qtbot)
    assert panel.set_genes == [genes[5], genes[6], genes[7]] and panel.set_name == "pasted set"
    m = len(outline_segments(gene_set_mask(comp.layout, panel.set_genes)))
    assert len(viewer.layers[SET].data) == m * n_tiles
    assert "3 of 3" in panel.status_label.text()
    panel.clear_set_btn.click()
    assert not viewer.layers[SET].visible and panel.set_table.rowCount() == 0
