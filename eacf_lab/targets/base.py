"""Shared pieces of the pairwise-distance targets (DW4, LJ13).

Both energies are sums over ordered pairs ``i != j`` of a function of the distance
``d_ij = |x_i - x_j|`` (Köhler, Klein & Noé, "Equivariant Flows", ICML 2020, Sec. 6),
so they are invariant to translations, rotations, reflections and permutations.

The distance is where NaNs come from: ``d/dx |x|`` is undefined at ``x = 0`` (coincident
particles, and always on the diagonal ``i == j``).  ``pair_distances`` therefore clamps
the distance from below with the *double-where* trick: where ``|x_i - x_j| <= d_min`` it
returns exactly ``d_min`` with zero gradient, and the ``sqrt`` is never evaluated at 0,
so values *and* gradients stay finite (never the "norm of 1" of the published code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["check_shape", "pair_distances", "off_diagonal_sum"]


def check_shape(x: jax.Array, n_nodes: int, dim: int, name: str) -> None:
    """Raise a one-line ``ValueError`` unless ``x.shape == (n_nodes, dim)``."""
    if tuple(x.shape) != (n_nodes, dim):
        raise ValueError(
            f"{name}: x must be (n_nodes, dim) = ({n_nodes}, {dim}) for one example "
            f"(use jax.vmap for batches), got {tuple(x.shape)}"
        )


def pair_distances(x: jax.Array, d_min: float) -> jax.Array:
    """All pair distances, clamped from below at ``d_min > 0``.

    Arguments:
        x: ``(n_nodes, dim)`` positions.
        d_min: smallest distance returned; pairs closer than that (and the diagonal)
            read as ``d_min`` with zero gradient.

    Returns:
        ``(n_nodes, n_nodes)`` matrix ``d_ij``; the diagonal holds ``d_min``.
    """
    diff = x[:, None, :] - x[None, :, :]
    sq = jnp.sum(diff**2, axis=-1)
    ok = sq > d_min**2
    safe_sq = jnp.where(ok, sq, 1.0)  # first where: sqrt never sees 0
    return jnp.where(ok, jnp.sqrt(safe_sq), d_min)  # second where: clamp


def off_diagonal_sum(m: jax.Array) -> jax.Array:
    """``sum_{i != j} m_ij`` for a square ``(n, n)`` matrix (the diagonal is masked out)."""
    n = m.shape[0]
    mask = ~jnp.eye(n, dtype=bool)
    return jnp.sum(jnp.where(mask, m, 0.0))
