"""Annealed importance sampling from the flow towards ``g = p^alpha q^(1 - alpha)`` (FAB; App. C.4).

FAB (Midgley et al., ICLR 2023, Sec. 3) moves flow samples towards the distribution that
minimises the variance of the alpha-divergence estimator, ``g ∝ p^alpha q^(1 - alpha)``
(alpha = 2), with AIS along the geometric path

    log pi_beta = (1 - beta) log q + beta log g = (1 - alpha beta) log q + alpha beta log p,

``beta_0 = 0 < beta_1 < ... < beta_K < beta_{K+1} = 1`` linearly spaced (``K`` intermediate
distributions: 2 for DW4, 8 for LJ13).  Starting from ``z_0 ~ q`` the log-weight collects

    log w = sum_{k=1}^{K+1} [log pi_{beta_k}(z_{k-1}) - log pi_{beta_{k-1}}(z_{k-1})]
          = sum_k (beta_k - beta_{k-1}) alpha (log p(z_{k-1}) - log q(z_{k-1})),

with one HMC transition (``hmc.py``) leaving ``pi_{beta_k}`` invariant between the terms, so
that ``E[w f(z_K)] ∝ E_g[f]``.  For the augmented flow ``z = (x, a)`` and ``p`` is the joint
target ``p~(x) pi(a | x)``; the chain runs on the flattened ``(x, a)`` with the momenta of ``x``
projected onto the zero-CoM hyperplane.  ``alpha = 1`` gives plain AIS towards ``p`` (used to
report the ESS of AIS).

Non-finite values never propagate: a flow sample whose ``x``, ``a`` or densities are not finite
gets ``log w = -inf`` (and a zero state, so HMC stays finite); HMC rejects non-finite proposals.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from eacf_lab.geometry import remove_com
from eacf_lab.train.hmc import HMCPoint, hmc_point, hmc_step
from eacf_lab.train.parallel import constrain_batch

__all__ = ["AISResult", "ais", "betas", "joint_components"]


class AISResult(NamedTuple):
    """Output of :func:`ais` for a batch of ``B`` chains.

    ``x: (B, n, d)``, ``a: (B, k, n, d)``: final states; ``log_w: (B,)``: AIS log-weights
    (``-inf`` for invalid chains); ``log_q: (B,)``, ``log_p: (B,)``: joint flow and target
    log densities at the final states; ``accept: (K,)``: mean HMC acceptance per intermediate
    distribution; ``log_w_flow: (B,)``: the plain flow-sample weights ``log p - log q`` at the
    start (for the flow's own reverse ESS).

    The path, level by level (to watch AIS work): ``levels_x: (B, K + 2, n, d)`` and
    ``levels_log_w: (B, K + 2)``.  Column ``k`` holds the states and the log-weights
    accumulated so far after the HMC transition at ``beta_k`` (``betas(K)[k]``): a weighted
    sample of ``pi_{beta_k}``.  Column 0 is the flow samples with ``log w = 0``; column
    ``K + 1`` is the final states with the final ``log_w`` (a weighted sample of ``g``).
    Invalid chains carry ``-inf`` in every column.
    """

    x: jax.Array
    a: jax.Array
    log_w: jax.Array
    log_q: jax.Array
    log_p: jax.Array
    accept: jax.Array
    log_w_flow: jax.Array
    levels_x: jax.Array
    levels_log_w: jax.Array


def betas(n_intermediate: int):
    """``(K + 2,)`` linearly spaced ``0, ..., 1``."""
    return jnp.linspace(0.0, 1.0, n_intermediate + 2)


def _split(flow, z):
    n, d, k = flow.n_nodes, flow.dim, flow.n_aug
    return z[: n * d].reshape(n, d), z[n * d:].reshape(k, n, d)


def _project(flow, v):
    """Zero-CoM projection of the ``x`` part of a flat vector; ``a`` is unconstrained."""
    n, d = flow.n_nodes, flow.dim
    return jnp.concatenate([remove_com(v[: n * d].reshape(n, d)).ravel(), v[n * d:]])


def joint_components(flow, target):
    """``z: (D,) -> (values, grads)`` with ``values = (log q(x, a), log p~(x) + log pi(a | x))``."""

    def log_q(z):
        x, a = _split(flow, z)
        return flow.log_prob(x, a)

    def log_p(z):
        x, a = _split(flow, z)
        return target.log_prob(x) + flow.aug_target_log_prob(x, a)

    def components(z):
        (lq, gq), (lp, gp) = jax.value_and_grad(log_q)(z), jax.value_and_grad(log_p)(z)
        return jnp.stack([lq, lp]), jnp.stack([gq, gp])

    return components


def ais(key, flow, target, n_chains: int, step_sizes, *, alpha: float = 2.0, n_leapfrog: int = 5,
        mesh=None) -> AISResult:
    """Run ``n_chains`` AIS chains from the flow to ``p^alpha q^(1 - alpha)``.

    Arguments:
        key: PRNG key.
        flow: an ``AugmentedFlow`` (its parameters are treated as constants: wrap the call in
            ``jax.lax.stop_gradient`` or call it outside a gradient).
        target: energy target with ``log_prob(x: (n, d)) -> scalar``.
        n_chains: batch size ``B``.
        step_sizes: ``(K,)`` HMC step size per intermediate distribution (``K`` may be 0).
        alpha: the alpha of the divergence (FAB: 2; 1 = plain AIS to ``p``).
        n_leapfrog: leapfrog steps per HMC transition (paper: 5).
        mesh: data parallel (``parallel.make_mesh``; inside ``jax.jit``): the chains are split
            across its devices (``n_chains`` divisible by their number).  Each chain's random
            numbers come from its own key, so the result does not depend on the split.
    """
    step_sizes = jnp.asarray(step_sizes)
    if step_sizes.ndim != 1:
        raise ValueError(f"step_sizes must be (n_intermediate,), got shape {step_sizes.shape}")
    n_inter = step_sizes.shape[0]
    k_flow, k_hmc = jax.random.split(key)
    chain_keys = constrain_batch(jax.random.split(k_flow, n_chains), mesh)
    x0, a0, log_q0 = jax.vmap(flow.sample_and_log_prob)(chain_keys)
    z0 = jnp.concatenate([x0.reshape(n_chains, -1), a0.reshape(n_chains, -1)], axis=1)
    ok0 = jnp.isfinite(z0).all(axis=1) & jnp.isfinite(log_q0)
    z0 = jnp.where(ok0[:, None], z0, 0.0)  # a failed sample: a harmless state, weight -inf below
    components = joint_components(flow, target)
    points = jax.vmap(hmc_point, in_axes=(None, 0))(components, z0)
    ok0 = ok0 & jnp.isfinite(points.values).all(axis=1)
    bs = betas(n_inter).astype(z0.dtype)
    alpha = jnp.asarray(alpha, z0.dtype)

    def increment(points: HMCPoint, b_new, b_old):  # (beta_k - beta_{k-1}) alpha (log p - log q)
        return (b_new - b_old) * alpha * (points.values[:, 1] - points.values[:, 0])

    log_w_flow = points.values[:, 1] - points.values[:, 0]
    project = lambda v: _project(flow, v)  # noqa: E731

    def level(carry, inputs):
        points, log_w = carry
        k_level, b_old, b_new, eps = inputs
        log_w = log_w + increment(points, b_new, b_old)
        c = jnp.stack([1.0 - alpha * b_new, alpha * b_new])
        step = lambda kk, pt: hmc_step(kk, pt, components, c, eps, n_leapfrog, project=project)  # noqa: E731
        keys, points = constrain_batch((jax.random.split(k_level, n_chains), points), mesh)
        points, acc = jax.vmap(step)(keys, points)
        return (points, log_w), (jnp.mean(acc), points.z, log_w)

    zero = jnp.zeros((n_chains,), z0.dtype)
    inputs = (jax.random.split(k_hmc, n_inter), bs[:n_inter], bs[1:n_inter + 1], step_sizes.astype(z0.dtype))
    z_start = points.z
    (points, log_w), (accept, path_z, path_log_w) = jax.lax.scan(level, (points, zero), inputs)
    log_w = log_w + increment(points, bs[-1], bs[-2])
    ok = ok0 & jnp.isfinite(log_w)
    log_w = jnp.where(ok, log_w, -jnp.inf)
    x, a = jax.vmap(lambda z: _split(flow, z))(points.z)
    # The path: (K + 2, B, ...) with the flow samples first and the final states last -> chains first.
    path_z = jnp.concatenate([z_start[None], path_z, points.z[None]])
    path_log_w = jnp.concatenate([zero[None], path_log_w, log_w[None]])
    path_x = path_z[:, :, : flow.n_nodes * flow.dim]
    levels_x = jnp.swapaxes(path_x, 0, 1).reshape(n_chains, n_inter + 2, flow.n_nodes, flow.dim)
    levels_log_w = jnp.where(ok[:, None], jnp.swapaxes(path_log_w, 0, 1), -jnp.inf)
    return AISResult(x=x, a=a, log_w=log_w, log_q=points.values[:, 0], log_p=points.values[:, 1],
                     accept=accept, log_w_flow=jnp.where(ok0, log_w_flow, -jnp.inf),
                     levels_x=levels_x, levels_log_w=levels_log_w)
