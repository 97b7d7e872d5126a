"""Per-pixel linear mixed model between two groups of batches: ``value ~ group + (1 | batch)``.

For every pixel of a stack of genomaps the random-intercept model

    y_ij = mu + beta * [group(j) = B] + b_j + e_ij,   b_j ~ N(0, s_b^2),  e_ij ~ N(0, s^2)

is fitted by REML, ``beta`` is tested with the Wald z-test and the p-values are corrected over the
tested pixels with Benjamini-Hochberg -- what ``statsmodels``' ``MixedLM`` reports by default
(``smf.mixedlm("value ~ group", df, groups=df["batch"]).fit()``, ``pvalues``), without a Python
loop over pixels.

How.  The likelihood depends on a pixel's values only through per-batch sufficient statistics
(image count ``n_j``, mean, within-batch sum of squares), so every evaluation costs O(batches) per
pixel and all pixels are evaluated at once.  Balanced designs (same number of images in every
batch) have the closed-form REML estimate of the variance ratio ``g = s_b^2 / s^2`` (the ANOVA
estimator ``(MSB - MSW) / (m MSW)``, clipped at 0).  Unbalanced designs maximise the profile REML
likelihood over ``g`` (a grid, then golden-section refinement), vectorised over pixels.  The
standard error of ``beta`` is statsmodels': the inverse of the observed information of the
profile likelihood in ``(fixed effects, g)`` (the cross terms vanish in balanced designs), also at
the boundary ``g = 0`` (statsmodels' value as its estimate tends to 0); where that information is
not positive definite the fixed-effect block alone is used (``s^2 (X' V^-1 X)^-1``).  Like
statsmodels, p-values come from the normal distribution, which is anti-conservative with few
batches; ``dist="t"`` uses Student's t with ``n_batches - 2`` degrees of freedom instead (exact for
balanced designs with a positive batch variance: then the test is the t-test on batch means).

What it assumes.  The group is a batch attribute (e.g. each donor's diagnosis): one group per
batch, at least two batches per group, and batches are the independent units.  Images of one
batch are exchangeable and share the batch's random intercept.  When the *same* cells are
projected into every batch (counterfactuals), the images of one cell in different batches are
repeated measures of that cell; the random intercept absorbs batch-level correlation only, not
that cell-level pairing, so the group comparison is between batches as if they held different
cells.  Pure numpy/scipy: no Qt, no napari, no torch.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .errors import DataError, ScMEDALError
from .pixeltests import (
    PIXEL_TESTS,
    PixelTestResult,
    benjamini_hochberg,
    counterfactual_group_test,
    counterfactual_images,
    grid_for,
)

__all__ = [
    "PIXEL_TESTS",
    "MixedModelCancelled",
    "counterfactual_mixed_model_test",
    "counterfactual_pixel_test",
    "mixed_model_pixels",
    "mixed_model_test",
]

TEST_NAME = "mixedlm"
_GRID = 96  # grid points of the profile search (unbalanced designs)
_TOL = 1e-11  # golden-section bracket width on the t = g / (c + g) scale


class MixedModelCancelled(ScMEDALError):
    """The per-pixel mixed model was cancelled before every pixel was fitted (no partial result)."""


@dataclass
class _Design:
    codes: np.ndarray  # batch index of each image
    counts: np.ndarray  # images per batch (J,)
    gmat: np.ndarray  # (J, 2) one-hot: batch -> (reference, other)
    batches: list[str]
    names: tuple[str, str]  # (reference, other group)
    n: int

    @property
    def balanced(self) -> bool:
        return bool(np.all(self.counts == self.counts[0]))


# ----------------------------------------------------------------------------------------------
# design and per-batch statistics
# ----------------------------------------------------------------------------------------------
def _design(groups, batches, n: int, reference) -> _Design:
    groups = np.asarray([str(g) for g in np.asarray(groups, dtype=object).ravel()], dtype=object)
    batches = np.asarray([str(b) for b in np.asarray(batches, dtype=object).ravel()], dtype=object)
    if len(groups) != n or len(batches) != n:
        raise DataError(f"Give one group and one batch per image: {n} images, {len(groups)} groups, "
                        f"{len(batches)} batches.")
    names_b, codes = np.unique(batches, return_inverse=True)
    group_of = {}
    for b in names_b:
        gs = sorted(set(groups[batches == b]))
        if len(gs) > 1:
            raise DataError(f"Batch {b!r} has images of groups {gs}. The mixed model compares groups of "
                            "batches: the group must be a batch attribute (one group per batch).")
        group_of[str(b)] = gs[0]
    levels = sorted(set(group_of.values()))
    if len(levels) != 2:
        raise DataError(f"The mixed model compares exactly two groups; got {len(levels)} ({levels}). "
                        "Give every batch one of two group labels.")
    if reference is None:
        reference = levels[0]
    reference = str(reference)
    if reference not in levels:
        raise DataError(f"reference={reference!r} is not one of the groups {levels}.")
    other = levels[1] if reference == levels[0] else levels[0]
    gb = np.array([group_of[str(b)] == other for b in names_b])
    for name, mask in ((reference, ~gb), (other, gb)):
        if mask.sum() < 2:
            raise DataError(f"Group {name!r} has {int(mask.sum())} batch(es); the mixed model needs at least "
                            "2 batches per group (batches are its independent units). Add batches to it.")
    counts = np.bincount(codes, minlength=len(names_b)).astype(np.float64)
    if n <= len(names_b):
        raise DataError(f"Every batch has a single image ({n} images, {len(names_b)} batches): the model cannot "
                        "separate batch and image variance. Use several images (cells) per batch, not averages.")
    gmat = np.stack([~gb, gb], axis=1).astype(np.float64)
    return _Design(codes, counts, gmat, [str(b) for b in names_b], (reference, str(other)), n)


def _batch_stats(y: np.ndarray, d: _Design) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch means ``(P, J)`` and within-batch sums of squares ``(P,)`` of ``y`` ``(n, P)``."""
    onehot = np.zeros((len(d.batches), d.n))
    onehot[d.codes, np.arange(d.n)] = 1.0
    means = (onehot @ y) / d.counts[:, None]
    dev = y - means[d.codes]
    return means.T.copy(), np.einsum("ij,ij->j", dev, dev)


# ----------------------------------------------------------------------------------------------
# REML pieces, vectorised over pixels (g: (P,) variance ratios)
# ----------------------------------------------------------------------------------------------
def _gls(d: _Design, means, g):
    w = d.counts / (1.0 + d.counts * g[:, None])  # (P, J): 1' V_j^-1 1 with V_j = I + g 11'
    s = w @ d.gmat  # (P, 2) per-group total weight
    mu = ((w * means) @ d.gmat) / s  # GLS group means
    r = means - mu @ d.gmat.T  # batch-mean residuals
    return w, s, mu, r


def _loglik(d: _Design, means, within, g):
    """Profile REML log-likelihood (scale profiled out), up to a constant."""
    w, s, _, r = _gls(d, means, g)
    q = within + np.einsum("pj,pj->p", w, r * r)
    return -0.5 * (np.log1p(d.counts * g[:, None]).sum(1) + np.log(s).sum(1) + (d.n - 2) * np.log(q))


def _wald(d: _Design, means, within, g):
    """coef (B - reference), its standard error and the residual variance at ``g``."""
    w, s, mu, r = _gls(d, means, g)
    k = d.n - 2
    wr2 = w * r * r
    q = within + wr2.sum(1)
    scale = q / k
    base = scale * (1.0 / s).sum(1)  # s^2 (X' V^-1 X)^-1 for the difference
    w2 = w * w
    dd = (w2 * r) @ d.gmat  # cross terms fixed effects x g (times -scale)
    a2 = (w2 @ d.gmat) / s
    c3 = ((w2 * w) @ d.gmat) / s
    h_gg = (0.5 * w2.sum(1) - 0.5 * k * (2 * (wr2 * w2).sum(1) / q - (w * wr2).sum(1) ** 2 / q**2)
            + 0.5 * ((a2**2).sum(1) - 2 * c3.sum(1)))
    ck = dd[:, 1] / s[:, 1] - dd[:, 0] / s[:, 0]
    denom = -h_gg - (dd * dd / s).sum(1) / scale
    full = denom > 0
    var = base.copy()
    var[full] += ck[full] ** 2 / denom[full]
    return mu[:, 1] - mu[:, 0], np.sqrt(var), scale


def _fit_balanced(d: _Design, means, within):
    m = d.counts[0]
    _, _, _, r = _gls(d, means, np.zeros(means.shape[0]))
    msb = m * (r * r).sum(1) / (len(d.batches) - 2)
    msw = within / (d.n - len(d.batches))
    return np.maximum((msb - msw) / (m * msw), 0.0)


def _fit_profile(d: _Design, means, within):
    """Maximise the profile REML likelihood over g >= 0: grid on t = g / (c + g), then golden section."""
    c = 1.0 / float(np.median(d.counts))
    to_g = lambda t: c * t / (1.0 - t)
    ts = np.linspace(0.0, 1.0 - 1e-9, _GRID)
    ll = np.stack([_loglik(d, means, within, np.full(means.shape[0], to_g(t))) for t in ts])
    k = np.argmax(ll, axis=0)
    lo, hi = ts[np.maximum(k - 1, 0)], ts[np.minimum(k + 1, _GRID - 1)]
    phi = (np.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
    f1, f2 = _loglik(d, means, within, to_g(x1)), _loglik(d, means, within, to_g(x2))
    while np.max(hi - lo) > _TOL:
        left = f1 > f2  # maximum in [lo, x2]
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        x2n = np.where(left, x1, lo + phi * (hi - lo))
        x1n = np.where(left, hi - phi * (hi - lo), x2)
        fn = _loglik(d, means, within, to_g(np.where(left, x1n, x2n)))
        f1, f2 = np.where(left, fn, f2), np.where(left, f1, fn)
        x1, x2 = x1n, x2n
    g = to_g((lo + hi) / 2.0)
    best = _loglik(d, means, within, g)
    g[_loglik(d, means, within, np.zeros_like(g)) >= best - 1e-12 * (1.0 + np.abs(best))] = 0.0  # boundary
    return g


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def _fit_pixels(images, groups, batches, layout, reference, chunk_pixels, progress, cancel):
    from ._utils import is_cancelled

    a = np.asarray(images)
    if a.ndim != 3:
        raise DataError(f"Expected a stack of genomaps shaped (n, rows, cols), got shape {a.shape}.")
    d = _design(groups, batches, a.shape[0], reference)
    shape = a.shape[1:]
    grid = grid_for(layout, shape) if layout is not None else None
    flat = a.reshape(a.shape[0], -1)
    n_pix = flat.shape[1]
    out = {k: np.full(n_pix, np.nan) for k in ("coef", "se", "var_batch", "var_resid")}
    tested = np.zeros(n_pix, dtype=bool)
    step = int(chunk_pixels) if chunk_pixels else max(256, int(4e6 // max(d.n, 1)))
    t0 = time.perf_counter()
    fit = _fit_balanced if d.balanced else _fit_profile
    for start in range(0, n_pix, step):
        if is_cancelled(cancel):
            raise MixedModelCancelled(f"Cancelled after {start} of {n_pix} pixels; nothing was returned.")
        sl = slice(start, min(start + step, n_pix))
        y = np.asarray(flat[:, sl], dtype=np.float64)
        nan = np.isnan(y)
        empty = nan.all(axis=0)
        bad = start + np.flatnonzero((nan.any(axis=0) & ~empty) | np.isinf(y).any(axis=0))
        if bad.size:
            raise DataError(f"{bad.size} pixel(s) (first: {int(bad[0])}, row-major) are NaN or infinite in some "
                            "images but not in all. Empty pixels must be NaN in every image; fix or drop those images.")
        ok = ~empty & (y.max(axis=0) > y.min(axis=0))  # NaN columns compare False
        if grid is not None:
            ok &= np.array([v is not None for v in grid.ravel()[sl]])
        idx = np.flatnonzero(ok)
        if idx.size:
            yy = y[:, idx]
            means, within = _batch_stats(yy, d)
            total = ((yy - yy.mean(axis=0)) ** 2).sum(axis=0)
            fine = within > 1e-12 * total  # no variation within batches: batch and residual inseparable
            idx, means, within = idx[fine], means[fine], within[fine]
        if idx.size:
            g = fit(d, means, within)
            coef, se, scale = _wald(d, means, within, g)
            pos = start + idx
            out["coef"][pos], out["se"][pos] = coef, se
            out["var_batch"][pos], out["var_resid"][pos] = g * scale, scale
            tested[pos] = True
        if progress is not None:
            el = time.perf_counter() - t0
            progress({"stage": "mixedlm", "done": sl.stop, "total": n_pix, "elapsed_s": el,
                      "eta_s": el / sl.stop * (n_pix - sl.stop)})
    return d, grid, shape, out, tested


def mixed_model_pixels(images, groups: Sequence | np.ndarray, batches: Sequence | np.ndarray, layout=None, *,
                       reference=None, dist: str = "normal", chunk_pixels: int | None = None,
                       progress: Callable[[dict], None] | None = None, cancel=None) -> pd.DataFrame:
    """Per pixel, ``value ~ group + (1 | batch)`` by REML, Wald z-test of the group, Benjamini-Hochberg.

    Parameters
    ----------
    images : array ``(n, rows, cols)``
        Genomaps; NaN on empty pixels (NaN in every image).
    groups, batches : sequences of length ``n``
        Each image's group and batch.  The group must be constant within a batch, take exactly two
        values, and each group needs at least two batches.
    layout : GenomapLayout or ``(rows, cols)`` array of gene names, optional
        Adds the ``gene`` column; pixels without a gene are not tested.
    reference : str, optional
        The reference group (default: the first in sorted order); ``coef`` is other minus reference.
    dist : ``"normal"`` or ``"t"``
        Reference distribution of the Wald statistic: ``"normal"`` (statsmodels' ``pvalues``) or
        Student's t with ``n_batches - 2`` degrees of freedom (better calibrated with few batches).
    chunk_pixels : int, optional
        Pixels fitted at once (bounds memory; default about 4e6 / n).
    progress : callable, optional
        Called after each chunk with ``{"stage": "mixedlm", "done", "total", "elapsed_s", "eta_s"}``.
    cancel : threading.Event or zero-argument callable, optional
        Checked before each chunk; when set, :class:`MixedModelCancelled` is raised.

    Returns
    -------
    pandas.DataFrame
        One row per pixel in row-major order: ``pixel`` (flat index), ``gene`` (with a layout),
        ``coef``, ``p``, ``q``, then ``se``, ``z``, ``var_batch``, ``var_resid``.  Untested pixels
        (empty, no gene, constant, or without variation within batches) have NaN ``coef``/``p``/``q``.
        ``attrs`` holds ``reference``, ``group``, ``balanced``, ``dist``, ``n_images``, ``n_batches``.
    """
    if dist not in ("normal", "t"):
        raise DataError(f"dist must be 'normal' (statsmodels' z-test) or 't' (n_batches - 2 df); got {dist!r}.")
    d, grid, shape, out, tested = _fit_pixels(images, groups, batches, layout, reference, chunk_pixels,
                                              progress, cancel)
    z = out["coef"] / out["se"]
    p = np.full(z.shape, np.nan)
    ref_dist = stats.norm if dist == "normal" else stats.t(len(d.batches) - 2)
    p[tested] = 2.0 * ref_dist.sf(np.abs(z[tested]))
    cols = {"pixel": np.arange(z.size)}
    if grid is not None:
        cols["gene"] = grid.ravel()
    cols.update(coef=out["coef"], p=p, q=benjamini_hochberg(p), se=out["se"], z=z,
                var_batch=out["var_batch"], var_resid=out["var_resid"])
    df = pd.DataFrame(cols)
    df.attrs.update(reference=d.names[0], group=d.names[1], balanced=d.balanced, n_images=d.n, dist=dist,
                    n_batches=len(d.batches), shape=tuple(int(v) for v in shape))
    return df


def mixed_model_test(images, groups: Sequence | np.ndarray, batches: Sequence | np.ndarray, layout=None,
                     alpha: float = 0.05, *, reference=None, dist: str = "normal", chunk_pixels: int | None = None,
                     progress=None, cancel=None):
    """:func:`mixed_model_pixels` as a :class:`~napari_scmedal.analysis.PixelTestResult` (``test="mixedlm"``).

    The table has the Mann-Whitney result's columns (``gene, row, col, mean_<ref>, mean_<other>, diff,
    statistic, p, q, significant``) with ``diff`` = the model's coefficient (other minus reference)
    and ``statistic`` = its z; plus ``se``, ``var_batch``, ``var_resid``.  ``significant`` is the
    (rows, cols) overlay (q < alpha); the figure and CSV writers take it as they take Mann-Whitney's.
    """
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be between 0 and 1 (got {alpha}); 0.05 is usual.")
    a = np.asarray(images)
    df = mixed_model_pixels(a, groups, batches, layout=layout, reference=reference, dist=dist,
                            chunk_pixels=chunk_pixels, progress=progress, cancel=cancel)
    ref, other = df.attrs["reference"], df.attrs["group"]
    shape = df.attrs["shape"]
    grid = grid_for(layout, shape)
    g = np.asarray([str(x) for x in np.asarray(groups, dtype=object).ravel()])
    flat = a.reshape(a.shape[0], -1)
    v = {c: df[c].to_numpy() for c in ("coef", "z", "p", "q", "se", "var_batch", "var_resid")}
    sig = np.nan_to_num(v["q"], nan=1.0) < alpha
    idx = np.flatnonzero(~np.isnan(v["p"]))
    rows, cols = np.unravel_index(idx, shape)
    table = pd.DataFrame({
        "gene": [grid[r, c] for r, c in zip(rows, cols)], "row": rows.astype(int), "col": cols.astype(int),
        f"mean_{ref}": flat[g == ref][:, idx].mean(axis=0, dtype=np.float64),
        f"mean_{other}": flat[g == other][:, idx].mean(axis=0, dtype=np.float64),
        "diff": v["coef"][idx], "statistic": v["z"][idx], "p": v["p"][idx], "q": v["q"][idx], "significant": sig[idx],
        **{c: v[c][idx] for c in ("se", "var_batch", "var_resid")},
    }).sort_values(["q", "p"], kind="stable").reset_index(drop=True)
    return PixelTestResult(
        table=table, significant=sig.reshape(shape), p=v["p"].reshape(shape), q=v["q"].reshape(shape),
        diff=v["coef"].reshape(shape), alpha=float(alpha), group_a=ref, group_b=other,
        n_a=int((g == ref).sum()), n_b=int((g == other).sum()), test=TEST_NAME,
        meta={k: df.attrs[k] for k in ("balanced", "dist", "n_images", "n_batches")},
    )


def counterfactual_mixed_model_test(comparison, batch_groups: Mapping[str, str], alpha: float = 0.05, *,
                                    reference=None, dist: str = "normal", chunk_pixels: int | None = None,
                                    progress=None, cancel=None):
    """Mixed model per pixel on the counterfactual genomaps of a :class:`~napari_scmedal.compare.Comparison`.

    ``batch_groups`` maps each target batch to its group (a batch attribute, e.g. diagnosis); the
    images are every selected cell's ``Counterfactual -> <batch>`` genomap, with that batch as the
    image's batch.  The comparison must not be averaged (one row per cell).  The same cells are in
    every batch, so the test compares batches as projected through the model, not independent
    cells (see the module docstring).  Returns a ``PixelTestResult`` (``test="mixedlm"``).
    """
    groups_of = {str(b): str(g) for b, g in dict(batch_groups).items()}
    if not groups_of:
        raise DataError("Give each target batch its group, e.g. {'b1': 'ctrl', 'b2': 'case', ...}.")
    imgs = counterfactual_images(comparison, list(groups_of))
    n = imgs[0].shape[0]
    batches = np.repeat(list(groups_of), n)
    groups = np.repeat(list(groups_of.values()), n)
    res = mixed_model_test(np.concatenate(imgs, axis=0), groups, batches, layout=comparison.layout, alpha=alpha,
                           reference=reference, dist=dist, chunk_pixels=chunk_pixels, progress=progress,
                           cancel=cancel)
    res.meta.update(batch_groups=groups_of, n_cells=int(n))
    return res




def counterfactual_pixel_test(comparison, batches_a: Sequence[str], batches_b: Sequence[str],
                              method: str = "mannwhitney", alpha: float = 0.05,
                              names: tuple[str, str] = ("A", "B"), dist: str = "normal", **kwargs):
    """Either per-pixel test between counterfactuals to two groups of batches (what the CLI runs).

    ``method="mannwhitney"``: :func:`~napari_scmedal.analysis.counterfactual_group_test` (every
    cell x batch genomap an independent sample).  ``method="mixedlm"``: each batch of
    ``batches_a`` gets group ``names[0]`` (the reference), each of ``batches_b`` group ``names[1]``,
    and :func:`counterfactual_mixed_model_test` runs with ``dist``; ``kwargs`` go to the chosen test.
    """
    if method not in PIXEL_TESTS:
        raise DataError(f"Unknown pixel test {method!r}; choose one of {', '.join(PIXEL_TESTS)}.")
    if method == "mannwhitney":
        if dist != "normal":
            raise DataError(f"dist={dist!r} applies to the mixed model only; use method='mixedlm' or drop it.")
        return counterfactual_group_test(comparison, batches_a, batches_b, alpha=alpha, names=names, **kwargs)
    a, b = [str(x) for x in batches_a], [str(x) for x in batches_b]
    both = sorted(set(a) & set(b))
    if both:
        raise DataError(f"Batches {both} are in both groups; each batch must be in one group only.")
    groups = {**{x: str(names[0]) for x in a}, **{x: str(names[1]) for x in b}}
    res = counterfactual_mixed_model_test(comparison, groups, alpha=alpha, reference=str(names[0]), dist=dist,
                                          **kwargs)
    res.meta.update(batches_a=a, batches_b=b)
    return res
