"""Cartesian-proj: the inner bijection acts on coordinates in a learned frame (App. B.3).

Origin ``o = x_c + v_0``; frame ``F`` from ``v_1`` (and ``v_2`` in 3D) by Gram-Schmidt,
third axis by the cross product (2D: the first axis rotated by 90 degrees).  For a point
``u``: ``l = F (u - o)``, ``l' = g(l)`` elementwise, ``u' = o + F^T l'``.  ``F`` is
orthonormal and the origin a translation, so

    log|det du'/du| = sum_k log g'(l_k)          (the frame contributes zero).

Inner ``g``: affine (default, as in the paper) or an RQS on ``[-r_max, r_max]``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from eacf_lab.projections.base import Projection, inner_elementwise, n_inner_params
from eacf_lab.projections.frames import collinearity_loss, orthonormal_frame

__all__ = ["CartesianProjection"]


class CartesianProjection(Projection):
    """Cartesian-proj for one point; see the module docstring."""

    dim: int = eqx.field(static=True)
    inner: str = eqx.field(static=True, default="affine")
    n_bins: int = eqx.field(static=True, default=8)
    r_max: float = eqx.field(static=True, default=10.0)

    @property
    def n_vectors(self) -> int:
        return self.dim  # origin + (dim - 1) axis vectors

    @property
    def n_params(self) -> int:
        return self.dim * n_inner_params(self.inner, self.n_bins)

    def frame(self, x_c, vectors):
        """Origin ``o: (dim,)`` and frame ``F: (dim, dim)`` (rows are the axes) for one node."""
        second = vectors[2] if self.dim == 3 else None
        return x_c + vectors[0], orthonormal_frame(vectors[1], second)

    def transform(self, u, x_c, vectors, params, inverse):
        origin, frame = self.frame(x_c, vectors)
        l, log_det = inner_elementwise(frame @ (u - origin), params, self.inner, self.r_max, inverse=inverse)
        return origin + frame.T @ l, log_det

    def aux_loss(self, vectors):
        if self.dim == 2:
            return jnp.zeros((), vectors.dtype)
        return collinearity_loss(vectors[1], vectors[2])
