"""Estimators: marginal likelihood (paper Eq. 21) and effective sample size (App. B.10).

* Marginal log-likelihood by importance sampling over the augmented variables:

      log q(x) ~= logsumexp_m [log q(x, a_m) - log pi(a_m | x)] - log M,   a_m ~ pi(. | x)

  a lower bound in expectation (Jensen) that tightens as ``M`` grows; the paper uses M = 20.
* Reverse ESS from flow samples, ``w = p~(x) pi(a|x) / q(x, a)``:
  ``ESS = (sum w)^2 / (N sum w^2)``, with a delta-method standard error ``reverse_ess_se``.
* Forward ESS from target samples, ``ESS = 1 / (mean(w) mean(1 / w))``.

* Self-normalised importance sampling ``snis(f, log_w)``: ``E_p[f] ~= sum_i wbar_i f_i`` with a
  delta-method standard error (NumPy; for expectations under ``p`` from flow samples).

Both ESS are normalised fractions in ``[0, 1]`` and are computed from log-weights with
``logsumexp`` so unnormalised targets are fine.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp


__all__ = ["marginal_log_prob", "reverse_ess", "reverse_ess_se", "forward_ess", "snis"]


def marginal_log_prob(flow, x, key, n_samples: int = 20):
    """``log q(x)`` estimated with ``n_samples`` draws of ``a ~ pi(. | x)`` (Eq. 21).

    ``x: (n_nodes, dim)`` zero-CoM -> scalar.  ``jax.vmap`` over ``(x, key)`` for a dataset.
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    flow.check_inputs(x, jnp.zeros((flow.n_aug, flow.n_nodes, flow.dim), jnp.asarray(x).dtype))
    keys = jax.random.split(key, n_samples)
    a = jax.vmap(flow.sample_aug, in_axes=(0, None))(keys, x)
    log_w = jax.vmap(flow.log_prob, in_axes=(None, 0))(x, a) - jax.vmap(flow.aug_target_log_prob, in_axes=(None, 0))(x, a)
    return logsumexp(log_w) - math.log(n_samples)


def _clean(log_w):
    log_w = jnp.asarray(log_w)
    if log_w.ndim != 1 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must be a non-empty 1-D array, got shape {tuple(log_w.shape)}")
    # NaN weights (failed samples) count as zero weight.
    return jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)


def reverse_ess(log_w):
    """Normalised reverse ESS ``(sum w)^2 / (N sum w^2)`` of ``log_w: (N,)``; in ``[0, 1]``."""
    log_w = _clean(log_w)
    n = log_w.shape[0]
    ess = jnp.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w) - math.log(n))
    return jnp.where(jnp.isfinite(ess), ess, 0.0)


def reverse_ess_se(log_w) -> float:
    """Delta-method standard error of ``reverse_ess(log_w)``, ``log_w: (N,)`` (NumPy; a float).

    ``ESS / N = A^2 / B`` with ``A = mean w`` and ``B = mean w^2``; to first order its variance
    is ``g^T C g / N`` with ``g = (2 A / B, -A^2 / B^2)`` and ``C`` the sample covariance of
    ``(w, w^2)``.  The ratio is scale-free, so ``w`` is taken relative to its largest value.
    NaN weights count as zero, as in ``reverse_ess``; a ``+inf`` weight gives NaN.  Like any
    moment-based error bar it is too small when ``N`` is too small to see the weights' tail.
    """
    lw = np.asarray(_clean(log_w), np.float64)  # the checks and NaN handling of reverse_ess
    if lw.shape[0] < 2:
        raise ValueError(f"log_w must be a 1-D array of at least 2 weights, got shape {lw.shape}")
    if np.isposinf(lw).any():
        return float("nan")
    if not np.isfinite(lw).any():
        return 0.0  # every weight zero: ESS 0 exactly
    w = np.exp(lw - lw.max())
    a, b = w.mean(), (w ** 2).mean()
    g = np.array([2 * a / b, -a ** 2 / b ** 2])
    var = g @ np.cov(np.stack([w, w ** 2])) @ g / lw.shape[0]
    return float(np.sqrt(max(var, 0.0)))


def forward_ess(log_w):
    """Normalised forward ESS ``1 / (mean w * mean 1/w)`` of ``log_w: (N,)``; in ``[0, 1]``.

    A zero weight (``-inf``: a target sample the model cannot produce) gives ESS 0.
    """
    log_w = _clean(log_w)
    n = log_w.shape[0]
    ess = jnp.exp(2 * math.log(n) - logsumexp(log_w) - logsumexp(-log_w))
    return jnp.where(jnp.isfinite(ess), ess, 0.0)


def snis(f, log_w):
    """Self-normalised importance-sampling estimate of ``E_p[f]`` and its delta-method standard error.

    ``f: (N,)`` values at flow samples, ``log_w: (N,)`` their log weights ``log p~ - log q`` (any
    constant offset).  ``mean = sum_i wbar_i f_i`` with ``wbar = w / sum w``; ``se^2 =
    sum_i wbar_i^2 (f_i - mean)^2``.  Samples with a non-finite ``f`` or ``log_w`` are dropped.
    Returns ``(mean, se)`` as floats; ``ValueError`` if no sample is usable.
    """
    f, log_w = np.asarray(f, np.float64), np.asarray(log_w, np.float64)
    if f.ndim != 1 or f.shape != log_w.shape:
        raise ValueError(f"f and log_w must be 1-D of the same length, got {f.shape} and {log_w.shape}")
    ok = np.isfinite(log_w) & np.isfinite(f)
    if not ok.any():
        raise ValueError("no sample has a finite f and log_w")
    wbar = np.exp(log_w[ok] - log_w[ok].max())
    wbar /= wbar.sum()
    mean = float(np.sum(wbar * f[ok]))
    return mean, float(np.sqrt(np.sum(wbar ** 2 * (f[ok] - mean) ** 2)))
