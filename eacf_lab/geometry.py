"""Geometry of point clouds: centre of mass, zero-CoM Gaussians, group actions.

Paper: Midgley et al., "SE(3) Equivariant Augmented Coupling Flows", NeurIPS 2023
(arXiv 2308.10364), Sec. 3.1 and App. B.1.

A configuration ``x`` of ``n_nodes`` points in ``dim`` dimensions is an array of shape
``(n_nodes, dim)``.  Densities that are invariant to translations cannot be normalised on
``R^{n d}``, so observations live on the *zero centre-of-mass hyperplane*
``H = {x : sum_i x_i = 0}`` of dimension ``(n - 1) d``.  Every function here acts on one
example; use ``jax.vmap`` for batches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "center_of_mass",
    "remove_com",
    "zero_com_gaussian_log_prob",
    "sample_zero_com_gaussian",
    "aug_gaussian_log_prob",
    "sample_aug_gaussian",
    "random_rotation",
    "random_permutation",
    "safe_norm",
    "zero_com_basis",
]


def center_of_mass(x: jax.Array) -> jax.Array:
    """Mean over nodes.  ``x: (..., n_nodes, dim)`` -> ``(..., dim)``."""
    return jnp.mean(x, axis=-2)


def remove_com(x: jax.Array) -> jax.Array:
    """Project onto the zero-CoM hyperplane: ``x - mean_i x_i``.  Shape is kept."""
    return x - jnp.mean(x, axis=-2, keepdims=True)


def zero_com_gaussian_log_prob(x: jax.Array) -> jax.Array:
    """Log density of the standard Gaussian restricted to the zero-CoM hyperplane.

    ``log q0(x) = -|x|^2 / 2 - (n - 1) d / 2 * log(2 pi)`` for ``x: (n_nodes, dim)`` with
    zero CoM.  This is the density of ``(n-1) d`` independent standard normals written in
    an orthonormal basis of the hyperplane (the Lebesgue measure *on* the hyperplane), which
    is the measure all log-determinants in this kit are taken against.  The CoM of ``x`` is
    removed first, so a tiny numerical offset does not leak into the density.
    """
    n, d = x.shape[-2:]
    x = remove_com(x)
    return -0.5 * jnp.sum(x**2, axis=(-2, -1)) - 0.5 * (n - 1) * d * math.log(2 * math.pi)


def sample_zero_com_gaussian(key: jax.Array, n_nodes: int, dim: int, dtype=None) -> jax.Array:
    """Sample ``x ~ q0``: a standard normal ``(n_nodes, dim)`` minus its mean over nodes.

    Subtracting the mean is the orthogonal projection onto the hyperplane, and the
    projection of an isotropic Gaussian is the isotropic Gaussian on the hyperplane.
    """
    dtype = dtype or jnp.zeros(()).dtype
    return remove_com(jax.random.normal(key, (n_nodes, dim), dtype=dtype))


def aug_gaussian_log_prob(a: jax.Array, x: jax.Array, eta: float) -> jax.Array:
    """``log pi(a | x) = sum_i log N(a_i; x, eta^2 I)`` over all ``n d`` coordinates.

    ``a: (n_aug, n_nodes, dim)``, ``x: (n_nodes, dim)`` -> scalar.  The augmented variables
    are *not* zero-CoM: each ``a_i`` has the full ``n d`` degrees of freedom (paper Sec. 3.2).
    """
    k, n, d = a.shape
    diff = (a - x[None]) / eta
    return -0.5 * jnp.sum(diff**2) - k * n * d * (math.log(eta) + 0.5 * math.log(2 * math.pi))


def sample_aug_gaussian(key: jax.Array, x: jax.Array, n_aug: int, eta: float) -> jax.Array:
    """Sample ``a ~ pi(. | x)``: ``a_i = x + eta * eps_i``.  Returns ``(n_aug, n_nodes, dim)``."""
    eps = jax.random.normal(key, (n_aug,) + x.shape, dtype=x.dtype)
    return x[None] + eta * eps


def random_rotation(key: jax.Array, dim: int, reflection: bool = False, dtype=None) -> jax.Array:
    """A Haar-uniform random rotation matrix ``R: (dim, dim)``.

    QR decomposition of a standard Gaussian matrix with the sign fix
    ``Q <- Q diag(sign(diag(R)))`` gives a Haar-uniform orthogonal matrix (Mezzadri 2007).
    We then fix the determinant: with ``reflection=False`` the result is Haar-uniform on
    SO(dim) (det = +1); with ``reflection=True`` it is Haar-uniform on the other coset,
    the improper rotations (det = -1), so a test can be sure it applied a reflection.
    (Two uniform Euler angles, as in the published code, are *not* Haar-uniform.)
    Apply it to a configuration as ``x @ R.T``.
    """
    if dim not in (2, 3):
        raise ValueError(f"random_rotation: dim must be 2 or 3, got {dim}")
    dtype = dtype or jnp.zeros(()).dtype
    g = jax.random.normal(key, (dim, dim), dtype=dtype)
    q, r = jnp.linalg.qr(g)
    q = q * jnp.sign(jnp.diag(r))[None, :]
    target = -1.0 if reflection else 1.0
    flip = jnp.where(jnp.linalg.det(q) * target < 0, -1.0, 1.0).astype(dtype)
    return q.at[:, 0].multiply(flip)


def random_permutation(key: jax.Array, n_nodes: int) -> jax.Array:
    """A uniformly random permutation of ``range(n_nodes)``; apply as ``x[perm]``."""
    return jax.random.permutation(key, n_nodes)


def safe_norm(v: jax.Array, axis: int = -1, keepdims: bool = False, eps: float = 1e-30) -> jax.Array:
    """Euclidean norm with finite gradients at zero (the double-``where`` trick).

    For ``|v|^2 > eps`` this is exactly ``|v|``; below, it returns ``sqrt(eps)`` with zero
    gradient.  A zero vector therefore has a tiny norm, never the "norm of 1" that the
    published code returns (which silently turns a degenerate frame into a zero matrix).
    ``eps`` is far below any vector the flow meets (float32 resolves squared norms down to
    ~1e-38), so ``v / safe_norm(v)`` is an exact unit vector for every non-zero ``v`` and
    frames stay orthonormal even when the reference vectors are tiny.
    """
    sq = jnp.sum(v**2, axis=axis, keepdims=keepdims)
    ok = sq > eps
    safe_sq = jnp.where(ok, sq, 1.0)
    return jnp.where(ok, jnp.sqrt(safe_sq), math.sqrt(eps))


def zero_com_basis(n_nodes: int, dim: int, dtype=None):
    """Orthonormal basis ``Q: (n_nodes * dim, (n_nodes - 1) * dim)`` of the zero-CoM hyperplane.

    Columns are orthonormal and orthogonal to every uniform translation, so
    ``x.reshape(-1) = Q @ c`` with ``c = Q.T @ x.reshape(-1)`` for zero-CoM ``x``.  Used to
    compute Jacobians "in coordinates of the hyperplane" (tests and notebook 01).
    """
    import numpy as np

    # Helmert-like basis on the node axis, tensored with the identity on dims.
    h = np.zeros((n_nodes, n_nodes - 1))
    for j in range(1, n_nodes):
        h[:j, j - 1] = 1.0 / math.sqrt(j * (j + 1))
        h[j, j - 1] = -j / math.sqrt(j * (j + 1))
    q = np.kron(h, np.eye(dim))
    return jnp.asarray(q, dtype=dtype or jnp.zeros(()).dtype)
