"""No projection (the Non-E-ACF baseline, paper Sec. 4): the inner bijection acts directly
on the Cartesian coordinates of ``u - x_c``.

``u' = x_c + g(u - x_c)`` elementwise, ``log|det| = sum_k log g'``.  Subtracting the
conditioning node keeps translation equivariance, and a permutation-equivariant
conditioner keeps permutation equivariance, but nothing makes it rotation-equivariant:
the notebooks use it to show a symmetry check failing.
"""

from __future__ import annotations

import equinox as eqx

from eacf_lab.projections.base import Projection, inner_elementwise, n_inner_params

__all__ = ["NoProjection"]


class NoProjection(Projection):
    """Elementwise transform in the global frame; see the module docstring."""

    dim: int = eqx.field(static=True)
    inner: str = eqx.field(static=True, default="affine")
    n_bins: int = eqx.field(static=True, default=8)
    r_max: float = eqx.field(static=True, default=10.0)

    @property
    def n_vectors(self) -> int:
        return 0

    @property
    def n_params(self) -> int:
        return self.dim * n_inner_params(self.inner, self.n_bins)

    def transform(self, u, x_c, vectors, params, inverse):
        l, log_det = inner_elementwise(u - x_c, params, self.inner, self.r_max, inverse=inverse)
        return x_c + l, log_det
