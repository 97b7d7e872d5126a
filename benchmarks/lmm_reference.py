"""Independent referees for the per-pixel mixed model (napari_scmedal.lmm), shared by tests/test_lmm.py and
benchmarks/bench_lmm.py: statsmodels' MixedLM fitted pixel by pixel, and the profile REML log-likelihood from
the full n x n covariance (to say who found the higher likelihood when the two disagree)."""

from __future__ import annotations

import time
import warnings

import numpy as np


def dense_reml(y, groups, batches, g):
    """Profile REML log-likelihood of ``value ~ group + (1 | batch)`` at variance ratio ``g`` (batch / residual)."""
    x = np.c_[np.ones(len(y)), groups == groups[0]]
    z = (batches[:, None] == np.unique(batches)[None, :]).astype(float)
    vi = np.linalg.inv(np.eye(len(y)) + g * z @ z.T)
    xvx = x.T @ vi @ x
    r = y - x @ np.linalg.solve(xvx, x.T @ vi @ y)
    return -0.5 * (-np.linalg.slogdet(vi)[1] + np.linalg.slogdet(xvx)[1] + (len(y) - 2) * np.log(r @ vi @ r))


def statsmodels_pixels(images, groups, batches, pixels=None, **fit_kw):
    """statsmodels' MixedLM ``value ~ group`` with a random intercept per batch, for each pixel (row-major) of
    ``images`` (n, ...) or only ``pixels``: a DataFrame with ``pixel, converged, re (batch variance), coef, p,
    g (variance ratio), seconds``. ``fit_kw`` go to ``MixedLM.fit`` (e.g. ``method="nm", maxiter=4000``)."""
    import pandas as pd
    import statsmodels.formula.api as smf

    flat = np.asarray(images).reshape(len(images), -1)
    rows = []
    for k in range(flat.shape[1]) if pixels is None else pixels:
        df = pd.DataFrame({"value": flat[:, k].astype(np.float64), "group": groups, "batch": batches})
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = smf.mixedlm("value ~ group", df, groups=df["batch"]).fit(**fit_kw)
        rows.append({"pixel": int(k), "converged": bool(r.converged), "re": float(r.cov_re.iloc[0, 0]),
                     "coef": float(r.fe_params.iloc[1]), "p": float(r.pvalues.iloc[1]),
                     "g": float(np.asarray(r.cov_re_unscaled)[0, 0]), "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)
