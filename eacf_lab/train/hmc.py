"""Hamiltonian Monte Carlo, one transition, in plain JAX (used by AIS in FAB; paper App. C.4).

State ``z: (D,)`` (a flattened configuration), target ``log pi(z)`` known up to a constant.
One transition with identity mass matrix:

1. draw a momentum ``v ~ N(0, I)`` (projected, see below);
2. ``n_leapfrog`` leapfrog steps of size ``eps`` on ``H(z, v) = -log pi(z) + |v|^2 / 2``:

       v <- v + eps/2 grad log pi(z);   z <- z + eps v;   v <- v + eps/2 grad log pi(z)

3. accept the end point with probability ``min(1, exp(H(z0, v0) - H(z1, v1)))``.

Guards: a proposal whose log density or gradient is not finite, or whose energy error
``H1 - H0`` exceeds ``max_energy_error`` (a *divergent* trajectory), is rejected -- the chain
stays where it is, and nothing non-finite is ever propagated.

``project`` keeps a chain on a linear subspace: the momentum and every gradient are projected
before use, so positions never leave it (for molecules: the zero-CoM hyperplane of ``x``).
A Gaussian momentum projected orthogonally onto a subspace is the standard Gaussian *of that
subspace*, so ``|v|^2 / 2`` stays the right kinetic energy.

The target is passed as ``components(z) -> (values, grads)`` plus a weight vector ``c``:
``log pi(z) = c . values`` and ``grad log pi = c . grads``.  AIS uses two components,
``(log q, log p)``: every point on its annealing path is a different ``c`` of the same two
functions, so the values at the current state are reused when the level changes.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["HMCPoint", "hmc_point", "hmc_step", "adapt_step_size"]


class HMCPoint(NamedTuple):
    """A position with its component values and gradients (one example).

    ``z: (D,)``, ``values: (C,)``, ``grads: (C, D)``.
    """

    z: jax.Array
    values: jax.Array
    grads: jax.Array


def hmc_point(components: Callable, z) -> HMCPoint:
    """Evaluate ``components(z) -> (values: (C,), grads: (C, D))`` at ``z: (D,)``."""
    values, grads = components(z)
    return HMCPoint(z, values, grads)


def _log_pi(point: HMCPoint, c):
    return jnp.dot(c, point.values)


def _grad(point: HMCPoint, c, project):
    return project(jnp.einsum("c,cd->d", c, point.grads))


def _finite(point: HMCPoint):
    return jnp.isfinite(point.values).all() & jnp.isfinite(point.grads).all() & jnp.isfinite(point.z).all()


def hmc_step(key, point: HMCPoint, components: Callable, c, step_size, n_leapfrog: int = 5, *,
             project: Callable = lambda v: v, max_energy_error: float = 1000.0):
    """One HMC transition targeting ``log pi = c . components``.

    Arguments:
        key: PRNG key.
        point: the current :class:`HMCPoint` (``hmc_point(components, z)``).
        components: ``z: (D,) -> (values: (C,), grads: (C, D))``.
        c: ``(C,)`` weights of the components.
        step_size: scalar leapfrog step ``eps``.
        n_leapfrog: leapfrog steps per transition (paper: 5).
        project: linear projection of momenta/gradients onto the subspace the chain lives on.
        max_energy_error: trajectories with ``H1 - H0`` above this are rejected as divergent.

    Returns ``(point, accept_prob)``: the new point (the old one if rejected) and the
    Metropolis acceptance probability (0 for a non-finite or divergent proposal).
    """
    k_mom, k_acc = jax.random.split(key)
    v0 = project(jax.random.normal(k_mom, point.z.shape, point.z.dtype))

    def leapfrog(carry, _):
        p, v = carry
        v = v + 0.5 * step_size * _grad(p, c, project)
        p = hmc_point(components, p.z + step_size * v)
        v = v + 0.5 * step_size * _grad(p, c, project)
        return (p, v), None

    (new, v1), _ = jax.lax.scan(leapfrog, (point, v0), None, length=n_leapfrog)
    h0 = -_log_pi(point, c) + 0.5 * jnp.sum(v0**2)
    h1 = -_log_pi(new, c) + 0.5 * jnp.sum(v1**2)
    ok = _finite(new) & jnp.isfinite(h1) & (h1 - h0 < max_energy_error)
    log_accept = jnp.where(ok, jnp.minimum(0.0, h0 - jnp.where(ok, h1, 0.0)), -jnp.inf)
    accept_prob = jnp.exp(log_accept)
    accept = jnp.log(jax.random.uniform(k_acc, (), point.z.dtype)) < log_accept
    out = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, point)
    return out, accept_prob


def adapt_step_size(step_size, mean_accept, *, target: float = 0.65, factor: float = 1.02):
    """Multiply ``step_size`` by ``factor`` if ``mean_accept > target``, else divide (App. C.4)."""
    return jnp.where(mean_accept > target, step_size * factor, step_size / factor)
