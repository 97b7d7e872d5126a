"""Figures from a synthetic comparison: sizes, formats, colour scales, atomic saving."""
import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_scmedal.analysis import pixel_test
from napari_scmedal.compare import (
    FE_MINUS_ORIGINAL,
    FE_RECON,
    ORIGINAL,
    RE_RECON,
    Comparison,
    cf_minus_original_name,
    cf_minus_own_name,
    counterfactual_name,
)
from napari_scmedal.errors import ScMEDALError
from napari_scmedal.figures import (
    FigureFormatError,
    comparison_figure,
    display_name,
    pixel_test_figure,
    save_figure,
)


def _comparison(n_rows=2, batches=("b0", "b1", "b2"), shape=(6, 6), seed=0):
    rng = np.random.default_rng(seed)
    orig = rng.uniform(0, 3, size=(n_rows, *shape)).astype(np.float32)
    orig[:, -1, -1] = np.nan  # an empty pixel
    images = {ORIGINAL: orig, FE_RECON: orig + 0.1, RE_RECON: orig - 0.1}
    for i, b in enumerate(batches):
        images[counterfactual_name(b)] = orig + i
    images[FE_MINUS_ORIGINAL] = images[FE_RECON] - orig
    for b in batches:
        images[cf_minus_original_name(b)] = images[counterfactual_name(b)] - orig
    for b in batches:
        images[cf_minus_own_name(b)] = images[counterfactual_name(b)] - images[counterfactual_name("b0")]
    kinds = {k: ("difference" if " - " in k else "expression") for k in images}
    grid = np.array([[f"G{r}_{c}" for c in range(shape[1])] for r in range(shape[0])], dtype=object)
    top = pd.DataFrame({"row": [0, 0, 1], "rank": [1, 2, 1], "gene": ["G1_1", "G2_3", "G4_4"],
                        "row_px": [1, 2, 4], "col_px": [1, 3, 4], "spread": [1.0, 0.5, 0.7]})
    return Comparison(
        images=images, kinds=kinds, expression_limits=(0.0, 5.0), difference_limits=(-2.0, 2.0),
        batches=list(batches), row_batches=["b1", "b0"][:n_rows] + ["b2"] * max(0, n_rows - 2),
        row_labels=["A549"] * n_rows, row_titles=[f"cell {i}" for i in range(n_rows)],
        row_cells=[[f"c{i}"] for i in range(n_rows)], top_genes=top, top_genes_overall=top, layout=grid,
    )


def test_grid_layout_titles_and_shared_colour_scales():
    comp = _comparison()
    fig = comparison_figure(comp, gene_labels=True, title="Panel")
    axes = fig._scmedal_axes
    assert axes.shape == (2, len(comp.images))
    # one expression and one difference colour bar, beyond the grid
    assert len(fig.axes) == axes.size + 2
    for j, name in enumerate(comp.names):
        im = axes[0, j].images[0]
        if comp.kinds[name] == "expression":
            assert im.norm.vmin == 0.0 and im.norm.vmax == 5.0
            assert im.get_cmap().name.startswith("viridis")
        else:
            assert im.norm.vmin == -2.0 and im.norm.vmax == 2.0 and im.norm.vcenter == 0.0
            assert im.get_cmap().name.startswith("RdBu")
    assert axes[0, 0].get_title() == "Original"
    assert "\u2192" in axes[0, 3].get_title()
    assert axes[1, 0].get_ylabel() == "cell 1"
    # own batch framed: row 0 -> b1, row 1 -> b0
    own0 = comp.names.index(counterfactual_name("b1"))
    own1 = comp.names.index(counterfactual_name("b0"))
    assert axes[0, own0].spines["left"].get_linewidth() == 2.5
    assert axes[0, own1].spines["left"].get_linewidth() != 2.5
    assert axes[1, own1].spines["left"].get_linewidth() == 2.5
    # gene labels of row 0: circled on every tile of the row, named once beside its last tile
    texts = [t.get_text() for t in axes[0, -1].texts]
    assert "G1_1" in texts and "G2_3" in texts and "G4_4" not in texts
    assert all(len(ax.collections) == 1 for ax in axes[0])
    assert not axes[0, 0].texts
    assert fig._suptitle.get_text() == "Panel"


def test_columns_rows_and_size():
    comp = _comparison(n_rows=3)
    cols = [ORIGINAL, counterfactual_name("b2")]
    fig = comparison_figure(comp, columns=cols, rows=[2], size=(5, 3), dpi=80)
    assert tuple(fig.get_size_inches()) == (5.0, 3.0)
    assert fig._scmedal_axes.shape == (1, 2)
    assert len(fig.axes) == 3  # expression colour bar only
    np.testing.assert_array_equal(
        np.ma.filled(fig._scmedal_axes[0, 1].images[0].get_array(), np.nan)[:2],
        comp.images[counterfactual_name("b2")][2][:2])
    with pytest.raises(FigureFormatError, match="Available versions"):
        comparison_figure(comp, columns=["nope"])
    with pytest.raises(FigureFormatError, match="3 row"):
        comparison_figure(comp, rows=[5])
    with pytest.raises(FigureFormatError, match="size"):
        comparison_figure(comp, size=(0, 2))


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf", ".tif", ".tiff"])
def test_save_every_format(tmp_path, ext):
    comp = _comparison(n_rows=1)
    fig = comparison_figure(comp, size=(8, 2.5), dpi=50)
    out = save_figure(fig, tmp_path / f"panel{ext}", dpi=40)
    data = open(out, "rb").read()
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".tif": (b"II*\x00", b"MM\x00*"),
             ".tiff": (b"II*\x00", b"MM\x00*")}
    if ext == ".svg":
        assert b"<svg" in data[:2000]
    else:
        assert data.startswith(magic[ext])
    if ext in (".png", ".tif", ".tiff"):
        with Image.open(out) as im:
            assert im.size == (8 * 40, int(2.5 * 40))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"panel{ext}"]  # no temp left


def test_save_errors_and_atomicity(tmp_path):
    fig = comparison_figure(_comparison(n_rows=1), dpi=40)
    with pytest.raises(FigureFormatError, match=r"\.png") as e:
        save_figure(fig, tmp_path / "panel.jpg")
    assert isinstance(e.value, ScMEDALError)
    with pytest.raises(FigureFormatError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "panel.png")
    target = tmp_path / "panel.png"
    target.write_bytes(b"old")

    class Boom(RuntimeError):
        pass

    def explode(*a, **k):
        raise Boom()

    fig.savefig = explode
    with pytest.raises(Boom):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"  # untouched by a failed save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panel.png"]


def test_no_pyplot_state_leaks():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    backend = matplotlib.get_backend()
    fig = comparison_figure(_comparison(), dpi=30)
    assert plt.get_fignums() == before  # not registered with pyplot
    assert matplotlib.get_backend() == backend
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"


def test_pixel_test_figure(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 6, 6))
    b = rng.normal(size=(20, 6, 6))
    b[:, 1, 2] += 3
    res = pixel_test(a, b)
    fig = pixel_test_figure(res)
    assert "significant" in fig._suptitle.get_text()
    save_figure(fig, tmp_path / "mwu.png", dpi=50)
    fig2 = pixel_test_figure(res, background=a.mean(axis=0))
    assert len(fig2.axes) == 4


def test_display_name_wraps_and_draws_arrows():
    s = display_name("Counterfactual -> CELseq2_5cl_p1 - Counterfactual -> own batch")
    assert "->" not in s and "\u2192" in s and "\n" in s
