"""napari plugin: manifest, reader, sample data, writer and docking of every widget (real viewer, Xvfb)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_scmedal._napari._reader import napari_get_reader  # noqa: E402
from napari_scmedal._napari._writer import sidecar_path, write_genomaps  # noqa: E402
from napari_scmedal.datasets import cellbench, cellbench_path  # noqa: E402

pytestmark = pytest.mark.gui
PLUGIN = "napari-scmedal"
WIDGETS = ["scMEDAL model", "Genomap explorer", "Export figure"]


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_npe2_validate_with_imports():
    exe = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(exe), "validate", "--imports", PLUGIN], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr)


def test_reader_rejects_other_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "x.csv")) is None
    assert napari_get_reader([str(tmp_path / "a.h5ad"), str(tmp_path / "b.tif")]) is None
    assert callable(napari_get_reader(str(tmp_path / "a.h5ad")))


def _check_cells_layer(layer, adata_n, batches):
    from napari.layers import Points

    assert isinstance(layer, Points)
    assert layer.data.shape == (adata_n, 2)
    assert layer.metadata["adata"].n_obs == adata_n
    assert "batch" in layer.features.columns
    # coloured by batch: cells of one batch share a colour, different batches differ
    fc = np.asarray(layer.face_color)
    colours = {}
    for b in batches:
        rows = fc[(layer.features["batch"].astype(str) == b).to_numpy()]
        assert np.allclose(rows, rows[0])
        colours[b] = tuple(np.round(rows[0], 4))
    assert len(set(colours.values())) == len(batches)


def _open_without_embedding(make_napari_viewer, adata, path):
    """Write ``adata`` without obsm embeddings to ``path`` and open it with the plugin's reader."""
    adata.obsm.clear()
    adata.write_h5ad(path)
    before = _sha(path)  # taken before the reader touches the file
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    return viewer, layer, path, before


def _assert_lines_separate(layer):
    """The cell lines A549 and H1975 separate along the layer's 2-D embedding."""
    xy = layer.data
    lines = layer.features["cell_line"].astype(str).to_numpy()
    a, b = xy[lines == "A549"], xy[lines == "H1975"]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    spread = np.sqrt((a.var(0).sum() + b.var(0).sum()) / 2)
    assert gap > 1.5 * spread


def test_reader_opens_sample_file_in_viewer(make_napari_viewer):
    path = cellbench_path()
    before = _sha(path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    adata = layer.metadata["adata"]
    _check_cells_layer(layer, 1408, sorted(adata.obs["batch"].astype(str).unique()))
    assert layer.metadata["embedding"] == "X_umap"
    # points sit at the file's UMAP (x right, y up)
    um = np.asarray(adata.obsm["X_umap"])[:, :2]
    np.testing.assert_allclose(layer.data[:, 1], um[:, 0], rtol=1e-5)
    np.testing.assert_allclose(layer.data[:, 0], -um[:, 1], rtol=1e-5)
    assert set(adata.obs.columns) <= set(layer.features.columns)
    assert _sha(path) == before  # the user's file is never written


def test_reader_computes_pca_when_file_has_no_embedding(make_napari_viewer, tmp_path):
    src = cellbench()
    keep = np.flatnonzero(src.obs["cell_line"].astype(str).isin(["H1975", "A549"]).to_numpy())[:300]
    ad = src[keep].copy()
    viewer, layer, path, before = _open_without_embedding(make_napari_viewer, ad, tmp_path / "no_embedding.h5ad")
    _check_cells_layer(layer, ad.n_obs, sorted(ad.obs["batch"].astype(str).unique()))
    assert layer.metadata["embedding"] == "PCA of log-normalised genes"
    _assert_lines_separate(layer)  # a real PCA of real data
    assert _sha(path) == before


def test_open_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "cellbench")
    assert [ly.name for ly in layers] == ["CellBench sample"]
    adata = layers[0].metadata["adata"]
    _check_cells_layer(layers[0], adata.n_obs, sorted(adata.obs["batch"].astype(str).unique()))
    assert adata.obs["batch"].nunique() == 5


@pytest.mark.parametrize("widget", WIDGETS)
def test_every_widget_docks(make_napari_viewer, widget):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cellbench")
    dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, widget)
    assert dock is not None and w is not None
    assert "CellBench sample" in [ly.name for ly in w.viewer.layers]
    if widget == "scMEDAL model":  # the cells layer and its obs columns are offered
        assert w.layer_combo.currentText() == "CellBench sample"
        assert w.batch_combo.currentText() == "batch"
        assert w.label_combo.currentText() == "cell_line"
    elif widget == "Genomap explorer":
        assert w.cells_combo.currentText() == "CellBench sample"
        assert w.model_combo.count() == 0  # no model yet


def test_manifest_lists_exactly_the_tested_widgets():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest(PLUGIN)
    assert sorted(w.display_name for w in mf.contributions.widgets) == sorted(WIDGETS)
    assert [s.display_name for s in mf.contributions.sample_data] == ["CellBench sample"]


@pytest.mark.parametrize("ext", [".tif", ".npy"])
def test_writer_writes_stack_and_layout_sidecar(tmp_path, ext):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 6)).astype(np.float32)
    b = rng.normal(size=(10, 6)).astype(np.float32)
    a[3, 2] = np.nan
    layer_data = [
        (a, {"name": "genomap | Original", "metadata": {"kind": "expression", "tile_shape": (4, 6), "gap": 2,
                                                      "layout": {"genes": ["g1", "g2"]}}}, "image"),
        (b, {"name": "genomap | FE - Original", "metadata": {"kind": "difference"}}, "image"),
    ]
    path = tmp_path / f"maps{ext}"
    written = write_genomaps(str(path), layer_data)
    assert written == [str(path), str(sidecar_path(path))]
    if ext == ".npy":
        back = np.load(path)
    else:
        import tifffile

        back = tifffile.imread(path)
    assert back.shape == (2, 10, 6)
    np.testing.assert_array_equal(back[1], b)
    assert np.isnan(back[0, 3, 2])
    side = json.loads(sidecar_path(path).read_text())
    assert [ly["name"] for ly in side["layers"]] == ["genomap | Original", "genomap | FE - Original"]
    assert side["layout"] == {"genes": ["g1", "g2"]}
    assert side["tile_shape"] == [4, 6]


def test_writer_rejects_mixed_shapes_with_a_fix(tmp_path):
    from napari_scmedal.errors import ScMEDALError

    g = {"metadata": {"kind": "expression"}}
    write = write_genomaps
    with pytest.raises(ScMEDALError, match="select layers of one"):
        write(str(tmp_path / "x.npy"), [(np.zeros((3, 3)), g, "image"), (np.zeros((4, 3)), g, "image")])
    with pytest.raises(ScMEDALError, match=r"\.genomap\.tif, \.genomap\.tiff or \.genomap\.npy"):
        write(str(tmp_path / "x.png"), [(np.zeros((3, 3)), g, "image")])
    with pytest.raises(ScMEDALError, match=r"\['photo'\] is not a genomap layer .* napari's own writer"):
        write(str(tmp_path / "x.genomap.tif"), [(np.zeros((3, 3)), g, "image"), (np.zeros((3, 3)), {"name": "photo"},
                                                                                 "image")])


def test_pca_of_large_data_fits_on_a_subsample_and_projects_every_cell():
    import scanpy as sc
    from sklearn.decomposition import PCA

    from napari_scmedal.embedding import pca_2d

    ad = cellbench()
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    X = ad.X  # sparse, real data
    full = PCA(n_components=2, random_state=0).fit_transform(X.toarray())
    sub = pca_2d(X, max_fit=400)  # axes from 400 of 1,408 cells, every cell projected
    assert sub.shape == (ad.n_obs, 2)
    assert abs(np.corrcoef(sub[:, 0], full[:, 0])[0, 1]) > 0.98
    np.testing.assert_allclose(pca_2d(X), pca_2d(X.toarray()), atol=1e-3)


def test_large_files_open_backed_and_train_out_of_core_from_the_widget(make_napari_viewer, qtbot, tmp_path,
                                                                        monkeypatch):
    """Files over NAPARI_SCMEDAL_BACKED_GB open backed (matrix left on disk, sampled PCA); the model widget
    then trains from the file, and the user's file is untouched."""
    monkeypatch.setenv("NAPARI_SCMEDAL_BACKED_GB", "0")  # treat every file as large
    viewer, layer, path, before = _open_without_embedding(make_napari_viewer, cellbench(), tmp_path / "large.h5ad")
    adata = layer.metadata["adata"]
    assert adata.isbacked and layer.metadata["backed"] is True
    assert layer.metadata["embedding"] == "PCA of log-normalised genes (sampled fit)"
    _assert_lines_separate(layer)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "scMEDAL model")
    w.batch_combo.setCurrentText("batch")
    w.label_combo.setCurrentText("cell_line")
    w.genes_spin.setValue(256)
    w.preset_combo.setCurrentText("quick")
    w.epochs_spin.setValue(2)
    w.threads_spin.setValue(1)
    w.start_training()
    qtbot.waitUntil(lambda: not w.busy and w.model is not None, timeout=180_000)
    assert w.model.backed  # trained from the file, block by block
    assert w.model.history["fe"]["config"]["backed"] is True
    assert any("FE latent" in ly.name for ly in viewer.layers)
    assert _sha(path) == before


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_reader_names_nan_data_in_its_own_words(tmp_path, monkeypatch, backed, bad):
    """NaN/inf data without a stored UMAP/PCA: the project's message, not scikit-learn's (issue 13, item 8)."""
    from napari_scmedal.errors import DataError

    if backed:
        monkeypatch.setenv("NAPARI_SCMEDAL_BACKED_GB", "0")
    a = cellbench()[:120].copy()
    a.obsm.clear()
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.array(a.X)
    X[3, 7] = bad
    a.X = X
    path = tmp_path / "nan.h5ad"
    a.write_h5ad(path)
    before = _sha(path)
    with pytest.raises(DataError, match="1 NaN or infinite values, so the cells cannot be placed") as exc:
        napari_get_reader(str(path))(str(path))
    assert "HistGradientBoosting" not in str(exc.value) and _sha(path) == before
