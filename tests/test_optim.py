"""Tests for the robust optimizer of App. C.1 (eacf_lab.train.optim)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eacf_lab.train import (
    mask_bad_examples,
    robust_adam,
    skip_and_clip_by_norm_window,
    warmup_cosine_schedule,
)

PARAMS = {"w": jnp.arange(6.0).reshape(2, 3) / 10, "b": jnp.ones(3)}
ADAM = robust_adam(1e-2)
ADAM_UPDATE = jax.jit(ADAM.update)  # shared: compiled once for the whole file


@jax.jit
def _grads(seed, norm=1.0):
    """A gradient pytree with the given global norm."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    g = {"w": jax.random.normal(k1, (2, 3)), "b": jax.random.normal(k2, (3,))}
    return jax.tree.map(lambda x: x * norm / optax.tree.norm(g), g)


def _warm_up(opt, update, n=10):
    """Run n unit-norm steps so the window median is 1."""
    params, state = PARAMS, opt.init(PARAMS)
    for i in range(n):
        upd, state = update(_grads(i), state, params)
        params = optax.apply_updates(params, upd)
    return params, state


def _assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("kind", ["nan", "inf", "exploding"])
def test_bad_step_is_skipped_and_state_frozen(kind):
    params, state = _warm_up(ADAM, ADAM_UPDATE)
    assert int(state.n_skipped) == 0 and np.isclose(float(state.last_median), 1.0)
    with jax.debug_nans(False):  # NaN gradients are the point of this test
        bad = _grads(99, {"nan": np.nan, "inf": np.inf, "exploding": 1000.0}[kind])
        upd, new_state = ADAM_UPDATE(bad, state, params)
    new_params = optax.apply_updates(params, upd)
    _assert_tree_equal(new_params, params)
    _assert_tree_equal(new_state.inner_state, state.inner_state)  # Adam moments and count
    if kind == "exploding":  # a finite norm is recorded, skipped or not (no lock-up: below)
        assert int(new_state.n_filled) == int(state.n_filled) + 1
        np.testing.assert_allclose(float(new_state.norms[state.index]), 1000.0, rtol=1e-5)
    else:  # a non-finite one never
        _assert_tree_equal(new_state.norms, state.norms)
        assert int(new_state.n_filled) == int(state.n_filled)
    assert int(new_state.n_skipped) == 1 and bool(new_state.last_skipped)
    # The next normal step proceeds as if the bad one had never happened.
    g = _grads(100)
    u1, _ = ADAM_UPDATE(g, new_state, params)
    u2, _ = ADAM_UPDATE(g, state, params)
    _assert_tree_equal(u1, u2)


def test_lasting_rise_of_the_norm_is_followed_not_skipped_for_ever():
    # Norms jump from 1 to 100 (> 20x the median) and stay there, as when training leaves a
    # plateau. Skipped norms enter the window, so the median catches up and steps resume; a
    # window of accepted norms only would skip every step from here on.
    opt = skip_and_clip_by_norm_window(window=8, inner=None)
    update = jax.jit(opt.update)
    _, state = _warm_up(opt, update)  # window: eight norms of 1
    skipped = []
    for i in range(12):
        upd, state = update(_grads(200 + i, 100.0), state, PARAMS)
        skipped.append(bool(state.last_skipped))
    # The median of eight slots passes 100 / 20 once five of them hold 100: four skips, then steps.
    assert skipped == [True] * 4 + [False] * 8, skipped
    np.testing.assert_allclose(float(optax.tree.norm(upd)), 100.0, rtol=1e-5)  # median 100: no clip
    assert int(state.n_skipped) == 4


def test_nan_is_skipped_before_history():
    state = ADAM.init(PARAMS)
    with jax.debug_nans(False):
        upd, state = ADAM_UPDATE(_grads(0, np.nan), state, PARAMS)
    assert int(state.n_skipped) == 1
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(upd))
    # A huge but finite first gradient is accepted: no median to compare with yet.
    upd, state = ADAM_UPDATE(_grads(1, 1e6), state, PARAMS)
    assert int(state.n_skipped) == 1 and int(state.n_filled) == 1


def test_moderate_gradient_is_clipped_to_clip_factor_times_median():
    # Identity inner: the update IS the gradient that would enter Adam.
    opt = skip_and_clip_by_norm_window(inner=None)
    update = jax.jit(opt.update)
    _, state = _warm_up(opt, update)
    upd, state = update(_grads(50, 8.0), state, PARAMS)
    np.testing.assert_allclose(float(optax.tree.norm(upd)), 5.0, rtol=1e-6)
    assert int(state.n_clipped) == 1 and int(state.n_skipped) == 0
    # Inside Adam: the first moment moves by (1 - b1) * clipped gradient.
    params, s0 = _warm_up(ADAM, ADAM_UPDATE)
    _, s1 = ADAM_UPDATE(_grads(50, 8.0), s0, params)
    mu0, mu1 = s0.inner_state[0].mu, s1.inner_state[0].mu
    entered = jax.tree.map(lambda a, b: (b - 0.9 * a) / 0.1, mu0, mu1)
    np.testing.assert_allclose(float(optax.tree.norm(entered)), 5.0, rtol=1e-4)


def test_normal_steps_equal_plain_adam_exactly():
    sched = warmup_cosine_schedule(12, warmup_steps=3)
    ours, ref = robust_adam(sched), optax.adam(sched)
    p1 = p2 = PARAMS
    s1, s2 = ours.init(PARAMS), ref.init(PARAMS)
    for i in range(10):  # the median rules are active from step 5 on
        g = _grads(i, 1.0 + 0.3 * np.sin(i))  # within 5x of the median: no rule fires
        # Eager, op by op: bit-exact. (Under jit XLA fuses the two graphs differently,
        # so the results then agree only to the last ulp.)
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = ref.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    _assert_tree_equal(p1, p2)
    _assert_tree_equal(s1.inner_state[0], s2[0])
    assert int(s1.n_skipped) == 0 and int(s1.n_clipped) == 0


def test_jit_and_scan():
    opt = robust_adam(1e-2, window=8)
    gs = jnp.stack([jnp.full(3, 1.0 + 0.1 * i) for i in range(12)])
    gs = gs.at[7].set(jnp.inf).at[9].set(1e4)  # two steps to skip

    def step(carry, g):
        params, state = carry
        upd, state = opt.update(g, state, params)
        return (optax.apply_updates(params, upd), state), state.last_skipped

    p0 = jnp.zeros(3)
    with jax.debug_nans(False):
        (params, state), skipped = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), gs))(p0, opt.init(p0))
    assert skipped.tolist() == [i in (7, 9) for i in range(12)]
    assert int(state.n_skipped) == 2 and int(state.n_filled) == 8
    assert bool(jnp.all(jnp.isfinite(params)))


def test_schedule_endpoints_and_checks():
    s = warmup_cosine_schedule(1000, warmup_steps=300)
    np.testing.assert_allclose([float(s(0)), float(s(300)), float(s(1000))], [2e-5, 2e-4, 2e-5], rtol=1e-6)
    assert float(s(150)) == pytest.approx(1.1e-4, rel=1e-5)  # linear warmup midpoint
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(100, warmup_steps=100)
    with pytest.raises(ValueError, match="peak_lr"):
        warmup_cosine_schedule(100, warmup_steps=10, peak_lr=float("nan"))
    with pytest.raises(ValueError, match="clip_factor"):
        skip_and_clip_by_norm_window(skip_factor=2.0, clip_factor=5.0)


def test_mask_bad_examples_finite_gradient():
    energy = np.array([1.0, np.nan, 2.0, np.inf, 1e9], np.float32)  # e.g. target energies

    def loss(theta, fn):
        per_example = theta**2 * jnp.arange(1.0, 6.0) + energy
        return fn(per_example)

    masked = lambda l: mask_bad_examples(l, max_loss=1e6)[0]
    with jax.debug_nans(False):  # NaN losses are the point of this test
        naive = loss(1.5, jnp.mean)
        grad = jax.jit(jax.grad(loss), static_argnums=1)(1.5, masked)
        mean, n_masked = mask_bad_examples(1.5**2 * jnp.arange(1.0, 6.0) + energy, max_loss=1e6)
    assert not np.isfinite(float(naive))  # the plain mean is NaN: one bad example spoils it
    assert int(n_masked) == 3
    kept = np.array([1.0, 3.0])  # coefficients of examples 0 and 2
    np.testing.assert_allclose(float(mean), np.mean(2.25 * kept + np.array([1.0, 2.0])), rtol=1e-6)
    np.testing.assert_allclose(float(grad), np.mean(2 * 1.5 * kept), rtol=1e-6)
    # All masked: mean 0 with zero gradient, not NaN.
    with jax.debug_nans(False):
        g = jax.grad(lambda l: mask_bad_examples(l)[0])(np.array([np.nan, np.inf], np.float32))
    assert np.all(np.asarray(g) == 0)
    with pytest.raises(ValueError, match="1-D"):
        mask_bad_examples(jnp.ones((2, 2)))
