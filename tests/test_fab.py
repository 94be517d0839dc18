"""FAB pieces: HMC kernel, AIS, prioritised replay buffer, the FAB loss and loop (issue 4)."""

import json
import math
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eacf_lab as el
from eacf_lab.geometry import zero_com_gaussian_log_prob
from eacf_lab.train import buffer as replay
from eacf_lab.train.ais import ais, betas
from eacf_lab.train.ema import ema_decay_at, ema_init, ema_update
from eacf_lab.train.fab import ais_pass, evaluate_fab, fab, fab_loss
from eacf_lab.train.hmc import adapt_step_size, hmc_point, hmc_step

from child import run_child
from registry import TINY

N, D = 4, 2


def gaussian_components(mean, cov):
    """One component: log N(z; mean, cov) and its gradient."""
    prec = jnp.linalg.inv(cov)

    def log_p(z):
        r = z - mean
        return -0.5 * r @ prec @ r

    def components(z):
        v, g = jax.value_and_grad(log_p)(z)
        return v[None], g[None]

    return components


# ---- HMC ---------------------------------------------------------------------------------------

def test_hmc_leaves_a_2d_gaussian_invariant():
    """Exact samples of a correlated 2D Gaussian stay distributed as it after 10 transitions."""
    mean = jnp.array([1.0, -2.0])
    cov = jnp.array([[1.0, 0.8], [0.8, 2.0]])
    comps = gaussian_components(mean, cov)
    n = 20_000
    z = jax.random.multivariate_normal(jax.random.key(0), mean, cov, (n,))
    points = jax.vmap(hmc_point, in_axes=(None, 0))(comps, z)

    @jax.jit
    def run(points, key):
        def one(pts, k):
            pts, acc = jax.vmap(lambda kk, p: hmc_step(kk, p, comps, jnp.ones(1), 0.5, 5))(jax.random.split(k, n), pts)
            return pts, jnp.mean(acc)
        return jax.lax.scan(one, points, jax.random.split(key, 10))

    points, acc = run(points, jax.random.key(1))
    z = np.asarray(points.z, np.float64)
    assert 0.3 < float(acc.mean()) < 1.0  # it moves, and is not trivially accepting everything
    # moments within ~5 standard errors of the exact ones
    np.testing.assert_allclose(z.mean(0), mean, atol=5 * math.sqrt(2.0 / n))
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.08)
    # and it did move: the chains decorrelated from their start
    z0 = np.asarray(jax.random.multivariate_normal(jax.random.key(0), mean, cov, (n,)))
    assert np.corrcoef(z0[:, 0], z[:, 0])[0, 1] < 0.8


def test_hmc_acceptance_falls_when_the_step_size_is_too_large():
    """Leapfrog on a unit Gaussian is stable for eps < 2: tiny steps accept almost always,
    eps = 2.5 diverges and is (almost) always rejected."""
    comps = gaussian_components(jnp.zeros(2), jnp.eye(2))
    p = hmc_point(comps, jnp.ones(2))
    acc = jax.jit(lambda eps: jnp.mean(jax.vmap(lambda k: hmc_step(k, p, comps, jnp.ones(1), eps, 5)[1])(
        jax.random.split(jax.random.key(0), 500))))
    assert float(acc(0.1)) > 0.95 and float(acc(2.5)) < 0.05


def test_hmc_rejects_non_finite_and_divergent_proposals():
    """A target that is -inf (or NaN) beyond z0 > 0.5: chains never leave, nothing NaN comes out."""
    def components(z):
        lp = jnp.where(z[0] > 0.5, -jnp.inf, -0.5 * jnp.sum(z**2))
        return lp[None], jnp.where(z[0] > 0.5, jnp.nan, -z)[None]

    z = jnp.zeros((300, 2)).at[:, 0].set(0.4)
    pts = jax.vmap(hmc_point, in_axes=(None, 0))(components, z)
    with jax.debug_nans(False):  # the NaN gradient beyond the wall is the point of the test
        new, acc = jax.vmap(lambda k, p: hmc_step(k, p, components, jnp.ones(1), 0.8, 5))(
            jax.random.split(jax.random.key(0), 300), pts)
    assert np.all(np.isfinite(np.asarray(new.z))) and np.all(np.asarray(new.z[:, 0]) <= 0.5)
    assert np.all(np.isfinite(np.asarray(acc))) and float(jnp.min(acc)) == 0.0
    # a huge energy error counts as divergent: rejected even though the values are finite
    steep = gaussian_components(jnp.zeros(2), 1e-6 * jnp.eye(2))
    p = hmc_point(steep, jnp.ones(2) * 1e-3)
    _, acc = hmc_step(jax.random.key(1), p, steep, jnp.ones(1), 1.0, 5)
    assert float(acc) == 0.0


def test_hmc_projection_keeps_the_chain_on_the_subspace():
    comps = gaussian_components(jnp.zeros(4), jnp.eye(4))
    project = lambda v: v - jnp.mean(v)  # noqa: E731  (the "zero-CoM" line of a 4-vector)
    p = hmc_point(comps, jnp.array([1.0, -1.0, 0.5, -0.5]))
    for i in range(5):
        p, _ = hmc_step(jax.random.key(i), p, comps, jnp.ones(1), 0.5, 5, project=project)
    assert abs(float(jnp.sum(p.z))) < 1e-5


def test_adapt_step_size():
    assert float(adapt_step_size(1.0, 0.9)) == pytest.approx(1.02)
    assert float(adapt_step_size(1.0, 0.5)) == pytest.approx(1 / 1.02)


# ---- AIS ---------------------------------------------------------------------------------------

class ZeroComMixture(eqx.Module):
    """``p~(x) = sum_i c_i N_H(x; mu_i, I)`` on the zero-CoM hyperplane: known ``Z = sum_i c_i``.

    With one component at 0 it is ``Z`` times the x-marginal of a fresh (identity) flow."""
    means: jax.Array  # (n_components, N, D), zero-CoM
    log_c: jax.Array  # (n_components,)
    n_nodes: int = N
    dim: int = D

    def log_prob(self, x):
        return jax.scipy.special.logsumexp(self.log_c + jax.vmap(lambda m: zero_com_gaussian_log_prob(x - m))(self.means))


def scaled_base(log_z=0.7):
    return ZeroComMixture(means=jnp.zeros((2, N, D)), log_c=jnp.array([log_z, -jnp.inf]))


def identity_flow():
    flow = el.make_flow(jax.random.key(0), N, D, "spherical", **TINY)
    x, a, log_q = flow.sample_and_log_prob(jax.random.key(1))
    assert abs(float(log_q - flow.base_log_prob(x, a))) < 1e-4  # a fresh flow is the identity
    return flow


# All AIS runs below share one compiled program: same flow, target type, chains and levels.
CHAINS, LEVELS = 64, 2  # small: the tests run XLA without LLVM optimisations, AIS executes slowly


def run_ais(flow, target, key, alpha):
    return ais_pass(flow, target, key, jnp.full((LEVELS,), 0.05), jnp.asarray(alpha, jnp.float32), CHAINS, 5)


def test_ais_weights_have_zero_variance_when_the_flow_is_the_target():
    res = run_ais(identity_flow(), scaled_base(0.7), jax.random.key(2), alpha=2.0)
    log_w = np.asarray(res.log_w)
    assert np.all(np.isfinite(log_w))
    # log w = alpha * sum(d beta) * (log p - log q) = 2 * log Z: a constant
    np.testing.assert_allclose(log_w, 2 * 0.7, atol=1e-4)
    assert np.std(log_w) < 1e-4
    assert res.accept.shape == (LEVELS,) and np.all(np.asarray(res.accept) > 0.5)
    assert np.allclose(np.asarray(el.center_of_mass(res.x[0])), 0.0, atol=1e-5)  # still zero-CoM
    # The path, level by level: after level k the weight is alpha * beta_k * log Z; the first
    # column is the flow samples (weight 0), the last the final states with the final weight.
    assert res.levels_x.shape == (CHAINS, LEVELS + 2, N, D) and res.levels_log_w.shape == (CHAINS, LEVELS + 2)
    expected = 2 * np.asarray(betas(LEVELS)) * 0.7
    np.testing.assert_allclose(np.asarray(res.levels_log_w), np.broadcast_to(expected, (CHAINS, LEVELS + 2)), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.levels_x[:, -1]), np.asarray(res.x))
    assert np.allclose(np.asarray(jax.vmap(jax.vmap(el.center_of_mass))(res.levels_x)), 0.0, atol=1e-5)
    moved = np.linalg.norm(np.asarray(res.levels_x[:, 1] - res.levels_x[:, 0]), axis=(1, 2))
    assert np.mean(moved > 0) > 0.5  # HMC moved most chains at the first level (acceptance > 0.5)


def test_ais_log_z_of_a_gaussian_mixture_is_unbiased():
    """Z = 0.5 + 2 = 2.5; plain importance sampling from the base would have a relative weight
    variance of ~0.97 here (so ~4 % standard error with 512 chains); AIS must not be worse."""
    flow = identity_flow()
    mu = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * 0.5
    target = ZeroComMixture(means=jnp.stack([mu, -mu]), log_c=jnp.log(jnp.array([0.5, 2.0])))
    z_true = 2.5
    parts = [run_ais(flow, target, jax.random.key(10 + i), alpha=1.0) for i in range(8)]
    w = np.exp(np.concatenate([np.asarray(r.log_w, np.float64) for r in parts]))
    z_hat, se = w.mean(), w.std() / math.sqrt(len(w))
    assert se < 0.08 * z_true  # the check has power
    assert abs(z_hat - z_true) < 4 * se, (z_hat, se)
    assert all(np.all(np.asarray(r.accept) > 0.5) for r in parts)
    # a wrong Z would be detected: the estimate is far from 2 x or 0.5 x the truth
    assert abs(z_hat - 2 * z_true) > 10 * se and abs(z_hat - 0.5 * z_true) > 10 * se


def test_ais_arguments():
    assert betas(0).tolist() == [0.0, 1.0] and np.allclose(np.diff(np.asarray(betas(3))), 0.25)
    with pytest.raises(ValueError, match="step_sizes"):
        ais(jax.random.key(0), identity_flow(), scaled_base(), 8, jnp.zeros(()))


# ---- the replay buffer -------------------------------------------------------------------------

def batch(values, n=2, d=2, k=1):
    v = jnp.asarray(values, jnp.float32)
    x = jnp.broadcast_to(v[:, None, None], (len(v), n, d))
    return x, jnp.broadcast_to(v[:, None, None, None], (len(v), k, n, d)), v, -v


def test_buffer_add_drops_invalid_rows_and_wraps_around():
    buf = replay.init(5, 2, 2, 1)
    x, a, lw, lq = batch([1.0, 2.0, 3.0])
    with jax.debug_nans(False):  # a NaN sample never enters the buffer
        x = x.at[1].set(jnp.nan)
        buf = replay.add(buf, x, a, lw, lq)
    assert int(buf.count) == 2 and int(buf.head) == 2
    assert buf.log_w[:2].tolist() == [1.0, 3.0] and buf.log_q_old[:2].tolist() == [-1.0, -3.0]
    x, a, lw, lq = batch([4.0, 5.0, 6.0, 7.0])
    lw = lw.at[2].set(-jnp.inf)  # an invalid log-weight is dropped too
    buf = replay.add(buf, x, a, lw, lq)
    # the 3 valid rows went to slots 2, 3, 4: the ring is full and the head is back at 0
    assert int(buf.count) == 5 and int(buf.head) == 0
    assert buf.log_w.tolist() == [1.0, 3.0, 4.0, 5.0, 7.0]
    buf = replay.add(buf, *batch([8.0]))
    assert buf.log_w.tolist() == [8.0, 3.0, 4.0, 5.0, 7.0]  # the oldest is overwritten
    assert float(buf.x[0, 1, 1]) == 8.0 and float(buf.a[0, 0, 1, 1]) == 8.0
    with pytest.raises(ValueError, match="capacity"):
        replay.add(replay.init(2, 2, 2, 1), *batch([1.0, 2.0, 3.0]))


def test_buffer_sample_is_without_replacement_and_prioritised():
    buf = replay.init(8, 2, 2, 1)
    buf = replay.add(buf, *batch([0.0, 0.0, 0.0, 50.0, 0.0]))
    for s in range(20):
        x, a, lw, lq, idx = replay.sample(buf, jax.random.key(s), 3)
        idx = idx.tolist()
        assert len(set(idx)) == 3 and max(idx) < 5  # distinct, only filled slots
        assert 3 in idx  # w = e^50 dominates: always drawn
        np.testing.assert_array_equal(np.asarray(lw), np.asarray(buf.log_w)[idx])
        np.testing.assert_array_equal(np.asarray(x), np.asarray(buf.x)[idx])
    # frequencies follow w: slot 1 has w = e^1, the others e^0
    buf = replay.add(replay.init(4, 2, 2, 1), *batch([0.0, 1.0, 0.0, 0.0]))
    first = np.array([int(replay.sample(buf, jax.random.key(s), 1)[4][0]) for s in range(600)])
    p1 = math.e / (math.e + 3)
    assert abs(np.mean(first == 1) - p1) < 4 * math.sqrt(p1 * (1 - p1) / 600)


def test_buffer_adjust():
    buf = replay.add(replay.init(4, 2, 2, 1), *batch([1.0, 2.0, 3.0]))
    with jax.debug_nans(False):  # the NaN log q is the point of the test
        new = replay.adjust(buf, jnp.array([0, 2]), jnp.array([0.5, jnp.nan]), alpha=2.0)
    # slot 0: log w = 1 + (1 - 2)(0.5 - (-1)) = -0.5; log q_old = 0.5
    assert new.log_w.tolist()[:3] == [-0.5, 2.0, -math.inf]  # NaN log q: never drawn again
    assert new.log_q_old.tolist()[:2] == [0.5, -2.0]


# ---- the FAB loss and loop ---------------------------------------------------------------------

def test_fab_loss_weights_and_gradients():
    flow = el.testing.perturb(el.make_flow(jax.random.key(0), N, D, "spherical", **TINY), key=jax.random.key(7), scale=0.1)
    xs, as_, log_q = jax.vmap(flow.sample_and_log_prob)(jax.random.split(jax.random.key(1), 6))
    # stored log q = current log q: weight 1, loss = -mean log q
    loss, (nll, _, n_masked) = fab_loss(flow, xs, as_, log_q)
    assert float(loss) == pytest.approx(-float(jnp.mean(log_q)), rel=1e-4) and int(n_masked) == 0
    # stored log q_old far above the current: w_adj = exp((1 - 2)(log q - log q_old)) = e^100, clipped at 10
    loss_clip, _ = fab_loss(flow, xs, as_, log_q + 100.0)
    assert float(loss_clip) == pytest.approx(-10 * float(jnp.mean(log_q)), rel=1e-4)
    # one non-finite stored value: masked, gradient finite
    with jax.debug_nans(False):
        bad = log_q.at[0].set(jnp.nan)
        (loss_b, (_, _, n_b)), g = eqx.filter_value_and_grad(fab_loss, has_aux=True)(flow, xs, as_, bad)
    assert int(n_b) == 1 and np.isfinite(float(loss_b))
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array)))


# The smoke run executes 32 FAB iterations: under the tests' no-LLVM-optimisation flags that is
# ~15 s each, with XLA's default optimisation ~2 s.  So it runs in a child process with the
# default XLA flags (and the tests' strict JAX settings); the child prints its numbers as JSON
# and the assertions are made here.
SMOKE_CHILD = textwrap.dedent(r"""
    import json, sys
    import equinox as eqx, jax, numpy as np
    jax.config.update("jax_debug_nans", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import eacf_lab as el
    from eacf_lab.train.fab import fab

    TINY = json.loads(sys.argv[2])
    target = el.targets.DW4()
    test = el.data.load("dw4", "test")[:100]
    kw = dict(key=jax.random.key(1), n_iterations=16, batch_size=32, buffer_min_batches=4, buffer_max_batches=16,
              n_updates=4, peak_lr=3e-3, init_lr=3e-4, end_lr=3e-4, init_step_size=0.05, eval_every=16,
              n_eval_samples=256, n_marginal=2, test_data=test, progress=False)
    flow0 = el.make_flow(jax.random.key(0), 4, 2, "spherical", **TINY)
    seen = []
    flow, hist = fab(flow0, target, callback=lambda i, row: seen.append(i), **kw)
    path = sys.argv[1] + "/fab.eqx"
    fab(flow0, target, checkpoint_path=path, stop_at_iteration=6, **kw)   # interrupted at 6 ...
    resumed, h2 = fab(flow0, target, checkpoint_path=path, resume=True, **kw)  # ... and resumed
    leaves = lambda f: [np.asarray(l) for l in jax.tree_util.tree_leaves(eqx.filter(f, eqx.is_array))]
    out = {k: hist[k] for k in ("eval_reverse_ess", "eval_nll", "eval_iteration", "loss", "n_invalid", "accept",
                                "buffer_count")}
    out.update(seen=seen, resumed_iterations=h2["iteration"], resumed_loss=h2["loss"],
               resumed_equal=all(np.array_equal(p, q) for p, q in zip(leaves(flow), leaves(resumed))),
               method=el.load(path)[1]["config"]["train"]["method"])
    # with a parameter average: stopped at 3 and resumed = uninterrupted; the average is returned
    kw_e = dict(kw, n_iterations=6, eval_every=6, ema_decay=0.9)
    avg, _ = fab(flow0, target, **kw_e)
    path_e = sys.argv[1] + "/fab-ema.eqx"
    fab(flow0, target, checkpoint_path=path_e, stop_at_iteration=3, **kw_e)
    avg_resumed, _ = fab(flow0, target, checkpoint_path=path_e, resume=True, **kw_e)
    live = el.load(path_e)[0]  # the checkpoint's flow: the live parameters
    dist = lambda f, g: float(np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(leaves(f), leaves(g)))))
    out.update(ema_resumed_equal=all(np.array_equal(p, q) for p, q in zip(leaves(avg), leaves(avg_resumed))),
               ema_to_live=dist(avg, live), live_to_init=dist(live, flow0), ema_to_init=dist(avg, flow0),
               ema_decay_saved=el.load(path_e)[1]["config"]["train"]["ema_decay"])
    print("RESULT " + json.dumps(out, default=float))
""")


def test_fab_smoke_run_improves_ess_and_resumes_exactly(tmp_path):
    """A short FAB run on DW4 raises the flow's reverse ESS; a resumed run follows the same path.

    Minimal sizes; 16 iterations raise the reverse ESS of 256 flow samples and lower the test NLL."""
    r = run_child(SMOKE_CHILD, tmp_path, json.dumps(TINY), timeout=900)  # XLA's default flags: faster here
    assert r["seen"] == list(range(1, 17))
    ess, nll = r["eval_reverse_ess"], r["eval_nll"]
    assert r["eval_iteration"] == [1, 16]
    # both directions of the fit improve: the reverse ESS of flow samples and the test NLL
    # (the ESS of a fresh flow sits near its floor 1 / n_eval_samples)
    assert ess[-1] > ess[0] and nll[-1] < nll[0], (ess, nll)
    assert np.all(np.isfinite(r["loss"])) and max(r["n_invalid"]) == 0
    assert 0 < np.mean(r["accept"]) < 1
    assert r["buffer_count"][-1] == 16 * 32
    # interrupted at 6 and resumed: the same parameters and losses as the run that never stopped
    assert r["resumed_iterations"] == list(range(1, 17))
    assert r["resumed_equal"] and r["resumed_loss"] == r["loss"]
    assert r["method"] == "fab"
    # ema_decay: the returned flow is the average, not the live flow, and resumes exactly; after
    # 24 steps with the warm-up decay (<= 0.73) it sits near the end of the trajectory, not the start
    assert r["ema_resumed_equal"] and r["ema_decay_saved"] == 0.9
    assert 0 < r["ema_to_live"] < 0.5 * r["live_to_init"], r
    assert r["ema_to_init"] > 0.5 * r["live_to_init"], r


def test_ema_update_matches_the_recursion_by_hand():
    """``ema_t = d_t ema_{t-1} + (1 - d_t) p_t`` with ``d_t = min(decay, (1 + t) / (10 + t))``."""
    params = {"w": jnp.zeros((2,)), "b": jnp.asarray(1.0)}
    state = ema_init(params)
    expect_w, expect_b = np.zeros(2), 1.0
    for t in range(30):
        p = {"w": jnp.asarray([t, -2.0 * t]), "b": jnp.asarray(1.0 + t)}
        state = ema_update(state, p, 0.8)
        d = min(0.8, (1 + t) / (10 + t))
        expect_w, expect_b = d * expect_w + (1 - d) * np.array([t, -2.0 * t]), d * expect_b + (1 - d) * (1.0 + t)
        assert float(ema_decay_at(t, 0.8)) == pytest.approx(d, rel=1e-6)
    assert int(state["count"]) == 30
    np.testing.assert_allclose(np.asarray(state["params"]["w"]), expect_w, rtol=1e-5)
    assert float(state["params"]["b"]) == pytest.approx(expect_b, rel=1e-5)
    assert state["params"]["w"].dtype == params["w"].dtype
    # the warm-up: the first step keeps only a tenth of the initial value; late steps use ``decay``
    assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(10**6, 0.999)) == pytest.approx(0.999)


def test_fab_bad_arguments():
    flow = el.make_flow(jax.random.key(0), N, D, "spherical", **TINY)
    with pytest.raises(ValueError, match="n_iterations"):
        fab(flow, el.targets.DW4(), key=jax.random.key(0), n_iterations=0)
    with pytest.raises(ValueError, match="target is"):
        fab(flow, el.targets.LJ13(), key=jax.random.key(0), n_iterations=1)
    with pytest.raises(ValueError, match="buffer_min_batches"):
        fab(flow, el.targets.DW4(), key=jax.random.key(0), n_iterations=1, buffer_min_batches=4, n_updates=8)
    with pytest.raises(ValueError, match="test_data"):
        fab(flow, el.targets.DW4(), key=jax.random.key(0), n_iterations=1, test_data=np.zeros((3, 5, 2)))
    for bad in (1.0, 0.0, -0.5, True, "0.9"):
        with pytest.raises(ValueError, match="ema_decay must be None"):
            fab(flow, el.targets.DW4(), key=jax.random.key(0), n_iterations=1, ema_decay=bad)


def test_evaluate_fab_metrics_are_fractions():
    flow = identity_flow()
    # 260 test points: two chunks of 250 for the NLL, the second padded (the padding is not counted)
    test = np.asarray(jax.vmap(lambda k: flow.sample(k)[0])(jax.random.split(jax.random.key(1), 260)))
    m = evaluate_fab(flow, scaled_base(), key=jax.random.key(0), step_sizes=jnp.full((LEVELS,), 0.05),
                     n_samples=2 * CHAINS, chunk_size=CHAINS, test_data=test, n_marginal=2)
    # flow == target: every ESS is 1
    for k in ("reverse_ess", "ais_ess", "forward_ess"):
        assert m[k] == pytest.approx(1.0, abs=1e-4), (k, m[k])
    assert np.isfinite(m["nll"])
