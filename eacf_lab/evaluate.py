"""Evaluate a trained flow against a target and its test set (paper Sec. 6.1, App. B.10).

Reported (all in nats, per configuration):

* ``nll``: test NLL ``-mean log q^(x)`` with the marginal estimator of Eq. 21 (M = 20
  draws ``a ~ pi(. | x)``); an upper bound on the true NLL in expectation.
* ``joint_nll``: ``-mean log q(x, a)`` with one ``a ~ pi(. | x)`` per test point.
* ``reverse_ess``: from ``n_flow_samples`` flow samples, ``w = p~(x) pi(a | x) / q(x, a)``,
  with ``reverse_ess_se``, its delta-method standard error (``estimators.reverse_ess_se``).
* ``forward_ess``: from the test set with ``a ~ pi(. | x)``, same weights.
* ``log_z``: ``log mean w`` over the flow samples (importance sampling; ``pi(a | x)`` integrates
  to one, so this estimates ``log Z`` of ``p~``), with ``log_z_se``, the delta-method standard
  error ``sqrt((1 / ESS_rev - 1) / N)``.
* ``entropy_p``: ``H(p) = mean_test E(x) + log Z`` (since ``log p = -E - log Z``).
* ``kl_estimate``: ``KL(p || q) = NLL - H(p)``, the distance to a perfect model. An *estimate*:
  its error is dominated by the error of ``log Z`` (biased low for a poor flow, whose IS
  estimate of ``Z`` misses mass); the marginal estimator adds a small upward bias.

All densities live on the zero-CoM hyperplane (``(n - 1) d`` dimensions), so ``Z`` and ``H(p)``
are hyperplane quantities too. Work is done in fixed-size chunks (one compilation, bounded
memory), so 10,000 samples fit on a laptop.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from eacf_lab.estimators import forward_ess, marginal_log_prob, reverse_ess, reverse_ess_se

__all__ = ["evaluate", "pair_distances", "histogram", "data_point_terms", "flow_sample_terms", "in_chunks",
           "data_terms_in_chunks", "flow_terms_in_chunks"]


@eqx.filter_jit
def data_point_terms(flow, target, x, key, n_marginal):
    """Per data point of ``x: (B, n_nodes, dim)``: marginal ``log q^(x)`` (Eq. 21, ``n_marginal``
    draws), joint ``log q(x, a)`` and ``log w`` for the forward ESS, each ``(B,)``; one jitted chunk
    (shared by ``evaluate``, FAB's evaluation and ``aldp_eval``)."""
    k1, k2 = jax.random.split(key)
    marg = jax.vmap(marginal_log_prob, in_axes=(None, 0, 0, None))(flow, x, jax.random.split(k1, x.shape[0]), n_marginal)
    a = jax.vmap(flow.sample_aug)(jax.random.split(k2, x.shape[0]), x)
    log_q = jax.vmap(flow.log_prob)(x, a)
    log_w = jax.vmap(target.log_prob)(x) + jax.vmap(flow.aug_target_log_prob)(x, a) - log_q
    return marg, log_q, log_w


@eqx.filter_jit
def flow_sample_terms(flow, target, keys):
    """Per key of ``keys: (B,)``: a flow sample ``x: (B, n_nodes, dim)``, its energy ``(B,)`` and
    ``log w = log p~(x) + log pi(a | x) - log q(x, a)``, ``(B,)``; one jitted chunk."""
    x, a, log_q = jax.vmap(flow.sample_and_log_prob)(keys)
    log_p = jax.vmap(target.log_prob)(x)
    return x, -log_p, log_p + jax.vmap(flow.aug_target_log_prob)(x, a) - log_q


def in_chunks(fn, n, batch_size):
    """Call ``fn(start, size)`` on fixed-size chunks covering ``range(n)``; concatenate outputs."""
    outs = []
    for start in range(0, n, batch_size):
        res = fn(start, batch_size)
        keep = min(batch_size, n - start)
        outs.append([np.asarray(r)[:keep] for r in res])
    return [np.concatenate(parts) for parts in zip(*outs)]


def data_terms_in_chunks(flow, target, x, key, n_marginal, batch_size):
    """``data_point_terms`` for all of ``x: (N, n_nodes, dim)`` in chunks of ``batch_size`` (the
    last one padded with copies of ``x[0]``, so one compilation serves every chunk; chunk ``s``
    uses ``fold_in(key, s)``).  Returns ``(marginal, joint log q, log w)``, each ``(N,)``."""
    x = np.asarray(x)
    n = len(x)
    padded = np.concatenate([x, np.repeat(x[:1], (-n) % batch_size, 0)])
    return in_chunks(lambda start, size: data_point_terms(flow, target, jnp.asarray(padded[start:start + size]),
                                                          jax.random.fold_in(key, start), n_marginal), n, batch_size)


def flow_terms_in_chunks(flow, target, key, n_samples, batch_size):
    """``flow_sample_terms`` for ``n_samples`` flow samples in chunks of ``batch_size`` (chunk ``s``
    draws from ``fold_in(key, s)``).  Returns ``(x: (n_samples, n, d), energy, log w)``."""
    return in_chunks(lambda start, size: flow_sample_terms(
        flow, target, jax.random.split(jax.random.fold_in(key, start), size)), n_samples, batch_size)


def pair_distances(x) -> np.ndarray:
    """All ``i < j`` interatomic distances of ``x: (N, n, d)`` -> ``(N * n (n - 1) / 2,)``."""
    x = np.asarray(x, dtype=np.float64)
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1).ravel()


def histogram(model, data, n_bins=60, lo=None, hi=None) -> dict:
    """Density histograms on shared edges from the data's 0.1-99.9 % range (padded 10 %).

    Returns ``{"edges": (n_bins + 1,), "model": (n_bins,), "data": (n_bins,),
    "model_outside": fraction of finite model values outside the edges}`` as lists.
    """
    model = np.asarray(model, dtype=np.float64)
    model = model[np.isfinite(model)]
    data = np.asarray(data, dtype=np.float64)
    q_lo, q_hi = np.quantile(data, [0.001, 0.999])
    pad = 0.1 * (q_hi - q_lo)
    lo = q_lo - pad if lo is None else lo
    hi = q_hi + pad if hi is None else hi
    edges = np.linspace(lo, hi, n_bins + 1)
    h_data = np.histogram(data, edges)[0] / max(len(data), 1) / np.diff(edges)
    h_model = np.histogram(model, edges)[0] / max(len(model), 1) / np.diff(edges)
    outside = float(np.mean((model < lo) | (model > hi))) if len(model) else float("nan")
    return {"edges": edges.tolist(), "model": h_model.tolist(), "data": h_data.tolist(), "model_outside": outside}


def evaluate(flow, target, test_data, *, key, n_flow_samples=10_000, n_marginal=20, batch_size=250,
             n_bins=60) -> dict:
    """Evaluate ``flow`` on ``target`` and ``test_data: (N, n_nodes, dim)`` (zero-CoM).

    Arguments:
        key: PRNG key (augmented draws and flow samples).
        n_flow_samples: flow samples for the reverse ESS, ``log Z`` and histograms.
        n_marginal: ``M`` of the marginal estimator (paper: 20).
        batch_size: chunk size (memory ~ ``batch_size * n_marginal`` flow passes at once).
        n_bins: bins of the energy and distance histograms.

    Returns a JSON-able dict: ``nll``, ``nll_se``, ``joint_nll``, ``reverse_ess``,
    ``reverse_ess_se``, ``forward_ess``, ``log_z``, ``log_z_se``, ``mean_energy_test``,
    ``mean_energy_model``, ``entropy_p``, ``kl_estimate``, ``frac_nonfinite_samples``, counts,
    and the histograms ``energy_hist`` and ``distance_hist`` (see :func:`histogram`).
    """
    test = np.asarray(test_data, dtype=np.float32)
    if test.ndim != 3 or test.shape[1:] != (flow.n_nodes, flow.dim):
        raise ValueError(f"test_data must have shape (N, {flow.n_nodes}, {flow.dim}), got {test.shape}")
    if (target.n_nodes, target.dim) != (flow.n_nodes, flow.dim):
        raise ValueError(f"target is ({target.n_nodes}, {target.dim}) but the flow is ({flow.n_nodes}, {flow.dim})")
    for name, v in (("n_flow_samples", n_flow_samples), ("n_marginal", n_marginal), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    k_test, k_flow = jax.random.split(key)
    n = len(test)
    marg, joint, log_w_fwd = data_terms_in_chunks(flow, target, test, k_test, n_marginal, batch_size)
    x_s, e_s, log_w_rev = flow_terms_in_chunks(flow, target, k_flow, n_flow_samples, batch_size)

    finite = np.isfinite(log_w_rev)
    ess_rev = float(reverse_ess(jnp.asarray(log_w_rev)))
    lw = log_w_rev[finite]
    log_z = float(np.logaddexp.reduce(lw) - math.log(len(log_w_rev))) if lw.size else float("nan")
    log_z_se = math.sqrt(max(1.0 / ess_rev - 1.0, 0.0) / n_flow_samples) if ess_rev > 0 else float("inf")
    e_test = -np.asarray(jax.vmap(target.log_prob)(jnp.asarray(test)), dtype=np.float64)
    nll = float(-np.mean(marg))
    entropy = float(np.mean(e_test) + log_z)
    ok = np.all(np.isfinite(x_s.reshape(len(x_s), -1)), axis=1)
    return {
        "nll": nll,
        "nll_se": float(np.std(marg) / math.sqrt(n)),
        "joint_nll": float(-np.mean(joint)),
        "reverse_ess": ess_rev,
        "reverse_ess_se": reverse_ess_se(log_w_rev),
        "forward_ess": float(forward_ess(jnp.asarray(log_w_fwd))),
        "log_z": log_z,
        "log_z_se": log_z_se,
        "mean_energy_test": float(np.mean(e_test)),
        "mean_energy_model": float(np.mean(e_s[finite])) if finite.any() else float("nan"),
        "entropy_p": entropy,
        "kl_estimate": nll - entropy,
        "frac_nonfinite_samples": float(1.0 - np.mean(finite)),
        "n_test": n, "n_flow_samples": n_flow_samples, "n_marginal": n_marginal,
        "energy_hist": histogram(e_s, e_test, n_bins),
        "distance_hist": histogram(pair_distances(x_s[ok]), pair_distances(test), n_bins, lo=0.0),
    }
