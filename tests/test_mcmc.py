"""MALA / HMC / parallel tempering reproduce known distributions; tau_int matches AR(1) theory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_debug_nans", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from eacf_lab.mcmc import integrated_autocorr_time, run_chains  # noqa: E402


def ar1(rho, n_steps, n_chains, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((n_steps, n_chains))
    x[0] = rng.normal(size=n_chains) / np.sqrt(1 - rho**2)  # start in equilibrium
    eps = rng.normal(size=(n_steps, n_chains))
    for t in range(1, n_steps):
        x[t] = rho * x[t - 1] + eps[t]
    return x


@pytest.mark.parametrize("rho", [0.5, 0.9, 0.97])
def test_autocorr_time_of_ar1(rho):
    tau = integrated_autocorr_time(ar1(rho, 20_000, 16, seed=int(rho * 100)))
    assert tau == pytest.approx((1 + rho) / (1 - rho), rel=0.15)


def test_autocorr_time_white_noise_and_errors():
    assert integrated_autocorr_time(np.random.default_rng(0).normal(size=50_000)) == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError, match="n_steps"):
        integrated_autocorr_time(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="constant"):
        integrated_autocorr_time(np.ones(100))


def check_moments(samples, mean, cov, n_sigma=5.0):
    """Mean and covariance within ``n_sigma`` standard errors, the errors inflated by tau_int."""
    s = np.asarray(samples, np.float64)  # (n_steps, n_chains, d)
    n = s.shape[0] * s.shape[1]
    flat = s.reshape(n, -1)
    d = flat.shape[1]
    taus = [integrated_autocorr_time(s[..., i]) for i in range(d)]
    taus2 = [integrated_autocorr_time(s[..., i] ** 2) for i in range(d)]
    tau = max(taus + taus2)
    se_mean = np.sqrt(np.diag(cov) * tau / n)
    np.testing.assert_array_less(np.abs(flat.mean(0) - mean), n_sigma * se_mean)
    emp = np.cov(flat.T)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) * tau / n)
    np.testing.assert_array_less(np.abs(emp - cov), n_sigma * se_cov)
    return tau


def gaussian_log_prob(mean, cov):
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    mu = jnp.asarray(mean, jnp.float32)
    return lambda x: -0.5 * (x - mu) @ prec @ (x - mu)


def test_mala_2d_correlated_gaussian():
    mean, cov = np.array([1.0, -2.0]), np.array([[1.0, 0.8], [0.8, 2.0]])
    lp = gaussian_log_prob(mean, cov)
    burn = run_chains(lp, jnp.zeros((128, 2)), key=jax.random.key(0), n_steps=300, step_size=0.1, adapt=True)
    prod = run_chains(lp, burn.x[0], key=jax.random.key(1), n_steps=1500, step_size=burn.step_size)
    assert prod.samples.shape == (1500, 128, 2) and prod.log_prob.shape == (1500, 128)
    assert float(prod.accept_rate[0]) == pytest.approx(0.574, abs=0.05)  # adapted, then fixed
    check_moments(prod.samples, mean, cov)


def test_hmc_10d_gaussian():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 10))
    q, _ = np.linalg.qr(a)
    cov = q @ np.diag(np.linspace(0.25, 2.0, 10)) @ q.T
    mean = rng.normal(size=10)
    lp = gaussian_log_prob(mean, cov)
    burn = run_chains(lp, jnp.zeros((64, 10)), key=jax.random.key(2), n_steps=200, step_size=0.2,
                      n_leapfrog=5, adapt=True)
    prod = run_chains(lp, burn.x[0], key=jax.random.key(3), n_steps=1000, step_size=burn.step_size,
                      n_leapfrog=5)
    assert float(prod.accept_rate[0]) == pytest.approx(0.65, abs=0.07)
    check_moments(prod.samples, mean, cov)


def test_parallel_tempering_gets_mode_weights():
    # Two narrow, well separated modes with weights 0.3 / 0.7: a single MALA chain cannot
    # cross (barrier ~ 32 nats); tempering must give the right weights.
    def lp(x):
        a = jnp.log(0.3) - 2.0 * jnp.sum((x - 4.0) ** 2)
        b = jnp.log(0.7) - 2.0 * jnp.sum((x + 4.0) ** 2)
        return jnp.logaddexp(a, b)

    betas = np.geomspace(1.0, 0.03, 6)
    x0 = jnp.full((6, 64, 1), 4.0)  # every chain starts in the *light* mode
    burn = run_chains(lp, x0, key=jax.random.key(4), n_steps=200, step_size=0.3, betas=betas, adapt=True)
    prod = run_chains(lp, burn.x, key=jax.random.key(5), n_steps=600, step_size=burn.step_size, betas=betas, thin=5)
    frac = float(np.mean(prod.samples > 0))
    assert frac == pytest.approx(0.3, abs=0.05)
    assert prod.swap_rate.shape == (5,) and np.all(prod.swap_rate > 0.2)
    # same key, same bits; another key, other bits
    runs = [run_chains(lp, burn.x, key=jax.random.key(k), n_steps=20, step_size=burn.step_size, betas=betas)
            for k in (6, 6, 7)]
    assert np.array_equal(runs[0].samples, runs[1].samples)
    assert not np.array_equal(runs[0].samples, runs[2].samples)


def test_zero_com_chains_stay_centred():
    def lp(x):  # translation-invariant spring pair energy on (3, 2) configurations
        d2 = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
        return -0.5 * jnp.sum(d2) - 0.0 * jnp.sum(x)

    x0 = jax.random.normal(jax.random.key(6), (16, 3, 2)) + 5.0
    r = run_chains(lp, x0, key=jax.random.key(7), n_steps=50, step_size=0.2, zero_com=True, thin=10)
    assert r.samples.shape == (5, 16, 3, 2)
    np.testing.assert_allclose(r.samples.mean(axis=-2), 0.0, atol=1e-5)


def test_input_errors():
    lp = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    with pytest.raises(ValueError, match="betas"):
        run_chains(lp, jnp.zeros((2, 4, 1)), key=jax.random.key(0), n_steps=2, step_size=0.1, betas=[0.5, 1.0])
    with pytest.raises(ValueError, match="multiple of thin"):
        run_chains(lp, jnp.zeros((4, 1)), key=jax.random.key(0), n_steps=5, step_size=0.1, thin=2)
    with pytest.raises(ValueError, match="x0 must be"):
        run_chains(lp, jnp.zeros((3, 4, 1)), key=jax.random.key(0), n_steps=2, step_size=0.1, betas=[1.0, 0.5])
