"""Equivariant reference frames built from the conditioner's reference vectors.

E-ACF (paper Sec. 3.3, App. B.3-B.4): an EGNN outputs equivariant vectors; from them we
build an orthonormal frame ``F`` (rows = axes).  Projecting ``w -> F w`` gives coordinates
that are *invariant* to rotations of the whole system, so any elementwise bijection applied
to them and projected back (``F^T``) is rotation-*equivariant*.

* 3D: Gram-Schmidt on two vectors, third axis by the cross product.  The cross product is
  a pseudo-vector: under a reflection the frame does not follow, so the resulting flows are
  SE(3)- but not E(3)-equivariant (the tests show this on purpose).
* 2D: the second axis is the first rotated by +90 degrees (again not reflection-equivariant).

Nothing is added to the vectors before Gram-Schmidt (the published code adds a small
identity, which breaks exact equivariance).  Degenerate (collinear or zero) vectors give a
degenerate but *finite* frame thanks to ``safe_norm``; the collinearity auxiliary loss
(``collinearity_loss``) keeps training away from them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from eacf_lab.geometry import safe_norm

__all__ = ["normalize", "orthonormal_frame", "collinearity_loss"]


def normalize(v: jax.Array) -> jax.Array:
    """``v / |v|`` for ``v: (dim,)``, finite (and tiny) for ``v = 0``."""
    return v / safe_norm(v, keepdims=True)


def orthonormal_frame(e1: jax.Array, e2: jax.Array | None = None) -> jax.Array:
    """Orthonormal frame ``F: (dim, dim)``, rows are the axes.

    Arguments:
        e1: ``(dim,)`` the first axis direction.
        e2: ``(3,)`` a second direction (3D only); its component along ``e1`` is removed
            (Gram-Schmidt) and the third axis is ``e1 x e2``.  Ignored in 2D.

    Returns ``F`` with ``F @ F.T = I`` (for non-degenerate input); ``det F = +1``.
    """
    dim = e1.shape[-1]
    a1 = normalize(e1)
    if dim == 2:
        return jnp.stack([a1, jnp.stack([-a1[1], a1[0]])])
    a2 = normalize(e2 - jnp.dot(e2, a1) * a1)
    # Second Gram-Schmidt pass ("twice is enough"): when e1 and e2 are nearly collinear one
    # pass leaves an O(eps / sin angle) overlap in float32; the second removes it, so F stays
    # orthonormal to round-off and the frame contributes exactly zero log-det.
    a2 = normalize(a2 - jnp.dot(a2, a1) * a1)
    a3 = jnp.cross(a1, a2)
    return jnp.stack([a1, a2, a3])


def collinearity_loss(u: jax.Array, v: jax.Array, max_abs_cos: float = 1.0 - 1e-6) -> jax.Array:
    """Log-barrier ``-log(1 - |cos angle(u, v)|)`` (paper App. B.5, "auxiliary loss").

    ``u, v: (dim,)`` -> scalar, zero for orthogonal vectors and large when they are
    (anti-)parallel.  ``|cos|`` is clipped before the log, so the loss is finite.
    """
    cos = jnp.dot(u, v) / (safe_norm(u) * safe_norm(v))
    return -jnp.log1p(-jnp.minimum(jnp.abs(cos), max_abs_cos))
