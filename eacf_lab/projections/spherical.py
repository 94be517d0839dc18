"""Spherical-proj: the inner spline acts on spherical coordinates (paper App. B.4, Eq. 12-13).

Reference points ``p_j = x_c + v_j`` (``j = 0..dim-1``).  Origin ``p_0``; z-axis along
``p_1 - p_0``; x-axis from ``p_2 - p_0`` orthogonalised (3D).  A point ``u`` is written as

* 3D: ``(r, theta, phi)`` with ``r = |w|``, ``theta`` the polar angle from the z-axis,
  ``phi`` the azimuth, for ``w = F (u - p_0)``;
* 2D: polar ``(r, phi)``.

Splines: ``r`` on ``[0, r_max]`` (``0`` is a fixed point, so ``r >= 0`` is kept; linear
tail above ``r_max``), ``theta`` on ``[0, pi]``, ``phi`` on ``[-pi, pi]`` with a
**circular** spline.  Log-det of the whole map (change of variables to spherical
coordinates, volume element ``r^2 sin(theta)``; 2D ``r``):

    log|det| = sum log s'(.) + [2 log r' + log sin theta'] - [2 log r + log sin theta].
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from eacf_lab.geometry import safe_norm
from eacf_lab.projections.base import Projection
from eacf_lab.projections.frames import collinearity_loss, orthonormal_frame
from eacf_lab.splines import n_spline_params, rqs

__all__ = ["SphericalProjection"]

_TINY = 1e-30


def _safe_atan2(y, x, eps=1e-24):
    ok = x**2 + y**2 > eps
    return jnp.where(ok, jnp.arctan2(jnp.where(ok, y, 0.0), jnp.where(ok, x, 1.0)), 0.0)


class SphericalProjection(Projection):
    """Spherical-proj for one point; see the module docstring."""

    dim: int = eqx.field(static=True)
    n_bins: int = eqx.field(static=True, default=8)
    r_max: float = eqx.field(static=True, default=10.0)

    @property
    def n_vectors(self) -> int:
        return self.dim

    @property
    def n_params(self) -> int:
        return self.dim * n_spline_params(self.n_bins)

    def intervals(self):
        """``(lo, hi, circular)`` of the spline per coordinate, as NumPy arrays of shape ``(dim,)``."""
        if self.dim == 2:
            return np.array([0.0, -math.pi]), np.array([self.r_max, math.pi]), np.array([False, True])
        return (np.array([0.0, 0.0, -math.pi]), np.array([self.r_max, math.pi, math.pi]),
                np.array([False, False, True]))

    def frame(self, x_c, vectors):
        """Origin ``p_0: (dim,)`` and frame ``F: (dim, dim)`` (rows: x-, y-, z-axis) for one node."""
        origin = x_c + vectors[0]
        second = vectors[2] - vectors[0] if self.dim == 3 else None
        return origin, orthonormal_frame(vectors[1] - vectors[0], second)

    def to_spherical(self, l):
        """Local Cartesian ``l: (dim,)`` -> coordinates ``(dim,)`` and ``log(volume element)``."""
        r = safe_norm(l)
        if self.dim == 2:
            return jnp.stack([r, _safe_atan2(l[1], l[0])]), jnp.log(r)
        rho = safe_norm(l[:2])  # r sin(theta)
        theta = jnp.arctan2(rho, l[2])
        phi = _safe_atan2(l[1], l[0])
        # r^2 sin(theta) = r * rho
        return jnp.stack([r, theta, phi]), jnp.log(r) + jnp.log(rho)

    def from_spherical(self, c):
        """Coordinates ``(dim,)`` -> local Cartesian ``(dim,)`` and ``log(volume element)``."""
        r = c[0]
        log_r = jnp.log(jnp.maximum(r, _TINY))
        if self.dim == 2:
            return r * jnp.stack([jnp.cos(c[1]), jnp.sin(c[1])]), log_r
        theta, phi = c[1], c[2]
        s = jnp.sin(theta)
        l = r * jnp.stack([s * jnp.cos(phi), s * jnp.sin(phi), jnp.cos(theta)])
        return l, 2.0 * log_r + jnp.log(jnp.maximum(s, _TINY))

    def transform(self, u, x_c, vectors, params, inverse):
        origin, frame = self.frame(x_c, vectors)
        c, log_vol_in = self.to_spherical(frame @ (u - origin))
        # One spline call for all coordinates, each on its own interval: r on [0, r_max],
        # (theta on [0, pi],) phi on [-pi, pi] with the circular spline.
        lo, hi, circular = self.intervals()
        c_new, ld = rqs(c, params.reshape(self.dim, -1), lo, hi, circular=circular, inverse=inverse)
        log_det = jnp.sum(ld)
        l_new, log_vol_out = self.from_spherical(c_new)
        return origin + frame.T @ l_new, log_det + log_vol_out - log_vol_in

    def aux_loss(self, vectors):
        if self.dim == 2:
            return jnp.zeros((), vectors.dtype)
        return collinearity_loss(vectors[1] - vectors[0], vectors[2] - vectors[0])
