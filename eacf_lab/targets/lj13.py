"""LJ13: thirteen Lennard-Jones particles in 3D held together by a harmonic trap.

Köhler, Klein & Noé, "Equivariant Flows", ICML 2020, Sec. 6; used as "LJ13" by
Midgley et al., NeurIPS 2023 (arXiv 2308.10364), Sec. 5.1.

    E(x) = eps/(2 tau) sum_{i != j} [ (r_m / d_ij)^12 - 2 (r_m / d_ij)^6 ]
           + k sum_i |x_i - x_bar|^2,            eps = r_m = tau = 1,  k = 1/2.

The harmonic term is mentioned but not written out by Köhler et al.; we follow the code
conventions of the two published implementations, which agree: bgflow's
``LennardJonesPotential`` (``0.5 * oscillator_scale * |x - x_bar|^2``, scale 1) and the
"eacf" code (``harmonic_potential_coef = 0.5``, ``eacf/targets/target_energy/
leonard_jones.py``).  As there, ``tau`` divides the pair term only.

Coincident particles: pair distances below ``d_min`` (default ``0.1 r_m``) are clamped
to ``d_min`` with zero gradient (see ``base.pair_distances``).  The energy there is
finite and very large, ``(eps/tau)(10^12 - 2 * 10^6) ~ 1e12`` per such pair (fits float32),
and the gradient is finite.  Configurations with such pairs have ~zero probability.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from eacf_lab.targets.base import check_shape, off_diagonal_sum, pair_distances

__all__ = ["LJ13"]


class LJ13(eqx.Module):
    """The LJ13 Lennard-Jones cluster target.  One example per call; ``jax.vmap`` for batches.

    Arguments (all keyword, defaults = the published LJ13):
        epsilon, r_m: well depth and position of the pair minimum.
        temperature: ``tau``; divides the pair term.
        harmonic: coefficient ``k`` of ``k sum_i |x_i - x_bar|^2``.
        n_nodes, dim: system size (13 particles in 3D).
        d_min: distance clamp that keeps coincident particles finite.
    """

    epsilon: float = eqx.field(static=True, default=1.0)
    r_m: float = eqx.field(static=True, default=1.0)
    temperature: float = eqx.field(static=True, default=1.0)
    harmonic: float = eqx.field(static=True, default=0.5)
    n_nodes: int = eqx.field(static=True, default=13)
    dim: int = eqx.field(static=True, default=3)
    d_min: float = eqx.field(static=True, default=0.1)

    def __check_init__(self):
        if self.temperature <= 0 or self.d_min <= 0:
            raise ValueError(
                f"LJ13: temperature and d_min must be > 0, got {self.temperature} and {self.d_min}"
            )

    @property
    def name(self) -> str:
        return f"lj{self.n_nodes}" if self.dim == 3 else f"lj{self.n_nodes}_{self.dim}d"

    def pair_energy(self, d: jax.Array) -> jax.Array:
        """``eps [(r_m/d)^12 - 2 (r_m/d)^6]``: minimum ``-eps`` at ``d = r_m`` (no 1/tau)."""
        s6 = (self.r_m / d) ** 6
        return self.epsilon * (s6**2 - 2.0 * s6)

    def energy(self, x: jax.Array) -> jax.Array:
        """``x: (n_nodes, dim)`` -> scalar energy (in units of kT)."""
        check_shape(x, self.n_nodes, self.dim, "LJ13.energy")
        d = pair_distances(x, self.d_min)
        lj = off_diagonal_sum(self.pair_energy(d)) / (2.0 * self.temperature)
        centred = x - jnp.mean(x, axis=0, keepdims=True)
        return lj + self.harmonic * jnp.sum(centred**2)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Unnormalised log density ``-E(x)``.  ``x: (n_nodes, dim)`` -> scalar."""
        return -self.energy(x)
