"""DW4: four particles in 2D with a double-well pair potential.

Köhler, Klein & Noé, "Equivariant Flows: Exact Likelihood Generative Learning for
Symmetric Densities", ICML 2020, Sec. 6 (parameters from their Eq. for the DW system);
used as "DW4" by Midgley et al., NeurIPS 2023 (arXiv 2308.10364), Sec. 5.1.

    E(x) = 1/(2 tau) sum_{i != j} [ a (d_ij - d0) + b (d_ij - d0)^2 + c (d_ij - d0)^4 ]

with a = 0, b = -4, c = 0.9, d0 = 4, tau = 1.  Each pair sits in one of two wells at
``d0 -+ sqrt(-b / 2c) ~ 2.51, 5.49`` separated by a barrier of ``b^2/4c ~ 4.44`` at d0.
(The published "eacf" code, ``eacf/targets/target_energy/double_well.py``, uses the
same formula and defaults.)

Coincident particles: pair distances below ``d_min`` (default 1e-6) are clamped to
``d_min`` with zero gradient (see ``base.pair_distances``).  The energy there is finite,
about ``(a(-d0) + b d0^2 + c d0^4) / tau ~ 166.4`` per coincident pair, and the gradient
is finite (that pair contributes no force).
"""

from __future__ import annotations

import equinox as eqx
import jax

from eacf_lab.targets.base import check_shape, off_diagonal_sum, pair_distances

__all__ = ["DW4"]


class DW4(eqx.Module):
    """The DW4 double-well target.  One example per call; ``jax.vmap`` for batches.

    Arguments (all keyword, defaults = the published DW4):
        a, b, c, d0: pair-potential coefficients.
        temperature: ``tau``; the whole energy is divided by it.
        n_nodes, dim: system size (4 particles in 2D).
        d_min: distance clamp that keeps coincident particles finite.
    """

    a: float = eqx.field(static=True, default=0.0)
    b: float = eqx.field(static=True, default=-4.0)
    c: float = eqx.field(static=True, default=0.9)
    d0: float = eqx.field(static=True, default=4.0)
    temperature: float = eqx.field(static=True, default=1.0)
    n_nodes: int = eqx.field(static=True, default=4)
    dim: int = eqx.field(static=True, default=2)
    d_min: float = eqx.field(static=True, default=1e-6)

    def __check_init__(self):
        if self.temperature <= 0 or self.d_min <= 0:
            raise ValueError(
                f"DW4: temperature and d_min must be > 0, got {self.temperature} and {self.d_min}"
            )

    @property
    def name(self) -> str:
        return "dw4" if (self.n_nodes, self.dim) == (4, 2) else f"dw{self.n_nodes}_{self.dim}d"

    def pair_energy(self, d: jax.Array) -> jax.Array:
        """The double-well function ``a u + b u^2 + c u^4`` with ``u = d - d0`` (no 1/tau)."""
        u = d - self.d0
        return self.a * u + self.b * u**2 + self.c * u**4

    def energy(self, x: jax.Array) -> jax.Array:
        """``x: (n_nodes, dim)`` -> scalar energy (in units of kT)."""
        check_shape(x, self.n_nodes, self.dim, "DW4.energy")
        d = pair_distances(x, self.d_min)
        return off_diagonal_sum(self.pair_energy(d)) / (2.0 * self.temperature)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Unnormalised log density ``-E(x)``.  ``x: (n_nodes, dim)`` -> scalar."""
        return -self.energy(x)
