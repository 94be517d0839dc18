"""Evaluation: finite numbers in the right ranges; a perfect model has ESS 1 and KL 0."""

import equinox as eqx
import jax
import numpy as np
import pytest

from eacf_lab import data, make_flow, targets
from eacf_lab.cli import QUICK_SIZES
from eacf_lab.evaluate import evaluate, histogram, pair_distances
from eacf_lab.geometry import sample_zero_com_gaussian, zero_com_gaussian_log_prob

SMALL = dict(n_flow_samples=64, n_marginal=2)


class ZeroComGaussian(eqx.Module):
    """Target N_H(0, I) on the zero-CoM hyperplane, normalised (log Z = 0)."""

    n_nodes: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def log_prob(self, x):
        return zero_com_gaussian_log_prob(x)


def test_identity_flow_is_a_perfect_model_of_its_base():
    # At initialisation every coupling is the identity, so q(x, a) = N_H(x) pi(a | x) exactly:
    # all weights are 1, hence both ESS are 1, log Z = 0 and KL(p || q) = 0.
    flow = make_flow(jax.random.key(0), 4, 2, "spherical", **QUICK_SIZES)
    test = np.asarray(jax.vmap(lambda k: sample_zero_com_gaussian(k, 4, 2))(jax.random.split(jax.random.key(1), 32)))
    m = evaluate(flow, ZeroComGaussian(4, 2), test, key=jax.random.key(2), **SMALL)
    assert m["reverse_ess"] == pytest.approx(1.0, abs=1e-4) and m["reverse_ess_se"] < 1e-4
    assert m["forward_ess"] == pytest.approx(1.0, abs=1e-4)
    assert m["log_z"] == pytest.approx(0.0, abs=1e-3) and m["log_z_se"] < 1e-2
    assert m["kl_estimate"] == pytest.approx(0.0, abs=1e-3)


def test_evaluate_dw4_tiny_flow():
    flow = make_flow(jax.random.key(0), 4, 2, "spherical", **QUICK_SIZES)
    test = data.load("dw4", "test")[:32]
    m = evaluate(flow, targets.DW4(), test, key=jax.random.key(0), **SMALL)
    for k in ("nll", "joint_nll", "log_z", "kl_estimate", "entropy_p", "mean_energy_test"):
        assert np.isfinite(m[k]), k
    assert 0.0 <= m["reverse_ess"] <= 1.0 and 0.0 <= m["forward_ess"] <= 1.0
    assert 0.0 < m["reverse_ess_se"] < 0.5  # uneven weights: an estimate with a spread
    assert m["kl_estimate"] > 0  # an untrained flow is far from DW4
    assert -30 < m["mean_energy_test"] < -15  # DW4 data sit near the double-well minima (~ -22.5)
    for name in ("energy_hist", "distance_hist"):
        h = m[name]
        assert len(h["edges"]) == len(h["model"]) + 1 == len(h["data"]) + 1
        assert np.sum(np.asarray(h["data"]) * np.diff(h["edges"])) == pytest.approx(1.0, abs=0.01)


def test_histogram_and_distances():
    x = np.array([[[0.0, 0.0], [3.0, 4.0]]])
    np.testing.assert_allclose(pair_distances(x), [5.0])
    h = histogram([0.5, 10.0], np.linspace(0, 1, 101), n_bins=10)
    assert h["model_outside"] == 0.5 and len(h["edges"]) == 11


def test_bad_inputs():
    flow = make_flow(jax.random.key(0), 4, 2, "spherical", **QUICK_SIZES)
    with pytest.raises(ValueError, match=r"test_data must have shape \(N, 4, 2\)"):
        evaluate(flow, targets.DW4(), np.zeros((3, 4, 3)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="target is"):
        evaluate(flow, targets.LJ13(), np.zeros((3, 4, 2)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_marginal"):
        evaluate(flow, targets.DW4(), np.zeros((3, 4, 2)), key=jax.random.key(0), n_marginal=0)


def test_snis_unbiased_for_a_known_gaussian_expectation():
    """q = N(0, 1), p = N(1, 1): SNIS of E_p[x] = 1 agrees within 4 se, and se matches the spread."""
    from eacf_lab.estimators import snis
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(50):
        x = rng.normal(size=2000)
        log_w = -0.5 * (x - 1.0) ** 2 + 0.5 * x ** 2 + 7.0  # log p - log q up to a constant
        estimates.append(snis(x, log_w))
    means, ses = np.array(estimates).T
    assert abs(means.mean() - 1.0) < 4 * means.std() / np.sqrt(len(means))
    assert ses.mean() == pytest.approx(means.std(), rel=0.3)
    # Non-finite samples are dropped; equal weights give the plain mean and the std / sqrt(N)-like se.
    m, se = snis(np.array([1.0, 2.0, 3.0, np.nan]), np.array([0.0, 0.0, 0.0, 0.0]))
    assert m == pytest.approx(2.0) and se == pytest.approx(np.sqrt(2 / 9))
    with pytest.raises(ValueError, match="same length"):
        snis(np.ones(3), np.zeros(2))
