"""Geometry: zero-CoM Gaussian against reduced coordinates, Haar rotations, shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eacf_lab as el
from eacf_lab.geometry import safe_norm, zero_com_basis


@pytest.mark.parametrize("n,d", [(4, 2), (13, 3)])
def test_zero_com_gaussian_equals_standard_normal_in_reduced_coordinates(n, d):
    q = zero_com_basis(n, d)
    np.testing.assert_allclose(q.T @ q, np.eye((n - 1) * d), atol=1e-6)
    np.testing.assert_allclose(jnp.sum(q.reshape(n, d, -1), axis=0), 0.0, atol=1e-6)  # orthogonal to translations
    for k in jax.random.split(jax.random.key(0), 5):
        x = el.sample_zero_com_gaussian(k, n, d)
        c = q.T @ x.reshape(-1)  # (n-1)d reduced coordinates
        direct = -0.5 * jnp.sum(c**2) - 0.5 * c.size * math.log(2 * math.pi)
        np.testing.assert_allclose(el.zero_com_gaussian_log_prob(x), direct, rtol=1e-6)
        np.testing.assert_allclose(el.center_of_mass(x), 0.0, atol=1e-6)


def test_zero_com_gaussian_moments():
    """E|x|^2 = (n - 1) d for the Gaussian on the hyperplane (not n d)."""
    n, d = 5, 3
    xs = jax.vmap(lambda k: el.sample_zero_com_gaussian(k, n, d))(jax.random.split(jax.random.key(1), 20000))
    sq = jnp.sum(xs**2, axis=(1, 2))
    assert abs(float(sq.mean()) - (n - 1) * d) < 4 * float(sq.std()) / math.sqrt(20000)


def test_aug_gaussian_log_prob_direct_formula():
    x = el.remove_com(jax.random.normal(jax.random.key(0), (4, 2)))
    a = x[None] + 0.1 * jax.random.normal(jax.random.key(1), (3, 4, 2))
    eta = 0.1
    direct = sum(
        -0.5 * ((a[i, j, k] - x[j, k]) / eta) ** 2 - math.log(eta) - 0.5 * math.log(2 * math.pi)
        for i in range(3) for j in range(4) for k in range(2)
    )
    np.testing.assert_allclose(el.aug_gaussian_log_prob(a, x, eta), direct, rtol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_random_rotation_is_haar(dim):
    rs = jax.vmap(lambda k: el.random_rotation(k, dim))(jax.random.split(jax.random.key(0), 20000))
    np.testing.assert_allclose(jnp.einsum("bij,bkj->bik", rs, rs), np.broadcast_to(np.eye(dim), rs.shape), atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.det(rs), 1.0, atol=1e-5)
    # Haar moments: E[tr R] = 0; E[(tr R)^2] = 1 on SO(3), and 2 on SO(2) (tr R = 2 cos t, t uniform).
    tr = jnp.trace(rs, axis1=1, axis2=2)
    se = 4 / math.sqrt(20000)
    assert abs(float(tr.mean())) < 2 * se
    assert abs(float((tr**2).mean()) - (1.0 if dim == 3 else 2.0)) < 3 * se * 2


def test_euler_angles_would_fail_the_haar_test():
    """The published code's two uniform Euler angles are not Haar: E[(tr R)^2] is off."""
    k1, k2 = jax.random.split(jax.random.key(3))
    a = jax.random.uniform(k1, (20000,), minval=0, maxval=2 * math.pi)
    b = jax.random.uniform(k2, (20000,), minval=0, maxval=math.pi)
    tr = jnp.cos(a) + jnp.cos(b) + jnp.cos(a) * jnp.cos(b)  # tr(Rz(a) Ry(b))
    assert abs(float((tr**2).mean()) - 1.0) > 0.1


def test_reflection_has_negative_determinant():
    for k in jax.random.split(jax.random.key(0), 10):
        r = el.random_rotation(k, 3, reflection=True)
        np.testing.assert_allclose(jnp.linalg.det(r), -1.0, atol=1e-5)
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        el.random_rotation(jax.random.key(0), 4)


def test_random_permutation():
    p = np.asarray(el.random_permutation(jax.random.key(0), 13))
    assert sorted(p.tolist()) == list(range(13))


def test_safe_norm_zero_vector_has_finite_gradient_and_tiny_norm():
    g = jax.grad(lambda v: safe_norm(v))(jnp.zeros(3))
    assert np.all(np.isfinite(g))
    assert float(safe_norm(jnp.zeros(3))) < 1e-5  # never a "norm of 1"
    np.testing.assert_allclose(safe_norm(jnp.array([3.0, 4.0])), 5.0)
