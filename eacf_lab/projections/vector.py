"""Vector-proj: radial splines along ``dim`` reference points (paper App. B.4, Eq. 14).

For ``i = 1..dim`` in turn: reference point ``p_i = x_c + v_i``, ``w = u - p_i``,
``r = |w|``; only the radius goes through a spline on ``[0, r_max]`` and the direction is
kept: ``u <- p_i + (s(r) / r) w``.  A radial map in ``dim`` dimensions has

    log|det| = log s'(r) + (dim - 1) (log s(r) - log r).

Only norms are used, so the map is equivariant to rotations **and reflections** (E(3)),
unlike the Cartesian and spherical projections.  Composing ``dim`` radial maps about
different centres lets it move a point in every direction.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from eacf_lab.geometry import safe_norm
from eacf_lab.projections.base import Projection
from eacf_lab.splines import n_spline_params, rqs

__all__ = ["VectorProjection"]

_TINY = 1e-30


class VectorProjection(Projection):
    """Vector-proj for one point; see the module docstring."""

    dim: int = eqx.field(static=True)
    n_bins: int = eqx.field(static=True, default=8)
    r_max: float = eqx.field(static=True, default=10.0)

    @property
    def n_vectors(self) -> int:
        return self.dim

    @property
    def n_params(self) -> int:
        return self.dim * n_spline_params(self.n_bins)

    def _radial(self, u, p, params, inverse):
        w = u - p
        r = safe_norm(w)
        r_new, ld = rqs(r, params, 0.0, self.r_max, inverse=inverse)
        log_ratio = jnp.log(jnp.maximum(r_new, _TINY)) - jnp.log(r)
        return p + w * (r_new / r), ld + (self.dim - 1) * log_ratio

    def transform(self, u, x_c, vectors, params, inverse):
        p = params.reshape(self.dim, -1)
        log_det = jnp.zeros((), u.dtype)
        order = reversed(range(self.dim)) if inverse else range(self.dim)  # inverse: undo last first
        for i in order:
            u, ld = self._radial(u, x_c + vectors[i], p[i], inverse=inverse)
            log_det = log_det + ld
        return u, log_det
