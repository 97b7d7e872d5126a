"""Find a gene / gene sets (napari_scmedal.genesets): name matching with suggestions, gene-set files,
pixels and outlines, values and set scores from a comparison, per-cell expression, the figure marks
and the ``scmedal genomap --highlight / --gene-set`` options."""
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.text import Text

from napari_scmedal import genesets as gs
from napari_scmedal.compare import (
    FE_MINUS_ORIGINAL,
    FE_RECON,
    ORIGINAL,
    Comparison,
    cf_minus_original_name,
    compare_cells,
    counterfactual_name,
)
from napari_scmedal.errors import DataError
from napari_scmedal.genomap import GenomapLayout


# ----------------------------------------------------------------------------------------------
# parsing and files
# ----------------------------------------------------------------------------------------------
def test_parse_gene_list_splits_on_any_separator_and_dedupes():
    assert gs.parse_gene_list("ACTB, gapdh;MYC\nCD3E  'TP53'\t\"EGFR\" ACTB ,,") == \
        ["ACTB", "gapdh", "MYC", "CD3E", "TP53", "EGFR"]
    assert gs.parse_gene_list(["A,B", "C"]) == ["A", "B", "C"]
    assert gs.parse_gene_list(None) == [] and gs.parse_gene_list("  ") == []


def test_read_gene_sets_text_csv_tsv_and_gmt(tmp_path):
    (tmp_path / "mine.txt").write_text("# my genes\nACTB\nGAPDH MYC\n\nCD3E\n")
    assert gs.read_gene_sets(tmp_path / "mine.txt") == {"mine": ["ACTB", "GAPDH", "MYC", "CD3E"]}
    (tmp_path / "de.csv").write_text("score,gene\n1.5,ACTB\n-2,MYC\n")  # a named column, not the first
    assert gs.read_gene_sets(tmp_path / "de.csv") == {"de": ["ACTB", "MYC"]}
    (tmp_path / "plain.csv").write_text("ACTB\nMYC\n")  # no header: the first row is a gene
    assert gs.read_gene_sets(tmp_path / "plain.csv") == {"plain": ["ACTB", "MYC"]}
    (tmp_path / "up.tsv").write_text("name\tlogFC\nACTB\t1.2\nMYC\t0.3\n")
    assert gs.read_gene_sets(tmp_path / "up.tsv") == {"up": ["ACTB", "MYC"]}
    (tmp_path / "noheader.tsv").write_text("ACTB\t1.2\nMYC\t0.3\n")  # numbers below numbers: no header
    assert gs.read_gene_sets(tmp_path / "noheader.tsv") == {"noheader": ["ACTB", "MYC"]}
    (tmp_path / "sets.csv").write_text("term,symbol\nA,ACTB\nB,MYC\nA,GAPDH\n")
    assert gs.read_gene_sets(tmp_path / "sets.csv") == {"A": ["ACTB", "GAPDH"], "B": ["MYC"]}
    (tmp_path / "h.gmt").write_text("HALLMARK_ONE\thttp://x\tACTB\tMYC\t\nHALLMARK_TWO\tna\tCD3E\n")
    assert gs.read_gene_sets(tmp_path / "h.gmt") == {"HALLMARK_ONE": ["ACTB", "MYC"], "HALLMARK_TWO": ["CD3E"]}
    (tmp_path / "bad.gmt").write_text("ONLY_A_NAME\n")
    with pytest.raises(DataError, match="line 1"):
        gs.read_gene_sets(tmp_path / "bad.gmt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="No gene names"):
        gs.read_gene_sets(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="does not exist"):
        gs.read_gene_sets(tmp_path / "missing.gmt")


def test_load_gene_set_chooses_one_set(tmp_path):
    p = tmp_path / "h.gmt"
    p.write_text("HALLMARK_ONE\td\tACTB\tMYC\nHALLMARK_TWO\td\tCD3E\n")
    with pytest.raises(DataError, match="holds 2 gene sets; choose one: HALLMARK_ONE, HALLMARK_TWO"):
        gs.load_gene_set(p)
    assert gs.load_gene_set(p, "hallmark_two") == ("HALLMARK_TWO", ["CD3E"])
    assert gs.load_gene_set(f"{p}:HALLMARK_ONE") == ("HALLMARK_ONE", ["ACTB", "MYC"])
    with pytest.raises(DataError, match="Did you mean HALLMARK_ONE"):
        gs.load_gene_set(p, "HALLMARK_ON")
    (tmp_path / "one.txt").write_text("ACTB\n")
    assert gs.load_gene_set(tmp_path / "one.txt") == ("one", ["ACTB"])


# ----------------------------------------------------------------------------------------------
# matching names
# ----------------------------------------------------------------------------------------------
SYMBOLS = ["ACTB", "GAPDH", "MYC", "CD3E", "TP53", "EGFR"]
ENSEMBL = ["ENSG00000075624", "ENSG00000111640", "ENSG00000136997", "ENSG00000198851", "ENSG00000141510",
           "ENSG00000146648"]


def test_resolve_genes_case_and_order():
    m = gs.resolve_genes("myc actb MYC", SYMBOLS)
    assert m.ok and m.found == ["MYC", "ACTB"] and m.matched["myc"] == "MYC"


def test_resolve_genes_mixes_symbols_and_ensembl_through_var():
    var = pd.DataFrame({"gene_ids": ENSEMBL, "note": ["x"] * 6}, index=SYMBOLS)
    m = gs.resolve_genes(["ENSG00000136997", "actb", "ENSG00000141510.17", "EGFR"], SYMBOLS, var=var)
    assert m.ok and m.found == ["MYC", "ACTB", "TP53", "EGFR"]
    # a model trained on Ensembl IDs, data indexed by them with a symbol column: symbols match too
    var2 = pd.DataFrame({"symbol": SYMBOLS}, index=ENSEMBL)
    m2 = gs.resolve_genes(["MYC", "ENSG00000075624"], ENSEMBL, var=var2)
    assert m2.found == ["ENSG00000136997", "ENSG00000075624"]
    assert gs.resolve_genes(["MYC"], ENSEMBL).missing == ["MYC"]  # without var: no alias


def test_resolve_genes_suggests_close_names_and_strict_raises():
    m = gs.resolve_genes(["GAPHD", "ACTB", "ZZZZZZ"], SYMBOLS)
    assert m.found == ["ACTB"] and m.missing == ["GAPHD", "ZZZZZZ"]
    assert "GAPDH" in m.suggestions["GAPHD"] and m.suggestions["ZZZZZZ"] == []
    msg = m.message()
    assert "2 of 3" in msg and "did you mean GAPDH" in msg and "'ZZZZZZ' (no close name)" in msg
    with pytest.raises(gs.GeneNotFoundError, match="did you mean GAPDH") as e:
        gs.resolve_genes("GAPHD", SYMBOLS, strict=True)
    assert isinstance(e.value, DataError) and e.value.match.missing == ["GAPHD"]
    with pytest.raises(DataError, match="No gene names"):
        gs.resolve_genes("", SYMBOLS, strict=True)


# ----------------------------------------------------------------------------------------------
# pixels, outlines, values and scores on a hand-made comparison
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def small():
    """A 3 x 3 layout of 8 genes and a z-scored comparison with 2 rows and one batch."""
    genes = [f"g{i}" for i in range(8)]
    layout = GenomapLayout((3, 3), genes, [(i // 3, i % 3) for i in range(8)])
    rng = np.random.default_rng(0)
    orig = rng.normal(size=(2, 3, 3)).astype(np.float32)
    fe = orig + 1
    cf = orig * 2
    orig[:, 2, 2] = fe[:, 2, 2] = cf[:, 2, 2] = np.nan  # the empty pixel
    images = {ORIGINAL: orig, FE_RECON: fe, counterfactual_name("b"): cf, FE_MINUS_ORIGINAL: fe - orig,
              cf_minus_original_name("b"): cf - orig}
    kinds = {k: ("difference" if " - " in k else "expression") for k in images}
    comp = Comparison(images=images, kinds=kinds, expression_limits=(-3, 3), difference_limits=(-3, 3),
                      batches=["b"], row_batches=["b", "b"], row_labels=[None, None], row_titles=["r0", "r1"],
                      row_cells=[["c0"], ["c1"]], top_genes=pd.DataFrame(), top_genes_overall=pd.DataFrame(),
                      layout=layout, scale="zscore")
    return layout, comp


def test_gene_pixels_mask_and_outline(small):
    layout, _ = small
    pix = gs.gene_pixels(layout, ["g5", "G0"])
    assert pix.tolist() == [list(layout.pixel_of("g5")), list(layout.pixel_of("g0"))]
    with pytest.raises(gs.GeneNotFoundError, match="g9"):
        gs.gene_pixels(layout, ["g9"])
    mask = gs.gene_set_mask(layout, ["g0", "g1", "g4"])
    assert mask.sum() == 3 and mask[0, 0] and mask[0, 1] and mask[1, 1]
    seg = gs.outline_segments(mask)
    # an L of three pixels: 6 straight sides after merging collinear edges, perimeter 8 pixels
    assert seg.shape == (6, 2, 2)
    assert np.isclose(np.abs(seg[:, 1] - seg[:, 0]).sum(), 8.0)
    one = gs.outline_segments(np.eye(1, dtype=bool))
    assert sorted(map(tuple, one.reshape(-1, 4).tolist())) == sorted([
        (-0.5, -0.5, -0.5, 0.5), (0.5, -0.5, 0.5, 0.5), (-0.5, -0.5, 0.5, -0.5), (-0.5, 0.5, 0.5, 0.5)])


def test_gene_values_are_the_image_pixels(small):
    _, comp = small
    df = gs.gene_values(comp, ["g4", "g0"])
    assert list(df.columns[:5]) == ["row", "title", "gene", "row_px", "col_px"]
    assert list(df.columns[5:]) == comp.names and len(df) == 4
    for _, t in df.iterrows():
        for name in comp.names:
            assert t[name] == pytest.approx(float(comp.images[name][t["row"], t["row_px"], t["col_px"]]))
    assert df.attrs["units"] == comp.units


def test_set_scores_math(small):
    layout, comp = small
    genes = ["g0", "g4", "g7"]
    pix = gs.gene_pixels(layout, genes)
    s = gs.set_scores(comp, genes)
    assert list(s.columns) == ["row", "title", "n_genes"] + comp.names and (s["n_genes"] == 3).all()
    for r in range(2):
        z = {n: comp.images[n][r, pix[:, 0], pix[:, 1]].mean() for n in comp.names}
        assert s.loc[r, ORIGINAL] == pytest.approx(z[ORIGINAL], abs=1e-6)
        # the change in a counterfactual is the difference of the scores
        assert s.loc[r, cf_minus_original_name("b")] == pytest.approx(
            s.loc[r, counterfactual_name("b")] - s.loc[r, ORIGINAL], abs=1e-6)
    # log1p units: z-scored against a reference (mean, std per gene) first
    log = Comparison(**{**comp.__dict__, "scale": "log1p"})
    ref = pd.DataFrame({"mean": np.arange(8.0), "std": np.full(8, 2.0)}, index=layout.genes)
    ref.loc["g7", "std"] = np.inf  # zero variance: z = 0
    s2 = gs.set_scores(log, genes, reference=ref)
    x = comp.images[ORIGINAL][0, pix[:, 0], pix[:, 1]].astype(float)
    assert s2.loc[0, ORIGINAL] == pytest.approx(np.mean([(x[0] - 0) / 2, (x[1] - 4) / 2, 0.0]))
    d = comp.images[FE_MINUS_ORIGINAL][0, pix[:, 0], pix[:, 1]].astype(float)
    assert s2.loc[0, FE_MINUS_ORIGINAL] == pytest.approx(np.mean([d[0] / 2, d[1] / 2, 0.0]))
    with pytest.raises(DataError, match="pass the model"):
        gs.set_scores(log, genes)


# ----------------------------------------------------------------------------------------------
# the real model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(sample_model):
    m, adata = sample_model
    return m, adata, compare_cells(m, [3], adata=adata)


def test_gene_values_and_set_scores_on_a_real_comparison(real):
    m, adata, comp = real
    genes = list(m.genes[:12])
    df = gs.gene_values(comp, genes[:2])
    r, c = m.layout.pixel_of(genes[1])
    assert df.loc[1, counterfactual_name(m.batches[0])] == pytest.approx(
        float(comp.images[counterfactual_name(m.batches[0])][0, r, c]))
    z = compare_cells(m, [3], adata=adata, scale="zscore")
    np.testing.assert_allclose(gs.set_scores(comp, genes, model=m)[comp.names].to_numpy(),
                               gs.set_scores(z, genes)[comp.names].to_numpy(), atol=1e-4)


def test_cell_expression_matches_the_original_tile(real):
    m, adata, comp = real
    sym = str(m.genes[7])
    ens = str(adata.var.loc[sym, "gene_ids"])
    e = gs.cell_expression(m, adata, ens)  # an Ensembl ID through var
    assert e.shape == (adata.n_obs,) and e.dtype == np.float32
    r, c = m.layout.pixel_of(sym)
    assert e[3] == pytest.approx(float(comp.images[ORIGINAL][0, r, c]), abs=1e-5)
    b = m.batches[1]
    cf = gs.cell_expression(m, adata, sym, version=counterfactual_name(b), chunk_cells=500)
    assert cf[3] == pytest.approx(float(comp.images[counterfactual_name(b)][0, r, c]), abs=1e-3)
    with pytest.raises(gs.GeneNotFoundError):
        gs.cell_expression(m, adata, sym + "XYZ")


def test_figure_draws_rings_outline_names_and_scores(real, tmp_path):
    from napari_scmedal.figures import comparison_figure, save_figure

    m, _, comp = real
    hl = [str(m.genes[0]), str(m.genes[5]).lower()]
    gene_set = list(m.genes[10:25]) + ["NOT_A_GENE"]
    scores = gs.set_scores(comp, gene_set[:-1], model=m)
    fig = comparison_figure(comp, highlight=hl, gene_set=gene_set, gene_set_name="my set", set_scores=scores,
                            gene_labels=3)
    marks = fig._scmedal_marks
    n_tiles = len(comp.names)
    outline = gs.outline_segments(gs.gene_set_mask(comp.layout, gene_set[:-1]))
    lcs = [a for a in marks if isinstance(a, LineCollection)]
    assert len(lcs) >= n_tiles and all(len(lc.get_segments()) == len(outline) for lc in lcs)
    rings = [a for a in marks if isinstance(a, PathCollection)]
    assert len(rings) == 2 * n_tiles and all(len(p.get_offsets()) == 2 for p in rings)
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert str(m.genes[0]) in texts and str(m.genes[5]) in texts  # named beside the row
    assert len([a for a in marks if hasattr(a, "get_text")]) == n_tiles  # one score under each tile
    assert any("Magenta outline: gene set my set (15 of its 16 genes" in t for t in texts)
    save_figure(fig, tmp_path / "f.png", dpi=100)
    with pytest.raises(gs.GeneNotFoundError, match="NOPE"):
        comparison_figure(comp, highlight=["NOPE"])


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def test_cli_highlight_and_gene_set(real, tmp_path, capsys):
    from napari_scmedal.cli import main

    m, adata, _ = real
    model_path, data_path = tmp_path / "m.safetensors", tmp_path / "d.h5ad"
    m.save(model_path)
    adata.write_h5ad(data_path)
    sym = [str(g) for g in m.genes[:6]]
    ens = str(adata.var.loc[sym[3], "gene_ids"])
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(f"SET_A\td\t{sym[0]}\t{ens}\t{sym[4]}\tNOT_A_GENE\nSET_B\td\t{sym[5]}\n")
    out = tmp_path / "out"
    rc = main(["genomap", str(model_path), str(data_path), "--cells", "0", "1", "--highlight", f"{sym[1]},{sym[2]}",
               "--gene-set", f"{gmt}:SET_A", "--formats", "png", "--dpi", "60", "--out", str(out), "-q"])
    assert rc == 0
    values = pd.read_csv(out / "genomaps_gene_values.csv")
    assert values["gene"].tolist() == [sym[1], sym[2]] * 2
    scores = pd.read_csv(out / "genomaps_set_scores.csv")
    assert len(scores) == 2 and (scores["set"] == "SET_A").all() and (scores["n_genes"] == 3).all()
    summary = json.loads((out / "genomaps.json").read_text())
    assert summary["highlight"] == [sym[1], sym[2]]
    assert summary["gene_set"]["genes"] == [sym[0], sym[3], sym[4]]
    assert summary["gene_set"]["not_in_model"] == ["NOT_A_GENE"]
    capsys.readouterr()
    rc = main(["genomap", str(model_path), str(data_path), "--cells", "0", "--highlight", sym[1] + "X",
               "--out", str(tmp_path / "o2"), "-q"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("scmedal genomap: error")]
    assert rc == 1 and len(errors) == 1 and f"did you mean {sym[1]}" in errors[0]
    rc = main(["genomap", str(model_path), str(data_path), "--cells", "0", "--gene-set", str(gmt),
               "--out", str(tmp_path / "o3"), "-q"])
    assert rc == 1 and "choose one: SET_A, SET_B" in capsys.readouterr().err
