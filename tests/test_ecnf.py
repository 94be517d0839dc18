"""E-CNF baseline (``eacf_lab/baselines``): density, symmetry, round trip, training, checkpoint.

All on one tiny perturbed model (1 EGNN layer, width 16; DW4 shapes, n = 4, d = 2), so the
adaptive-solver programs compile once and are reused by every test in this file.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eacf_lab as el
from eacf_lab import checkpoint, data
from eacf_lab.baselines import ecnf_from_config, kabsch_align, make_ecnf
from eacf_lab.baselines.ecnf_train import _eval_loss, ecnf_nll, fit_ecnf
from eacf_lab.geometry import zero_com_basis, zero_com_gaussian_log_prob
from eacf_lab.testing import assert_equivariant, assert_invariant, perturb

N, D = 4, 2
TINY = dict(n_layers=1, n_hidden=16, width=16, depth=1, n_freq=1)


@functools.lru_cache(maxsize=None)
def tiny_model(x64=False, tol=1e-5):
    """Perturbed, so the field is far from the identity-like initial one (|log det| ~ 3).
    ``tol``: the adaptive solver's rtol = atol (the parameters do not depend on it)."""
    return perturb(make_ecnf(jax.random.key(0), N, D, rtol=tol, atol=tol, **TINY), jax.random.key(1), scale=0.2)


def model(tol=1e-5):
    return tiny_model(bool(jax.config.jax_enable_x64), tol)


def z_point(seed=2):
    return el.sample_zero_com_gaussian(jax.random.key(seed), N, D)


def rk4_flow_map_log_det(m, z, n_steps=200):
    """Brute force, independent of diffrax and of the divergence: classical RK4 for
    ``dx/dt = v_t(x)`` in coordinates of the zero-CoM hyperplane, and ``slogdet`` of the full
    ``((n-1)d, (n-1)d)`` Jacobian of that flow map (``jax.jacfwd``). Returns ``(x(1), log|det|)``."""
    q = zero_com_basis(N, D, dtype=z.dtype)
    h = 1.0 / n_steps

    def v(t, c):
        return q.T @ m.vector_field(t, (q @ c).reshape(N, D)).reshape(-1)

    def flow_map(c):
        def body(i, c):
            t = (i * h).astype(c.dtype)
            k1 = v(t, c)
            k2 = v(t + h / 2, c + h / 2 * k1)
            k3 = v(t + h / 2, c + h / 2 * k2)
            k4 = v(t + h, c + h * k3)
            return c + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return jax.lax.fori_loop(0, n_steps, body, c)

    c0 = q.T @ z.reshape(-1)
    c1, jac = jax.jit(lambda c: (flow_map(c), jax.jacfwd(flow_map)(c)))(c0)
    sign, log_det = jnp.linalg.slogdet(jac)
    assert float(sign) > 0  # a flow map preserves orientation
    return (q @ c1).reshape(N, D), log_det


def _check_density(m, z, atol_x, atol_lp):
    x_bf, log_det_bf = rk4_flow_map_log_det(m, z)
    assert abs(float(log_det_bf)) > 0.3, "test model too close to volume-preserving to check anything"
    log_q_bf = zero_com_gaussian_log_prob(z) - log_det_bf  # change of variables
    x, log_det = m.forward(z)  # adaptive Dopri5, divergence integral
    np.testing.assert_allclose(x, x_bf, atol=atol_x)
    np.testing.assert_allclose(log_det, log_det_bf, atol=atol_lp)
    np.testing.assert_allclose(m.log_prob(x_bf), log_q_bf, atol=atol_lp)  # the inverse direction


def test_log_prob_matches_brute_force_change_of_variables():
    _check_density(model(), z_point(), atol_x=2e-4, atol_lp=2e-3)


@pytest.mark.x64
def test_log_prob_matches_brute_force_change_of_variables_x64():
    # float64 and rtol = atol = 1e-9: agreement far below the float32 test's round-off floor
    _check_density(model(tol=1e-9), z_point(), atol_x=1e-7, atol_lp=1e-7)


@pytest.mark.parametrize("group", ["rotation", "reflection", "permutation"])
def test_vector_field_is_equivariant(group, key):
    m, x = model(), z_point(3)
    assert_equivariant(lambda y: m.vector_field(jnp.asarray(0.37), y), x, key=key, group=group, rtol=2e-5)


def test_vector_field_is_translation_invariant_with_zero_mean(key):
    m, x = model(), z_point(3)
    assert_invariant(lambda y: m.vector_field(jnp.asarray(0.6), y), x, key=key, group="translation", rtol=2e-5)
    v = m.vector_field(jnp.asarray(0.6), x)
    np.testing.assert_allclose(jnp.mean(v, axis=0), 0.0, atol=1e-6)
    assert float(jnp.max(jnp.abs(v))) > 1e-2  # not trivially zero


@pytest.mark.parametrize("group", ["rotation", "permutation"])
def test_log_prob_is_invariant(group, key):
    m, x = model(), z_point(4)
    # Adaptive steps may differ between rotated inputs (the error norm is per coordinate):
    # invariance holds to the solver tolerance, not to round-off.
    assert_invariant(m.log_prob, x, key=key, group=group, n_trials=2, rtol=1e-4, scale=10.0)


def test_round_trip_x_to_z_to_x():
    m, z = model(), z_point(5)
    x, log_det_f = m.forward(z)
    z_back, log_det_i = m.inverse(x)
    np.testing.assert_allclose(z_back, z, atol=1e-4)
    np.testing.assert_allclose(log_det_i, -log_det_f, atol=1e-4)
    assert float(jnp.max(jnp.abs(x - z))) > 0.1  # the map moved the point
    xs, log_q = m.sample_and_log_prob(key=jax.random.key(6))
    np.testing.assert_allclose(jnp.mean(xs, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(m.log_prob(xs), log_q, atol=2e-3)


def test_bad_inputs_get_one_line_errors():
    m = model()
    with pytest.raises(ValueError, match=r"x must have shape \(4, 2\), got \(4, 3\)"):
        m.log_prob(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="zero centre of mass"):
        m.log_prob(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        make_ecnf(jax.random.key(0), 4, 4)
    with pytest.raises(ValueError, match="unknown E-CNF arguments"):
        make_ecnf(jax.random.key(0), 4, 2, widht=3)
    with pytest.raises(ValueError, match="config\\['model'\\] must be 'ecnf'"):
        ecnf_from_config({"n_nodes": 4, "dim": 2})


def test_kabsch_align_finds_the_rotation(key):
    x1 = z_point(7)
    r = el.random_rotation(key, D)
    x0 = x1 @ r.T  # x1 rotated away
    np.testing.assert_allclose(kabsch_align(x0, x1), x1, atol=1e-5)
    y = z_point(8)
    aligned = kabsch_align(y, x1)
    assert float(jnp.sum((aligned - x1) ** 2)) <= float(jnp.sum((y - x1) ** 2)) + 1e-5
    np.testing.assert_allclose(jnp.linalg.norm(aligned), jnp.linalg.norm(y), rtol=1e-5)  # a rotation


def test_training_lowers_loss_and_checkpoint_round_trips(tmp_path):
    train = data.load("dw4", "train")[:64]
    val = jnp.asarray(data.load("dw4", "val")[:64])
    m0 = make_ecnf(jax.random.key(0), N, D, **TINY)
    k = jax.random.key(9)
    before = float(_eval_loss(m0, val, k, True))
    path = tmp_path / "ecnf.eqx"
    m1, hist = fit_ecnf(m0, train, key=jax.random.key(1), epochs=20, batch_size=32, lr=3e-3, progress=False,
                        checkpoint_path=path)
    after = float(_eval_loss(m1, val, k, True))
    assert len(hist["loss"]) == 40 and np.all(np.isfinite(hist["loss"]))
    assert after < 0.8 * before, (before, after)
    loaded, info = checkpoint.load(path)  # default builder recognises config["flow"]["model"] == "ecnf"
    assert info["config"]["flow"]["model"] == "ecnf" and info["config"]["train"]["align"] is True
    x = val[0]
    np.testing.assert_array_equal(loaded.vector_field(jnp.asarray(0.5), x), m1.vector_field(jnp.asarray(0.5), x))
    nll, se = ecnf_nll(loaded, np.asarray(val[:3]), batch_size=2)  # two chunks, the last one padded
    log_q = np.array([float(loaded.log_prob(x)) for x in val[:3]])
    np.testing.assert_allclose(nll, -log_q.mean(), rtol=1e-4)
    np.testing.assert_allclose(se, log_q.std(ddof=1) / np.sqrt(3), rtol=1e-3)



def test_ecnf_vs_eacf_benchmark_smoke(tmp_path):
    """``benchmarks/ecnf_vs_eacf.py --smoke`` times both models in one run and writes both files."""
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "ecnf_vs_eacf.py")
    spec = importlib.util.spec_from_file_location("ecnf_vs_eacf_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--targets", "dw4", "--out-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "ecnf_vs_eacf.json").read_text())
    assert doc["smoke"] is True and doc["machine"]["backend"] == jax.default_backend()
    (t,) = doc["targets"]
    assert t["target"] == "dw4" and t["ecnf_config"]["model"] == "ecnf" and t["eacf_params"] > 0
    assert t["ecnf_steps_mean"] >= 1 and t["ecnf_steps_max"] >= t["ecnf_steps_mean"]
    (r,) = t["timings"]
    assert r["batch"] == 4
    for kind in ("eacf", "ecnf"):
        assert r[kind]["finite"] and r[kind]["wall_s"] > 0 and r[kind]["compile_wall_s"] > 0 and r[kind]["reps"] == 1
    assert r["ratio_wall"] == pytest.approx(r["ecnf"]["wall_s"] / r["eacf"]["wall_s"])
    md = (tmp_path / "ecnf_vs_eacf.md").read_text()
    assert "(smoke)" in md and "## dw4" in md and f"**{r['ratio_wall']:.1f}x**" in md


def test_shipped_dw4_ecnf_loads_by_name():
    """``eacf_lab/pretrained/dw4-ecnf.eqx``: rebuilt from its header, trained, with its exact test NLL."""
    from eacf_lab import pretrained
    from eacf_lab.baselines import ECNF

    m, info = pretrained.load("dw4-ecnf")
    assert isinstance(m, ECNF) and (m.n_nodes, m.dim) == (4, 2) and (m.rtol, m.atol) == (1e-5, 1e-5)
    metrics = info["metrics"]
    assert metrics["n_params"] == m.n_params() and metrics["n_test"] == 500
    assert np.isfinite(metrics["test_nll"]) and 0 < metrics["test_nll_se"] < 0.5
    hist = metrics["history"]
    assert hist["val_loss"][-1] < 0.95 * hist["val_loss"][0]  # training lowered the flow-matching loss
    v = m.vector_field(jnp.asarray(0.5), jnp.asarray(data.load("dw4", "test")[0]))
    assert np.all(np.isfinite(v)) and float(jnp.max(jnp.abs(v))) > 1e-3
