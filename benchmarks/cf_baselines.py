"""Counterfactual baselines for benchmarks/bench_cf_holdout.py (bench only, not part of the package).

* :class:`LatentShift` -- scGen-style latent arithmetic (Lotfollahi et al. 2019): a small VAE
  (G -> 128 -> 20 latent -> 128 -> G, Gaussian likelihood on log1p-normalised data) trained on the
  training cells; a source cell of batch s is predicted in batch t as
  ``decode(mu(x) + delta_{s->t})`` with ``delta`` the mean latent difference between t and s averaged
  over the cell types present (>= ``min_cells`` training cells) in both batches (cell-type balanced, as
  scGen balances its training set), or the plain batch mean difference when they share none.
* :func:`latent_shift_baseline` -- the ``("scgen", fn)`` baseline for ``counterfactual_holdout``
  (one VAE per held-out pair, trained on that pair's training cells).
* :func:`scvi_status` / :class:`ScviCF` / :func:`scvi_baselines` -- whether scVI can be imported (it is
  only in the benchmark environment, ``bash benchmarks/setup_bench_env.sh`` -> .venv-bench) and its
  ``transform_batch`` counterfactual, read two ways (``scvi``: log1p of the normalised expression;
  ``scvi_sampled``: mean of log1p-normalised counts drawn in the target batch; see :class:`ScviCF`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class _VAE(nn.Module):
    def __init__(self, n_genes: int, hidden: int = 128, latent: int = 20):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(n_genes, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_genes))

    def encode(self, x):
        h = self.enc(x)
        return self.mu(h), self.logvar(h).clamp(-10, 10)


class LatentShift:
    """scGen-style latent shift (module docstring). ``fit(X, batch, label)`` then ``predict(X_source,
    batch_source, target)``; arrays in log1p units, batch/label as strings."""

    def __init__(self, hidden: int = 128, latent: int = 20, steps: int = 500, batch_size: int = 128,
                 lr: float = 1e-3, kl_weight: float = 0.1, min_cells: int = 5, seed: int = 0):
        self.hidden, self.latent, self.steps, self.batch_size = hidden, latent, int(steps), int(batch_size)
        self.lr, self.kl_weight, self.min_cells, self.seed = lr, kl_weight, int(min_cells), int(seed)

    def fit(self, X, batch, label=None) -> "LatentShift":
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = _VAE(X.shape[1], self.hidden, self.latent)
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            gen = torch.Generator().manual_seed(self.seed)
            self.net.train()
            for _ in range(self.steps):
                xb = X[torch.randint(0, X.shape[0], (min(self.batch_size, X.shape[0]),), generator=gen)]
                mu, logvar = self.net.encode(xb)
                z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
                rec = 0.5 * ((self.net.dec(z) - xb) ** 2).sum(1)
                kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
                loss = (rec + self.kl_weight * kl).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()
        self.z = self._encode(X)
        self.batch = np.asarray(batch).astype(str)
        self.label = None if label is None else np.asarray(label).astype(str)
        return self

    @torch.no_grad()
    def _encode(self, X) -> np.ndarray:
        return self.net.encode(torch.as_tensor(np.asarray(X, dtype=np.float32)))[0].numpy()

    def delta(self, s: str, t: str) -> np.ndarray:
        in_s, in_t = self.batch == s, self.batch == t
        diffs = []
        if self.label is not None:
            for lab in np.unique(self.label[in_s | in_t]):
                a, b = in_t & (self.label == lab), in_s & (self.label == lab)
                if a.sum() >= self.min_cells and b.sum() >= self.min_cells:
                    diffs.append(self.z[a].mean(0) - self.z[b].mean(0))
        return np.mean(diffs, axis=0) if diffs else self.z[in_t].mean(0) - self.z[in_s].mean(0)

    @torch.no_grad()
    def predict(self, X_source, batch_source, target) -> np.ndarray:
        z = self._encode(X_source)
        bs = np.asarray(batch_source).astype(str)
        for s in np.unique(bs):
            if s != str(target):
                z[bs == s] += self.delta(s, str(target))
        return self.net.dec(torch.as_tensor(z)).numpy().astype(np.float64)


def latent_shift_baseline(steps: int = 500, **kw):
    """``fn(ctx)`` for ``counterfactual_holdout(baselines=(..., ("scgen", fn)))``: one VAE per pair."""

    def scgen(ctx):
        m = LatentShift(steps=steps, seed=ctx["seed"], **kw).fit(ctx["X_train"], ctx["batch_train"],
                                                                   ctx["label_train"])
        return m.predict(ctx["X_source"], ctx["batch_source"], ctx["target_batch"])

    return scgen


def scvi_status() -> str:
    try:
        import scvi
    except Exception as exc:  # not in .venv; benchmarks/setup_bench_env.sh installs it into .venv-bench
        return f"skipped: scvi-tools not importable ({type(exc).__name__})"
    return f"available (scvi-tools {scvi.__version__})"


def _norm_genes(X, min_genes: int = 10, min_cells: int = 3) -> np.ndarray:
    """Mask of the genes the package normalises by (napari_scmedal.data.preprocess: cells with >= 10 genes,
    then genes in >= 3 of those cells), computed on the training counts ``X``."""
    from scipy import sparse

    nz = (X > 0)
    nz = nz.tocsr() if sparse.issparse(nz) else sparse.csr_matrix(nz)
    cells = np.asarray(nz.sum(1)).ravel() >= min_genes
    return np.asarray(nz[cells].sum(0)).ravel() >= min_cells


class ScviCF:
    """scVI (Lopez et al. 2018; scvi-tools defaults: ZINB, gene dispersion, 10 latent dims, batch in the
    decoder only) trained on the training cells' raw counts of the model genes plus one ``rest`` column
    (the summed counts of the other genes the package normalises by), so its library size and expression
    fractions are over exactly the genes of the scorer's library size, at a quarter of the cost of all
    11,533 CellBench genes. Two readings of its ``transform_batch`` counterfactual of the source cells in the
    target batch, both in the scorer's units (log1p of counts per 1e4, model genes):

    * ``mean``: ``log1p(1e4 * rho)`` with ``rho`` the decoder's expression fractions in the target batch
      (what ``get_normalized_expression(transform_batch=target, library_size=1)`` returns), averaged over
      ``n_samples`` posterior draws of z -- the noise-free expression (log of the mean);
    * ``sampled``: counts drawn from the ZINB in the target batch, with library sizes drawn from the target
      batch's training cells, normalised and log1p'd per draw, averaged over ``n_samples`` draws -- the
      mean of the log, like the observed truth (held-out cells' mean of log1p-normalised counts).
    """

    def __init__(self, batch_key: str, max_epochs: int = 100, n_samples: int = 20, seed: int = 0):
        self.batch_key, self.max_epochs = batch_key, int(max_epochs)
        self.n_samples, self.seed = int(n_samples), int(seed)

    def _counts(self, adata):
        import anndata as ad
        from scipy import sparse

        X = adata.X
        X = X.tocsr() if sparse.issparse(X) else sparse.csr_matrix(np.asarray(X))
        model = X[:, self.gi]
        rest = np.asarray(X[:, self.norm].sum(1)).ravel() - np.asarray(model.sum(1)).ravel()
        M = sparse.hstack([model, sparse.csr_matrix(np.maximum(rest, 0)[:, None])]).tocsr().astype(np.float32)
        out = ad.AnnData(X=M, obs=adata.obs[[self.batch_key]].astype(str).copy())
        out.var_names = self.genes + ["__rest__"]
        return out

    def fit(self, adata_train, genes) -> "ScviCF":
        import scvi

        scvi.settings.seed = self.seed
        self.genes = [str(g) for g in genes]
        names = pd_index(adata_train.var_names)
        self.norm = _norm_genes(adata_train.X)
        self.gi = names.get_indexer(self.genes)
        assert (self.gi >= 0).all() and self.norm[self.gi].all(), "model genes outside the normalisation genes"
        tr = self._counts(adata_train)
        tr.obs[self.batch_key] = tr.obs[self.batch_key].astype("category")
        scvi.model.SCVI.setup_anndata(tr, batch_key=self.batch_key)
        self.model = scvi.model.SCVI(tr)
        self.model.train(max_epochs=self.max_epochs, early_stopping=True, enable_progress_bar=False,
                         accelerator="cpu", devices=1)
        self.epochs_run = len(self.model.history["elbo_train"])
        self.lib = np.asarray(tr.X.sum(1)).ravel()
        self.batch = tr.obs[self.batch_key].to_numpy().astype(str)
        return self

    @torch.no_grad()
    def predict(self, adata_source, target: str) -> dict[str, np.ndarray]:
        from scvi.distributions import ZeroInflatedNegativeBinomial

        m = self.model
        src = m._validate_anndata(self._counts(adata_source))
        code = list(m.adata_manager.get_state_registry("batch").categorical_mapping).index(str(target))
        libs = torch.as_tensor(self.lib[self.batch == str(target)], dtype=torch.float32)
        G = len(self.genes)
        mean_out, samp_out = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for tensors in m._make_data_loader(adata=src, batch_size=128):
                _, g = m.module.forward(tensors=tensors, inference_kwargs={"n_samples": self.n_samples},
                                        generative_kwargs={"transform_batch": code}, compute_loss=False)
                px = g["px"]
                scale = px.scale  # (n_samples, cells, genes + rest), rows sum to 1
                mean_out.append(torch.log1p(1e4 * scale.mean(0))[:, :G])
                L = libs[torch.randint(0, len(libs), scale.shape[:2])]
                x = ZeroInflatedNegativeBinomial(mu=L[..., None] * scale, theta=px.theta,
                                                 zi_logits=px.zi_logits).sample()
                tot = x.sum(-1, keepdim=True).clamp_min(1.0)
                samp_out.append(torch.log1p(1e4 * x[..., :G] / tot).mean(0))
        return {"mean": torch.cat(mean_out).double().numpy(), "sampled": torch.cat(samp_out).double().numpy()}


def pd_index(values):
    import pandas as pd

    return pd.Index([str(v) for v in values])


def scvi_baselines(batch_key: str, max_epochs: int = 100, n_samples: int = 20):
    """``[("scvi", fn), ("scvi_sampled", fn)]`` for ``counterfactual_holdout``: one :class:`ScviCF` per pair
    (trained once, on the pair's training cells; both readings come from the same model)."""
    cache: dict = {}

    def _pred(ctx):
        key = (ctx["seed"], str(ctx["target_batch"]), tuple(ctx["adata_source"].obs_names[:5]),
               ctx["adata_source"].n_obs, ctx["adata_train"].n_obs)
        if key not in cache:
            cache.clear()
            m = ScviCF(batch_key, max_epochs=max_epochs, n_samples=n_samples, seed=ctx["seed"])
            cache[key] = m.fit(ctx["adata_train"], ctx["genes"]).predict(ctx["adata_source"], ctx["target_batch"])
        return cache[key]

    return [("scvi", lambda ctx: _pred(ctx)["mean"]), ("scvi_sampled", lambda ctx: _pred(ctx)["sampled"])]
