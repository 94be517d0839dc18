"""DW4 / LJ13 energies: hand-computed values, invariances, coincident particles, jit/vmap/grad."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_debug_nans", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from eacf_lab.geometry import random_permutation, random_rotation  # noqa: E402
from eacf_lab.targets import DW4, LJ13, get  # noqa: E402


def dw_pair(d, a=0.0, b=-4.0, c=0.9, d0=4.0):
    u = d - d0
    return a * u + b * u**2 + c * u**4


def reference_energy(target, x):
    """Independent double loop in float64 (sum over i < j counts each pair once)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    e = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            d = np.linalg.norm(x[i] - x[j])
            if isinstance(target, DW4):
                e += dw_pair(d) / target.temperature
            else:
                e += ((1 / d) ** 12 - 2 * (1 / d) ** 6) / target.temperature
    if isinstance(target, LJ13):
        e += 0.5 * np.sum((x - x.mean(0)) ** 2)
    return e


def test_dw4_square_by_hand():
    # Square of side 4: four edges at d0 (zero), two diagonals at 4 sqrt(2).
    x = jnp.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    u = 4 * math.sqrt(2) - 4
    assert float(DW4().energy(x)) == pytest.approx(2 * (-4 * u**2 + 0.9 * u**4), rel=1e-5)
    assert float(DW4(temperature=2.0).energy(x)) == pytest.approx((-4 * u**2 + 0.9 * u**4), rel=1e-5)
    assert float(DW4().log_prob(x)) == pytest.approx(-float(DW4().energy(x)))


def test_lj_two_particles_by_hand():
    # Two particles at r_m: pair energy -1, harmonic 0.5 * (0.25 + 0.25) = 0.25.
    x = jnp.array([[0.0, 0.0, -0.5], [0.0, 0.0, 0.5]])
    assert float(LJ13(n_nodes=2).energy(x)) == pytest.approx(-0.75, rel=1e-6)
    # At d = 2^(-1/6) r_m the LJ term is (4 - 2*2) = 0.
    h = 2 ** (-1 / 6) / 2
    x = jnp.array([[0.0, -h, 0.0], [0.0, h, 0.0]])
    assert float(LJ13(n_nodes=2).energy(x)) == pytest.approx(0.5 * 2 * h**2, abs=1e-5)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_random_configurations_match_reference(name):
    t = get(name)
    rng = np.random.default_rng(0)
    for _ in range(3):
        # spread the points so the LJ energies stay O(1..100)
        x = rng.normal(size=(t.n_nodes, t.dim)) * (2.0 if name == "dw4" else 1.2)
        if name == "lj13":
            x = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:13] * 1.1
            x = x + 0.05 * rng.normal(size=x.shape)
        assert float(jax.jit(t.energy)(jnp.asarray(x, jnp.float32))) == pytest.approx(reference_energy(t, x), rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
@pytest.mark.parametrize("reflection", [False, True])
def test_invariances(name, reflection):
    t = get(name)
    key = jax.random.key(1)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    grid = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:13] * 1.1
    x = 2.0 * jax.random.normal(k1, (4, 2)) if name == "dw4" else jnp.asarray(grid) + 0.05 * jax.random.normal(k1, (13, 3))

    @jax.jit
    def both(x):
        rot = random_rotation(k2, t.dim, reflection=reflection)
        perm = random_permutation(k3, t.n_nodes)
        shift = 3.0 * jax.random.normal(k4, (1, t.dim))
        return t.energy(x), t.energy((x @ rot.T)[perm] + shift)

    e, e_moved = both(x)
    assert float(e_moved) == pytest.approx(float(e), rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_coincident_particles_finite(name):
    t = get(name)
    x = jnp.zeros((t.n_nodes, t.dim))
    value_and_grad = jax.jit(jax.value_and_grad(t.energy))
    e, g = value_and_grad(x)
    assert np.isfinite(float(e)) and np.all(np.isfinite(np.asarray(g)))
    n_pairs = t.n_nodes * (t.n_nodes - 1) / 2
    expected = n_pairs * float(t.pair_energy(jnp.asarray(t.d_min)))
    assert float(e) == pytest.approx(expected, rel=1e-4)
    if name == "lj13":
        assert float(e) > 1e13  # "finite and large"
    # Two particles on top of each other inside an otherwise sane configuration.
    x = jax.random.normal(jax.random.key(0), (t.n_nodes, t.dim)) * 2
    x = x.at[1].set(x[0])
    e, g = value_and_grad(x)
    assert np.isfinite(float(e)) and np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_jit_vmap_grad(name):
    t = get(name)
    xs = 1.5 * jax.random.normal(jax.random.key(2), (5, t.n_nodes, t.dim))
    energy = jax.jit(t.energy)
    e_loop = np.array([float(energy(x)) for x in xs])
    e_vmap = jax.jit(jax.vmap(t.energy))(xs)
    np.testing.assert_allclose(np.asarray(e_vmap), e_loop, rtol=1e-5)
    g = jax.jit(jax.vmap(jax.grad(t.log_prob)))(xs)
    assert g.shape == xs.shape
    # translation invariance => forces sum to zero; finite differences agree with the gradient
    np.testing.assert_allclose(np.asarray(g.sum(axis=1)), 0.0, atol=1e-2 * float(jnp.abs(g).max()) + 1e-4)
    x, v = xs[0].astype(jnp.float32), jax.random.normal(jax.random.key(3), xs[0].shape)
    h = 1e-3
    fd = (energy(x + h * v) - energy(x - h * v)) / (2 * h)
    assert float(jnp.sum(jax.jit(jax.grad(t.log_prob))(x) * v)) == pytest.approx(-float(fd), rel=2e-2, abs=1e-1)


@pytest.mark.parametrize("cls", [DW4, LJ13])
def test_shape_errors(cls):
    t = cls()
    with pytest.raises(ValueError, match=r"must be \(n_nodes, dim\)"):
        t.energy(jnp.zeros((t.n_nodes, t.dim + 1)))
    with pytest.raises(ValueError, match="vmap"):
        t.energy(jnp.zeros((2, t.n_nodes, t.dim)))
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature=0.0)


def test_names_and_registry():
    assert (DW4().name, DW4().n_nodes, DW4().dim) == ("dw4", 4, 2)
    assert (LJ13().name, LJ13().n_nodes, LJ13().dim) == ("lj13", 13, 3)
    with pytest.raises(ValueError, match="expected one of"):
        get("lj55")
