"""Counterfactual baselines for benchmarks/bench_cf_holdout.py (bench only, not part of the package).

* :class:`LatentShift` -- scGen-style latent arithmetic (Lotfollahi et al. 2019): a small VAE
  (G -> 128 -> 20 latent -> 128 -> G, Gaussian likelihood on log1p-normalised data) trained on the
  training cells; a source cell of batch s is predicted in batch t as
  ``decode(mu(x) + delta_{s->t})`` with ``delta`` the mean latent difference between t and s averaged
  over the cell types present (>= ``min_cells`` training cells) in both batches (cell-type balanced, as
  scGen balances its training set), or the plain batch mean difference when they share none.
* :func:`latent_shift_baseline` -- the ``("scgen", fn)`` baseline for ``counterfactual_holdout``
  (one VAE per held-out pair, trained on that pair's training cells).
* :func:`scvi_status` / :func:`scvi_baseline` -- whether scVI can be imported (it is not installed here and
  never installed by this benchmark) and, if so, its counterfactual: ``get_normalized_expression(
  transform_batch=target, library_size=1e4)`` of the source cells on all genes, log1p, model genes
  (untested here: scvi-tools is not installed on this machine).
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
        import scvi  # noqa: F401
    except Exception as exc:  # not installed here (and never installed by this benchmark)
        return f"skipped: scvi-tools not importable ({type(exc).__name__})"
    return "available"


def scvi_baseline(batch_key: str, max_epochs: int = 200):
    """``fn(ctx)`` for ``counterfactual_holdout``: an scVI model per pair on the training cells' raw counts
    (all genes), the source cells decoded with ``transform_batch=target`` (untested: not installed here)."""

    def scvi_fn(ctx):
        import scvi

        tr = ctx["adata_train"].copy()
        tr.obs = tr.obs[[batch_key]].astype(str).astype("category")
        scvi.model.SCVI.setup_anndata(tr, batch_key=batch_key)
        m = scvi.model.SCVI(tr)
        scvi.settings.seed = int(ctx["seed"])
        m.train(max_epochs=max_epochs, early_stopping=True, enable_progress_bar=False)
        src = ctx["adata_source"].copy()
        src.obs = src.obs[[batch_key]].astype(str).astype(tr.obs[batch_key].dtype)
        expr = m.get_normalized_expression(src, transform_batch=str(ctx["target_batch"]), library_size=1e4,
                                           return_numpy=True)
        genes = [list(tr.var_names).index(g) for g in ctx["genes"]]
        return np.log1p(np.asarray(expr, dtype=np.float64)[:, genes])

    return scvi_fn
