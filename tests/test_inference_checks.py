"""Inference-time data checks and CLI/API agreement (issue 13 items 1-3, 8 and "Also"): values that make
a cell's library size are checked like the model's genes, missing normalisation genes are refused unless
per-cell totals are named, and ``scmedal embed`` writes exactly what the Python API returns."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import napari_scmedal as sm
from napari_scmedal.cli import main
from napari_scmedal.errors import DataError, RecipeMismatchError

N_GENES = 49


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(AnnData of 200 real CellBench sample cells, trained model, data path, model path)."""
    from napari_scmedal.datasets import cellbench

    a = cellbench()
    rng = np.random.default_rng(1)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(a.obs["batch"].to_numpy() == b), 40, replace=False)
                                   for b in sorted(a.obs["batch"].unique())]))
    a = a[keep].copy()
    d = tmp_path_factory.mktemp("inf")
    data = d / "sample.h5ad"
    a.write_h5ad(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sm.ScMEDAL(a, batch_key="batch", label_key="cell_line", n_genes=N_GENES, preset="quick", seed=0,
                       threads=1).train(max_epochs=2)
    path = m.save(d / "m.safetensors")
    return a, sm.ScMEDAL.load(path), data, path


def test_embed_layers_equal_the_api_on_the_full_data_for_every_version(sample, tmp_path):
    a, model, data, path = sample
    out = tmp_path / "emb.h5ad"
    assert main(["embed", str(path), str(data), "--out", str(out), "--reconstructions", "--counterfactuals",
                 "-q"]) == 0
    e = ad.read_h5ad(out)
    assert list(e.var_names) == model.genes
    for kind in ("fe", "re"):
        np.testing.assert_allclose(e.layers[f"scmedal_{kind}_reconstruction"],
                                   model.get_reconstruction(kind, adata=a), atol=1e-5, rtol=0)
        np.testing.assert_allclose(e.obsm[f"X_scmedal_{kind}"], model.get_latent_representation(kind, adata=a),
                                   atol=1e-5, rtol=0)
    for b in model.batches:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            api = model.get_counterfactual_expression(b, adata=a)
        np.testing.assert_allclose(e.layers[f"scmedal_counterfactual_{b}"], api, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -3.0])
def test_bad_values_outside_the_model_genes_are_refused(sample, bad):
    a, model, _, _ = sample
    other = np.flatnonzero(~a.var_names.isin(model.genes))[:1]
    b = a.copy()
    X = b.X.toarray() if sp.issparse(b.X) else np.array(b.X)
    X[0, other] = bad
    b.X = sp.csr_matrix(X) if sp.issparse(a.X) else X
    what = "negative" if bad < 0 else "NaN or infinite"
    with pytest.raises(DataError, match=f"{what} values in the genes that make each cell's library size"):
        model.get_latent_representation("fe", adata=b)


def test_missing_normalisation_genes_are_refused_unless_totals_are_named(sample):
    a, model, _, _ = sample
    full = model.get_latent_representation("fe", adata=a)
    cut = a[:, model.genes].copy()
    n_missing = len(model.recipe.normalization_genes) - len(model.genes)
    with pytest.raises(RecipeMismatchError, match=f"{n_missing} of the model's "
                                                 f"{len(model.recipe.normalization_genes)} normalisation genes are "
                                                 "missing.*size_factor_key"):
        model.get_latent_representation("fe", adata=cut)
    # per-cell totals over the normalisation genes, named: the cut data give the full data's numbers
    X = a[:, model.recipe.normalization_genes].X
    cut.obs["total_counts"] = np.asarray(X.sum(axis=1)).ravel()
    model.size_factor_key = "total_counts"
    try:
        np.testing.assert_allclose(model.get_latent_representation("fe", adata=cut), full, atol=1e-5)
        with pytest.raises(RecipeMismatchError, match="'nope' is not a column"):
            model.size_factor_key = "nope"
            model.get_latent_representation("fe", adata=cut)
        bad = cut.copy()
        bad.obs.loc[bad.obs_names[0], "total_counts"] = 0
        model.size_factor_key = "total_counts"
        with pytest.raises(RecipeMismatchError, match="1 cells with a missing, infinite, zero or negative total"):
            model.get_latent_representation("fe", adata=bad)
    finally:
        model.size_factor_key = None


def test_cli_size_factor_key_embeds_a_gene_subset(sample, tmp_path, capsys):
    a, model, _, path = sample
    cut = a[:, model.genes].copy()
    cut.obs["total_counts"] = np.asarray(a[:, model.recipe.normalization_genes].X.sum(axis=1)).ravel()
    p = tmp_path / "cut.h5ad"
    cut.write_h5ad(p)
    assert main(["embed", str(path), str(p), "--out", str(tmp_path / "x.h5ad"), "-q"]) == 1  # refused
    assert "normalisation genes are missing" in capsys.readouterr().err and not (tmp_path / "x.h5ad").exists()
    assert main(["embed", str(path), str(p), "--out", str(tmp_path / "y.h5ad"), "--size-factor-key",
                 "total_counts", "-q"]) == 0
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "y.h5ad").obsm["X_scmedal_fe"],
                               model.get_latent_representation("fe", adata=a), atol=1e-5)


def test_counts_in_raw_train_and_apply_with_layer_raw(sample, tmp_path):
    """layer="raw" means adata.raw.X (genes from adata.raw.var_names), in training, inference and the CLI."""
    a, model, _, _ = sample
    b = a.copy()
    b.raw = a  # the counts, all genes
    logged = a[:, a.var_names[:2000]].copy()  # X: log data of fewer genes, as after a typical scanpy workflow
    X = logged.X.toarray() if sp.issparse(logged.X) else np.asarray(logged.X)
    logged.X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    b = ad.AnnData(X=logged.X, obs=a.obs.copy(), var=logged.var.copy())
    b.raw = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sm.ScMEDAL(b, batch_key="batch", label_key="cell_line", n_genes=N_GENES, layer="raw", preset="quick",
                       seed=0, threads=1, train_fec=False).train(max_epochs=2)
        ref = sm.ScMEDAL(a, batch_key="batch", label_key="cell_line", n_genes=N_GENES, preset="quick",
                         seed=0, threads=1, train_fec=False).train(max_epochs=2)
    assert m.recipe.layer == "raw" and m.genes == ref.genes  # the same genes as training on the counts in X
    from napari_scmedal.data import validate_adata

    assert validate_adata(b, "batch", layer="raw") == "counts"  # the public check reads .raw with its genes too
    np.testing.assert_allclose(m.get_latent_representation("fe", adata=b), ref.get_latent_representation("fe", adata=a),
                               atol=1e-5)
    path = m.save(tmp_path / "raw.safetensors")
    data = tmp_path / "b.h5ad"
    b.write_h5ad(data)
    assert main(["embed", str(path), str(data), "--out", str(tmp_path / "e.h5ad"), "-q"]) == 0
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmedal_fe"],
                               m.get_latent_representation("fe", adata=b), atol=1e-5)
    with pytest.raises(DataError, match="layer='raw' but the AnnData has no .raw"):
        sm.ScMEDAL.load(path).get_latent_representation("fe", adata=a)


def test_ensembl_ids_and_symbols_align_through_var_columns(sample):
    a, model, _, _ = sample
    full = model.get_latent_representation("fe", adata=a)
    e = a.copy()
    ids = [f"ENSG{i:011d}" for i in range(e.n_vars)]
    e.var["gene_symbols"] = list(e.var_names)
    e.var_names = ids  # indexed by IDs, symbols in a column: found automatically
    np.testing.assert_allclose(model.get_latent_representation("fe", adata=e), full, atol=1e-6)
    # a column that holds most but not all of them is named in the message
    e.var["gene_symbols"] = [s if i % 50 else "x" + s for i, s in enumerate(a.var_names)]
    with pytest.raises(RecipeMismatchError, match="The var column 'gene_symbols' holds .* of them"):
        model.get_latent_representation("fe", adata=e)


def test_cli_refuses_an_unwritable_output_before_training(sample, tmp_path, capsys, monkeypatch):
    _, _, data, _ = sample
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["train", str(data), "--batch-key", "batch", "--genes", "49", "--preset", "quick", "--epochs", "1",
            "--threads", "1", "-q"]
    assert main(args + ["--out", str(afile / "m.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    import napari_scmedal._utils as utils

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(utils.tempfile, "NamedTemporaryFile", denied)  # a read-only folder (root ignores chmod)
    trained = []
    monkeypatch.setattr(sm.ScMEDAL, "train", lambda self, *a, **k: trained.append(1))
    assert main(args + ["--out", str(tmp_path / "ro" / "m.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "is not writable (Permission denied)" in err and not trained  # refused before any training


def test_cli_input_kind_flag_reaches_the_model(sample, tmp_path, capsys):
    a, _, _, _ = sample
    b = a.copy()
    X = b.X.toarray() if sp.issparse(b.X) else np.asarray(b.X)
    # log data rounded down to integers: the automatic rule would call them counts, the flag overrides it
    b.X = np.floor(np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)).astype(np.float32)
    p = tmp_path / "lognorm.h5ad"
    b.write_h5ad(p)
    out = tmp_path / "m.safetensors"
    assert main(["train", str(p), "--batch-key", "batch", "--genes", "49", "--preset", "quick", "--epochs", "1",
                 "--threads", "1", "--no-layout", "--input-kind", "lognorm", "--out", str(out), "-q"]) == 0
    assert sm.ScMEDAL.load(out).recipe.input_kind == "lognorm"
    assert main(["train", str(p), "--batch-key", "batch", "--genes", "49", "--preset", "quick", "--epochs", "1",
                 "--threads", "1", "--no-layout", "--out", str(tmp_path / "auto.safetensors"), "-q"]) == 0
    assert sm.ScMEDAL.load(tmp_path / "auto.safetensors").recipe.input_kind == "counts"
