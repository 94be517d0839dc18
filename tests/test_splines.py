"""The rational-quadratic spline (``eacf_lab.splines``): against distrax's implementation of the
same parameterisation, against autodiff, round trips, several intervals in one call, the
circular boundary, the linear tails, and finite gradients everywhere (jax_debug_nans is on)."""

import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eacf_lab.splines import affine, n_spline_params, rqs, rqs_knots

INTERVALS = [(0.0, 10.0, False), (0.0, math.pi, False), (-math.pi, math.pi, True), (-3.0, 3.0, False)]


def _points(lo, hi, key, n=400):
    """Inside, outside and exactly on the interval's edges."""
    span = hi - lo
    x = jax.random.uniform(key, (n,), minval=lo - 0.3 * span, maxval=hi + 0.3 * span)
    return x.at[:4].set(jnp.array([lo, hi, lo + 1e-3 * span, hi - 1e-3 * span]))


def _agreement(dtype, tol, tol_log_det):
    n_bins = 8
    for i, (lo, hi, circular) in enumerate(INTERVALS):
        params = 1.5 * jax.random.normal(jax.random.key(i), (400, n_spline_params(n_bins)), dtype)
        x = _points(lo, hi, jax.random.key(10 + i)).astype(dtype)
        ref = distrax.RationalQuadraticSpline(params, lo, hi, boundary_slopes="circular" if circular else "unconstrained")
        for inverse in (False, True):
            y_ref, ld_ref = (ref.inverse_and_log_det if inverse else ref.forward_and_log_det)(x)
            y, ld = rqs(x, params, lo, hi, circular=circular, inverse=inverse)
            np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * (hi - lo))
            np.testing.assert_allclose(ld, ld_ref, rtol=tol_log_det, atol=tol_log_det)


def test_agrees_with_distrax():
    """Same parameterisation as ``distrax.RationalQuadraticSpline`` (which the shipped
    checkpoints were trained with): values and log-dets agree, forward and inverse.  In float32
    both are ~1e-4 off the float64 truth in log-det (the parameter processing rounds), so the
    tight comparison is the float64 one."""
    _agreement(jnp.float32, 2e-5, 1e-3)


@pytest.mark.x64
def test_agrees_with_distrax_float64():
    _agreement(jnp.float64, 1e-11, 1e-10)


def test_zero_parameters_are_the_identity_everywhere():
    x = jnp.linspace(-15.0, 15.0, 301)
    for inverse in (False, True):
        y, ld = rqs(x, jnp.zeros(n_spline_params(5)), 0.0, 10.0, inverse=inverse)
        np.testing.assert_allclose(y, x, atol=1e-5)
        np.testing.assert_allclose(ld, 0.0, atol=1e-5)


@pytest.mark.parametrize("lo, hi, circular", INTERVALS)
def test_round_trip_log_det_and_monotone(lo, hi, circular):
    params = jax.random.normal(jax.random.key(3), (n_spline_params(6),))
    x = jnp.sort(_points(lo, hi, jax.random.key(4)))
    y, ld = rqs(x, params, lo, hi, circular=circular)
    back, ld_inv = rqs(y, params, lo, hi, circular=circular, inverse=True)
    np.testing.assert_allclose(back, x, atol=2e-5 * (hi - lo))
    np.testing.assert_allclose(ld_inv, -ld, atol=1e-4)
    assert np.all(np.diff(np.asarray(y)) >= 0) and np.all(np.isfinite(ld))
    # log|dy/dx| against autodiff, inside and on both tails
    slope = jax.vmap(jax.grad(lambda v: rqs(v, params, lo, hi, circular=circular)[0]))(x)
    np.testing.assert_allclose(jnp.log(slope), ld, atol=1e-4)
    # the interval's ends are fixed points
    ends, _ = rqs(jnp.array([lo, hi]), params, lo, hi, circular=circular)
    np.testing.assert_allclose(ends, [lo, hi], atol=1e-5 * (hi - lo))
    assert abs(float(jnp.mean(ld))) > 1e-3  # not the identity


def test_circular_spline_is_c1_on_the_circle():
    params = jax.random.normal(jax.random.key(5), (n_spline_params(8),))
    d = jax.grad(lambda v: rqs(v, params, -math.pi, math.pi, circular=True)[0])
    assert float(d(-math.pi + 1e-4)) == pytest.approx(float(d(math.pi - 1e-4)), rel=1e-2)
    d_free = jax.grad(lambda v: rqs(v, params, -math.pi, math.pi)[0])
    assert abs(float(d_free(-math.pi + 1e-4)) - float(d_free(math.pi - 1e-4))) > 1e-2  # untied: they differ


def test_several_intervals_in_one_call_equal_separate_calls():
    """What Spherical-proj does: (r, theta, phi) in one call, each with its own interval."""
    lo, hi, circular = (np.array(v) for v in zip(*INTERVALS[:3]))
    params = jax.random.normal(jax.random.key(6), (3, n_spline_params(8)))
    c = jnp.array([2.5, 1.0, -2.0])
    for inverse in (False, True):
        y, ld = rqs(c, params, lo, hi, circular=circular, inverse=inverse)
        for i in range(3):
            yi, ldi = rqs(c[i], params[i], float(lo[i]), float(hi[i]), circular=bool(circular[i]), inverse=inverse)
            np.testing.assert_allclose([y[i], ld[i]], [yi, ldi], rtol=1e-6, atol=1e-6)


def test_gradients_are_finite_inside_outside_and_on_the_edges():
    """The interior formula is evaluated for tail points too (then discarded by where): it must
    stay finite there, or its gradient would be NaN (jax_debug_nans would raise here)."""
    params = 2.0 * jax.random.normal(jax.random.key(7), (n_spline_params(8),))
    x = _points(0.0, 10.0, jax.random.key(8))
    for inverse in (False, True):
        g = jax.grad(lambda p: jnp.sum(jnp.stack(rqs(x, p, 0.0, 10.0, inverse=inverse))))(params)
        assert np.all(np.isfinite(g))


def test_knots_and_bad_parameters():
    params = jax.random.normal(jax.random.key(9), (n_spline_params(4),))
    xk, yk, sk = rqs_knots(params, -1.0, 2.0, circular=True)
    np.testing.assert_allclose([xk[0], xk[-1], yk[0], yk[-1]], [-1.0, 2.0, -1.0, 2.0], atol=1e-6)
    assert np.all(np.diff(xk) >= 1e-4 * 0.99) and np.all(sk > 0) and sk[0] == sk[-1]
    y, _ = rqs(xk, params, -1.0, 2.0, circular=True)
    np.testing.assert_allclose(y, yk, atol=1e-5)  # the curve passes through its knots
    with pytest.raises(ValueError, match="3 \\* n_bins \\+ 1"):
        rqs(jnp.zeros(3), jnp.zeros((3, 12)), 0.0, 1.0)


def test_affine_identity_and_inverse():
    x = jnp.linspace(-2.0, 2.0, 7)
    y, ld = affine(x, jnp.zeros((7, 2)))
    np.testing.assert_allclose(y, x) and np.testing.assert_allclose(ld, 0.0, atol=1e-7)
    p = jnp.stack([jnp.full(7, 0.7), jnp.full(7, -0.3)], axis=-1)
    y, ld = affine(x, p)
    back, ld_inv = affine(y, p, inverse=True)
    np.testing.assert_allclose(back, x, atol=1e-6)
    np.testing.assert_allclose(ld_inv, -ld)
    np.testing.assert_allclose(jnp.exp(ld), jax.vmap(jax.grad(lambda v, q: affine(v, q)[0]))(x, p), rtol=1e-6)
