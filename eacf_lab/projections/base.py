"""The interface every projection implements (paper Sec. 3.3, "projection" step).

A projection transforms **one point** ``u: (dim,)`` of the array being transformed, given

* ``x_c: (dim,)`` the same node's position in the conditioning array (the origin anchor),
* ``vectors: (n_vectors, dim)`` equivariant reference vectors from the conditioner,
* ``params: (n_params,)`` invariant parameters of the inner (elementwise) bijection,

as *project into an invariant frame -> inner bijection -> project back*.  It returns the
new point and ``log|det d u'/d u|``.  Projections hold no arrays, only static settings;
couplings ``vmap`` them over nodes and arrays.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["Projection"]


class Projection(eqx.Module):
    """Abstract base: ``forward``/``inverse`` for one point, plus the auxiliary loss."""

    dim: eqx.AbstractVar[int]

    @property
    @abc.abstractmethod
    def n_vectors(self) -> int:
        """Number of reference vectors the conditioner must provide per node."""

    @property
    @abc.abstractmethod
    def n_params(self) -> int:
        """Number of inner-bijection parameters per node."""

    @abc.abstractmethod
    def transform(self, u, x_c, vectors, params, inverse: bool) -> tuple[jax.Array, jax.Array]:
        """The map (``inverse=False``) or its inverse, with the log-det of whichever is applied."""

    def forward(self, u, x_c, vectors, params) -> tuple[jax.Array, jax.Array]:
        """``u: (dim,) -> (u': (dim,), log_det: ())``."""
        return self.transform(u, x_c, vectors, params, inverse=False)

    def inverse(self, u, x_c, vectors, params) -> tuple[jax.Array, jax.Array]:
        """Inverse of ``forward``; returns the log-det of the inverse map."""
        return self.transform(u, x_c, vectors, params, inverse=True)

    def aux_loss(self, vectors: jax.Array) -> jax.Array:
        """Collinearity penalty on ``vectors: (n_vectors, dim)`` (0 unless overridden)."""
        return jnp.zeros((), vectors.dtype)


def inner_elementwise(
    l: jax.Array, params: jax.Array, kind: str, half_width: float, *, inverse: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Inner bijection on Cartesian coordinates ``l: (dim,)``, used by Cartesian-proj and
    the Non-E-ACF.  ``kind="affine"``: ``params: (dim * 2,)``; ``kind="spline"``: an RQS on
    ``[-half_width, half_width]`` per coordinate, ``params: (dim * (3 n_bins + 1),)``.
    Returns ``(l', sum of elementwise log-dets)``.
    """
    from eacf_lab.splines import affine, rqs

    p = params.reshape(l.shape[0], -1)
    if kind == "affine":
        y, ld = affine(l, p, inverse=inverse)
    else:
        y, ld = rqs(l, p, -half_width, half_width, inverse=inverse)
    return y, jnp.sum(ld)


def n_inner_params(kind: str, n_bins: int) -> int:
    """Parameters per coordinate of ``inner_elementwise``."""
    from eacf_lab.splines import N_AFFINE_PARAMS, n_spline_params

    if kind not in ("affine", "spline"):
        raise ValueError(f"inner transform must be 'affine' or 'spline', got {kind!r}")
    return N_AFFINE_PARAMS if kind == "affine" else n_spline_params(n_bins)
