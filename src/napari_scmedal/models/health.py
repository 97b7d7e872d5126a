"""Training health: is a trained network fit to use? (always on after ``ScMEDAL.train``)

After each network is trained it is measured on (up to ``MAX_CELLS``) validation cells:

* ``gene_mean_r2`` -- R^2 of the per-gene mean of the reconstruction against the data's;
* ``cell_r_median`` -- median over cells of the Pearson correlation between a cell's reconstruction
  and its data (both are affine-invariant, so model space and log1p units give the same values);
* ``val_train_ratio`` -- validation / training reconstruction MSE at the best epoch;
* ``best_epoch`` and ``epochs`` -- the kept epoch and the epochs run;
* RE: ``head_acc`` (batch head accuracy on validation cells) against ``chance`` (largest batch share);
* FE/FEC: ``adv_acc`` (adversary accuracy) against ``chance``, ``adv_learned`` (the adversary's own
  training loss fell below the entropy of the batch shares at some epoch) and ``latent_batch_acc``
  (a 15-nearest-neighbour classifier predicting the batch from the FE latent, 5-fold) against
  ``latent_chance`` (the accuracy of predicting the batch from the cell-type label alone, when labels
  are known: batches that hold different cell types stay partly predictable from biology).

Bounds (:data:`BOUNDS`, measured on CellBench and synthetic data, docs/model.md "Training health") turn
into ``problems``: each a sentence naming the problem and the fix. A network with problems has
``ok=False`` and a :class:`~napari_scmedal.errors.TrainingHealthWarning` is issued.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from ..errors import TrainingHealthWarning

__all__ = ["BOUNDS", "MAX_CELLS", "check_network", "warn_if_unhealthy", "format_health", "NOT_CHECKED"]

#: Validation cells measured (a seeded sample beyond this).
MAX_CELLS = 5000
#: Health bounds (see the module docstring and docs/model.md).
BOUNDS = {
    "gene_mean_r2": 0.9,        # at least
    "cell_r_median": 0.5,       # at least
    "val_train_ratio": 2.0,     # at most
    "early_fraction": 0.05,     # the best epoch must lie after this fraction of the epochs run (and > 1)
    "head_margin": 0.5,         # RE head accuracy >= chance + margin * (1 - chance)
    "latent_margin": 0.75,      # FE latent batch accuracy <= latent_chance + margin * (1 - latent_chance)
    "adv_learned": 0.95,        # the adversary's training CE must fall below this x the batch entropy
}
#: What ``model.health[kind]`` reads for a model file saved before the health checks existed.
NOT_CHECKED: dict[str, Any] = {"ok": None, "problems": [], "status": "not checked"}


def _gather(source, max_cells: int, seed: int = 0):
    """(X, batch, label) of up to ``max_cells`` rows drawn at random over the whole split of a minibatch
    source (not a prefix: files are often sorted by batch; not one rank's shard)."""
    from .loaders import sample_rows

    xs, bs, ls = [], [], []
    for b in sample_rows(source, max_cells, seed):
        xs.append(b.X.float().cpu())
        bs.append(b.batch.cpu())
        ls.append(None if b.label is None else b.label.cpu())
    if not xs:
        return None
    known = [v for v in ls if v is not None]
    label = None if len(known) < len(ls) else torch.cat(known).numpy()
    return torch.cat(xs), torch.cat(bs).numpy(), label


def r_squared(pred: np.ndarray, truth: np.ndarray) -> float:
    """1 - residual / total sum of squares of ``truth`` (NaN for constant ``truth``)."""
    ss = float(((truth - truth.mean()) ** 2).sum())
    return float(1.0 - ((truth - pred) ** 2).sum() / ss) if ss > 0 else float("nan")


def _cell_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(1) / den, np.nan)


def _share_entropy(codes: np.ndarray, k: int) -> tuple[float, float]:
    p = np.bincount(codes, minlength=k) / max(len(codes), 1)
    nz = p[p > 0]
    return float(p.max()), float(-(nz * np.log(nz)).sum())


def _label_chance(batch: np.ndarray, label: np.ndarray | None) -> float:
    """Accuracy of guessing each cell's batch as the commonest batch of its label (the share of the
    largest batch when labels are unknown)."""
    if label is None or (label < 0).all():
        return float(np.bincount(batch).max() / len(batch))
    hit = 0
    for lab in np.unique(label):
        sel = batch[label == lab]
        # cells of unknown label (-1): only the batch shares are known
        hit += np.bincount(sel).max() if lab >= 0 else sel.size * np.bincount(batch).max() / len(batch)
    return float(hit / len(batch))


def _knn_batch_acc(z: np.ndarray, batch: np.ndarray, seed: int = 0) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    counts = np.bincount(batch)
    folds = int(min(5, counts[counts > 0].min()))
    if folds < 2 or len(np.unique(batch)) < 2:
        return float("nan")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    k = int(min(15, max(1, len(batch) // (2 * folds))))
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k), z, batch, cv=cv).mean())


@torch.no_grad()
def check_network(model, kind: str, val_source, max_cells: int = MAX_CELLS, train_source=None) -> dict:
    """Health of ``model.nets[kind]`` measured on ``val_source`` (the validation split's minibatch
    source; the training split when there is no validation). The FE latent's batch predictability is
    measured on up to ``max_cells`` validation and training cells (a nearest-neighbour accuracy is
    noisy on a few hundred cells). See the module docstring."""
    hist = model.history.get(kind) or {}
    res: dict = {"ok": True, "problems": [], "status": "checked"}
    net = model.nets[kind].eval()
    data = _gather(val_source, max_cells, model.seed) if val_source is not None and val_source.n > 0 else None
    B = len(model.batches)
    if data is not None:
        X, batch, label = data
        dev = next(net.parameters()).device
        recs, lats, heads = [], [], []
        for i in range(0, X.shape[0], 4096):
            x = X[i:i + 4096].to(dev)
            if kind == "re":
                onehot = torch.nn.functional.one_hot(torch.as_tensor(batch[i:i + 4096]), B).float().to(dev)
                out = net(x, onehot)
                heads.append(out["batch_logits"].argmax(1).cpu().numpy())
            else:
                out = net(x)
            recs.append(out["recon"].float().cpu().numpy())
            lats.append(out["latent"].float().cpu().numpy())
        x_np, rec = X.numpy(), np.concatenate(recs)
        res["n_cells"] = int(x_np.shape[0])
        res["gene_mean_r2"] = r_squared(rec.mean(0), x_np.mean(0))
        res["cell_r_median"] = float(np.nanmedian(_cell_r(x_np, rec)))
        res["chance"], entropy = _share_entropy(batch, B)
        if kind == "re":
            res["head_acc"] = float((np.concatenate(heads) == batch).mean())
        else:
            z, zb, zl = np.concatenate(lats), batch, label
            extra = None
            if train_source is not None and len(z) < max_cells:
                extra = _gather(train_source, max_cells - len(z), model.seed + 1)
            if extra is not None:
                zs = [net(extra[0][i:i + 4096].to(dev))["latent"].float().cpu().numpy()
                      for i in range(0, extra[0].shape[0], 4096)]
                z, zb = np.concatenate([z, *zs]), np.concatenate([batch, extra[1]])
                zl = None if label is None or extra[2] is None else np.concatenate([label, extra[2]])
            res["latent_batch_acc"] = _knn_batch_acc(z, zb, model.seed)
            res["latent_chance"] = _label_chance(zb, zl)
            res["latent_cells"] = int(len(zb))
    else:
        entropy = math.log(max(B, 2))
    be = hist.get("best_epoch")
    n_ep = len(hist.get("epochs") or [])
    res["best_epoch"], res["epochs"] = be, n_ep
    tr, va = (hist.get("train") or {}).get("recon"), (hist.get("val") or {}).get("recon")
    if be and tr and va and len(va) >= be and tr[be - 1] > 0:
        res["val_train_ratio"] = float(va[be - 1] / tr[be - 1])
    if kind != "re" and be and (hist.get("val") or {}).get("adv_acc"):
        res["adv_acc"] = float(hist["val"]["adv_acc"][be - 1])
    if kind != "re" and (hist.get("train") or {}).get("adv_d"):
        res["adv_learned"] = bool(min(hist["train"]["adv_d"]) < BOUNDS["adv_learned"] * entropy)
    res["problems"] = _problems(kind, res, hist)
    res["ok"] = not res["problems"]
    return res


def _problems(kind: str, r: dict, hist: dict) -> list[str]:
    b, name, out = BOUNDS, kind.upper(), []
    fix_train = ("train longer or with the default preset='auto' (more optimiser steps), or lower lr if the "
                 "losses jump")
    if "gene_mean_r2" in r and not r["gene_mean_r2"] >= b["gene_mean_r2"]:
        out.append(f"{name} reconstructs the per-gene means poorly (R^2 {r['gene_mean_r2']:.2f} < "
                   f"{b['gene_mean_r2']}): it is undertrained; {fix_train}.")
    if "cell_r_median" in r and not r["cell_r_median"] >= b["cell_r_median"]:
        out.append(f"{name} reconstructions correlate weakly with each cell's data (median r "
                   f"{r['cell_r_median']:.2f} < {b['cell_r_median']}); {fix_train}.")
    if "val_train_ratio" in r and r["val_train_ratio"] > b["val_train_ratio"]:
        out.append(f"{name} validation reconstruction error is {r['val_train_ratio']:.1f}x the training error: "
                   f"it overfits or its BatchNorm statistics are off; use more cells, the 'auto' preset "
                   f"(recomputed BatchNorm statistics) or a smaller network (hidden=[256, 64]).")
    be, n_ep = r.get("best_epoch"), r.get("epochs") or 0
    if be is not None and n_ep >= 3 and hist.get("stopped") not in ("cancelled", "max_time") and \
            (be <= 1 or (n_ep >= 20 and be <= b["early_fraction"] * n_ep)):
        out.append(f"{name} kept epoch {be} of {n_ep}: validation never improved after the start, so the weights "
                   f"are barely trained; {fix_train}.")
    if kind == "re" and "head_acc" in r:
        need = r["chance"] + b["head_margin"] * (1 - r["chance"])
        if r["head_acc"] < need:
            out.append(f"the RE batch head predicts the batch of {r['head_acc']:.0%} of validation cells (chance "
                       f"{r['chance']:.0%}, expected >= {need:.0%}): the RE latent does not carry the batch; train "
                       f"longer or raise re_w_batch.")
    if kind != "re":
        if r.get("adv_learned") is False:
            out.append(f"the {name} adversary never learned to predict the batch (its loss stayed near chance): "
                       f"nothing pushed the batch out of the latent; check the batch column, or raise lr/train "
                       f"longer.")
        if "latent_batch_acc" in r and r["latent_batch_acc"] == r["latent_batch_acc"]:
            ch = r["latent_chance"]
            lim = ch + b["latent_margin"] * (1 - ch)
            if r["latent_batch_acc"] > lim:
                out.append(f"the batch is still predictable from the {name} latent ({r['latent_batch_acc']:.0%} by "
                           f"nearest neighbours; {ch:.0%} expected from cell types alone, limit {lim:.0%}): the "
                           f"batch effect was not removed; raise {kind}_w_adv or lower {kind}_w_recon.")
    return out


def warn_if_unhealthy(kind: str, health: dict) -> None:
    if health.get("problems"):
        warnings.warn(f"{kind.upper()} training health: " + " ".join(health["problems"]),
                      TrainingHealthWarning, stacklevel=3)


def format_health(health: dict) -> list[str]:
    """One line per network for CLI output and widgets, e.g. ``FE ok: gene-mean R^2 0.98, ...``."""
    lines = []
    for kind, h in health.items():
        if h.get("status") == "not checked":
            lines.append(f"{kind.upper()}: not checked (model saved before health checks)")
            continue
        parts = []
        for key, label, fmt in (("gene_mean_r2", "gene-mean R^2", "{:.2f}"), ("cell_r_median", "cell r", "{:.2f}"),
                                ("val_train_ratio", "val/train", "{:.2f}"), ("best_epoch", "best epoch", "{}"),
                                ("head_acc", "head acc", "{:.0%}"), ("adv_acc", "adversary acc", "{:.0%}"),
                                ("latent_batch_acc", "latent batch acc", "{:.0%}"), ("chance", "chance", "{:.0%}")):
            if h.get(key) is not None:
                parts.append(f"{label} {fmt.format(h[key])}")
        state = "ok" if h.get("ok") else "PROBLEM"
        lines.append(f"{kind.upper()} {state}: " + ", ".join(parts))
        lines.extend(f"  - {p}" for p in h.get("problems", []))
    return lines
