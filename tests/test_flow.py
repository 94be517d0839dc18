"""The public flow API: shapes, identity at init, errors at the door, estimators, ESS,
degenerate inputs under jax_debug_nans, and the README snippet."""

import math
import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eacf_lab as el
from eacf_lab.projections import make_projection
from eacf_lab.projections.frames import collinearity_loss

from registry import TINY, perturbed_flow


@pytest.fixture(scope="module")
def flow():
    return el.make_flow(jax.random.key(0), 4, 2, "spherical", n_aug=1, n_blocks=2, **TINY)


def test_shapes_and_identity_at_initialisation(flow):
    x, a, log_q = flow.sample_and_log_prob(jax.random.key(1))
    assert x.shape == (4, 2) and a.shape == (1, 4, 2) and log_q.shape == ()
    np.testing.assert_allclose(el.center_of_mass(x), 0.0, atol=1e-6)
    # Identity at initialisation: the flow density is the base density.
    np.testing.assert_allclose(log_q, flow.base_log_prob(x, a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.log_prob(x, a), log_q, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.aug_target_log_prob(x, a), el.aug_gaussian_log_prob(a, x, 0.1), rtol=1e-6)
    a2 = flow.sample_aug(jax.random.key(2), x)
    assert a2.shape == (1, 4, 2)


def test_sample_log_q_matches_log_prob_for_a_trained_looking_flow():
    f = perturbed_flow("vector", 3, 3)
    keys = jax.random.split(jax.random.key(5), 64)
    x, a, log_q = jax.vmap(f.sample_and_log_prob)(keys)
    log_p = jax.vmap(f.log_prob)(x, a)
    np.testing.assert_allclose(log_p, log_q, rtol=1e-4, atol=1e-4)
    # ESS of a flow against itself is 1 (weights q/q are all equal).
    np.testing.assert_allclose(el.reverse_ess(log_p - log_q), 1.0, atol=1e-6)
    np.testing.assert_allclose(el.forward_ess(log_p - log_q), 1.0, atol=1e-6)


def test_ess_values_and_edge_cases():
    np.testing.assert_allclose(el.reverse_ess(jnp.zeros(10)), 1.0)
    # One sample carries all the weight: ESS = 1/N.
    lw = jnp.array([0.0] + [-1e4] * 9)
    np.testing.assert_allclose(el.reverse_ess(lw), 0.1, rtol=1e-6)
    # Known weights: w = (1, 2, 3, 4): reverse ESS = 100 / (4 * 30); forward = 1 / (2.5 * mean(1/w)).
    lw = jnp.log(jnp.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(el.reverse_ess(lw), 100 / 120, rtol=1e-6)
    np.testing.assert_allclose(el.forward_ess(lw), 1 / (2.5 * np.mean([1, 1 / 2, 1 / 3, 1 / 4])), rtol=1e-6)
    # A failed (NaN) flow sample counts as weight zero; a test sample with zero weight zeroes the forward ESS.
    with jax.debug_nans(False):
        lw = jnp.array([0.0, 0.0, jnp.nan, 0.0])
        assert 0.0 < float(el.reverse_ess(lw)) < 1.0
    assert float(el.forward_ess(jnp.array([0.0, -jnp.inf]))) == 0.0
    with pytest.raises(ValueError, match="1-D"):
        el.reverse_ess(jnp.zeros((2, 2)))


def test_reverse_ess_standard_error_matches_the_scatter_of_the_estimate():
    """Log-normal weights, log w ~ N(0, s^2): ESS / N -> exp(-s^2). Over 400 independent sets of
    2,000 weights, the delta-method error must match the estimate's actual scatter (s = 0.3: light
    tails, where first order is accurate; a gradient off by a factor 2 gives about 2.5x)."""
    rng = np.random.default_rng(0)
    lw = rng.normal(0.0, 0.3, size=(400, 2000))
    ess = np.array([float(el.reverse_ess(jnp.asarray(row))) for row in lw])
    se = np.array([el.reverse_ess_se(row) for row in lw])
    assert np.mean(ess) == pytest.approx(np.exp(-0.09), abs=0.005)
    assert np.median(se) == pytest.approx(np.std(ess), rel=0.15)
    assert el.reverse_ess_se(np.zeros(10)) == 0.0  # equal weights: ESS 1 exactly
    assert el.reverse_ess_se(np.full(3, -np.inf)) == 0.0 and np.isnan(el.reverse_ess_se(np.array([0.0, np.inf])))
    with pytest.raises(ValueError, match="1-D array of at least 2"):
        el.reverse_ess_se(np.zeros(1))


def test_marginal_estimator_exact_for_identity_flow(flow):
    """With q(x, a) = q0(x) pi(a|x) every importance weight equals q0(x): exact for any M."""
    x, _, _ = flow.sample_and_log_prob(jax.random.key(3))
    for m in (1, 5):
        est = el.marginal_log_prob(flow, x, jax.random.key(m), n_samples=m)
        np.testing.assert_allclose(est, el.zero_com_gaussian_log_prob(x), rtol=1e-5, atol=1e-5)


def test_marginal_estimator_converges_with_more_samples():
    f = perturbed_flow("spherical", 2, 1)
    x, _, _ = f.sample_and_log_prob(jax.random.key(4))
    est = jax.jit(lambda k, m: el.marginal_log_prob(f, x, k, n_samples=m), static_argnums=1)
    keys = jax.random.split(jax.random.key(5), 30)
    spread = {m: float(jnp.std(jnp.stack([est(k, m) for k in keys]))) for m in (1, 16, 256)}
    means = {m: float(jnp.mean(jnp.stack([est(k, m) for k in keys]))) for m in (1, 256)}
    assert spread[256] < spread[16] < spread[1]
    assert spread[256] < 0.1 * spread[1] + 1e-6
    assert means[256] >= means[1] - 3 * spread[1] / math.sqrt(30)  # Jensen: the bound tightens from below


BAD = [
    (dict(projection="sphere"), "projection must be one of"),
    (dict(n_aug=2), "n_aug must be odd"),
    (dict(n_aug=0), "n_aug must be a positive integer"),
    (dict(dim=4), "dim must be 2 or 3"),
    (dict(n_nodes=1), "n_nodes must be at least 2"),
    (dict(n_blocks=0), "n_blocks must be a positive integer"),
    (dict(eta=0.0), "eta must be positive"),
    (dict(inner="cubic"), "inner must be"),
    (dict(widht=3), "unknown size arguments"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_make_flow_rejects_bad_arguments(kwargs, message):
    args = dict(n_nodes=4, dim=2, projection="spherical", n_aug=1, n_blocks=1) | kwargs
    with pytest.raises(ValueError, match=message):
        el.make_flow(jax.random.key(0), **args)


def test_bad_inputs_get_one_line_errors(flow):
    x, a, _ = flow.sample_and_log_prob(jax.random.key(1))
    cases = [
        (lambda: flow.log_prob(x[:3], a), r"x must have shape \(4, 2\), got \(3, 2\)"),
        (lambda: flow.log_prob(x, a[0]), r"a must have shape \(1, 4, 2\), got \(4, 2\)"),
        (lambda: flow.log_prob(jnp.zeros((4, 3)), a), r"x must have shape \(4, 2\)"),
        (lambda: flow.log_prob(x + 1.0, a), "zero centre of mass"),
        (lambda: flow.forward(x + 1.0, a), "zero centre of mass"),
        (lambda: flow.inverse(x, a.at[0, 0, 0].set(jnp.inf)), "a must be finite"),
        (lambda: flow.sample_aug(jax.random.key(0), x[None]), "x must have shape"),
        (lambda: el.marginal_log_prob(flow, x, jax.random.key(0), n_samples=0), "n_samples"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            fn()
        assert "\n" not in str(info.value)
    with jax.debug_nans(False):
        with pytest.raises(ValueError, match="x must be finite"):
            flow.log_prob(x.at[0, 0].set(jnp.nan), a)


def test_coincident_atoms_give_finite_density_and_gradients():
    f = perturbed_flow("spherical", 3, 1)
    x, a, _ = f.sample_and_log_prob(jax.random.key(6))
    x = el.remove_com(x.at[1].set(x[0]))  # two atoms on top of each other
    a = a.at[0, 1].set(x[0])  # and an augmented copy exactly on the atom
    # One compiled function for the value, the parameter gradient and the input gradient.
    val, grads, gx = eqx.filter_jit(
        lambda m, x, a: (*eqx.filter_value_and_grad(lambda m: m.log_prob(x, a))(m),
                         jax.grad(lambda xx: m.log_prob(xx, a))(x)))(f, x, a)
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert np.all(np.isfinite(gx))


@pytest.mark.parametrize("name", ["spherical", "cartesian"])
def test_collinear_reference_vectors_stay_finite(name):
    proj = make_projection(name, 3)
    u, x_c = jnp.array([0.3, -0.2, 0.5]), jnp.zeros(3)
    vectors = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # collinear
    params = 0.1 * jnp.ones(proj.n_params)

    def loss(v, p):
        y, ld = proj.forward(u, x_c, v, p)
        return jnp.sum(y) + ld + proj.aux_loss(v)

    val, grads = jax.value_and_grad(loss, argnums=(0, 1))(vectors, params)
    assert np.isfinite(float(val)) and all(np.all(np.isfinite(g)) for g in grads)
    assert float(collinearity_loss(vectors[1], vectors[2])) > 10.0  # the barrier is high but finite
    assert abs(float(collinearity_loss(jnp.array([1.0, 0, 0]), jnp.array([0, 1.0, 0])))) < 1e-6


def test_blocks_are_initialised_independently():
    f = el.make_flow(jax.random.key(0), 4, 2, "vector", n_blocks=3, **TINY)
    w = f.blocks.couple_a_half.conditioner.out.weight  # (n_blocks, ...)
    assert w.shape[0] == 3
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])


def unstacked(blocks, n_blocks):
    """The stacked ``Block`` (every array leaf has a leading ``n_blocks`` axis) as a list of blocks."""
    params, static = eqx.partition(blocks, eqx.is_array)
    return [eqx.combine(jax.tree_util.tree_map(lambda leaf: leaf[i], params), static) for i in range(n_blocks)]


@pytest.mark.parametrize("projection, dim, n_aug", [("spherical", 3, 1), ("vector", 2, 3)])
def test_scan_over_couplings_equals_the_blocks_spelled_out(projection, dim, n_aug):
    """The flow runs one ``lax.scan`` over its couplings, swapping halves after each; that must
    be exactly Alg. 1/2's blocks (``Block.forward``/``Block.inverse``) applied one by one."""
    f = perturbed_flow(projection, dim, n_aug)
    z_x, z_a = f.sample_base(key=jax.random.key(4))
    blocks = unstacked(f.blocks, f.n_blocks)
    X, ld, aux = jnp.concatenate([z_x[None], z_a]), 0.0, 0.0
    for block in blocks:
        X, ld_b, aux_b = block.forward(X)
        ld, aux = ld + ld_b, aux + aux_b / f.n_blocks
    x, a, ld_scan = f.forward(z_x, z_a)
    np.testing.assert_allclose(x, X[0], atol=1e-5)
    np.testing.assert_allclose(a, X[1:], atol=1e-5)
    np.testing.assert_allclose(ld_scan, ld, rtol=1e-5, atol=1e-5)
    Z, ld_inv = X, 0.0
    for block in reversed(blocks):
        Z, ld_b, _ = block.inverse(Z)
        ld_inv = ld_inv + ld_b
    z_x2, z_a2, ld_inv_scan = f.inverse(x, a)
    np.testing.assert_allclose(z_x2, Z[0], atol=1e-5)
    np.testing.assert_allclose(z_a2, Z[1:], atol=1e-5)
    np.testing.assert_allclose(ld_inv_scan, ld_inv, rtol=1e-5, atol=1e-5)
    _, _, _, aux_scan = f.sample_and_log_prob_and_aux(jax.random.key(4))
    np.testing.assert_allclose(aux_scan, aux, rtol=1e-4)  # float32 sums in another order


@pytest.mark.parametrize("projection, dim, n_aug", [("spherical", 3, 1), ("vector", 2, 3)])
def test_rematerialised_scan_has_the_gradients_of_the_blocks_spelled_out(projection, dim, n_aug):
    """Under a gradient the scan recomputes each coupling (``jax.checkpoint`` in
    ``_scan_blocks``, which keeps a training step fast on CPU).  The parameter gradients of the
    density direction must equal those of ``Block.inverse`` applied one by one."""
    f = perturbed_flow(projection, dim, n_aug)
    x, a, _ = f.sample_and_log_prob(jax.random.key(6))
    X = jnp.concatenate([x[None], a])
    c = jax.random.normal(jax.random.key(7), X.shape)  # so the gradient also flows through Z

    def scanned(blocks):
        Z, ld, aux = eqx.tree_at(lambda g: g.blocks, f, blocks)._run(X, inverse=True)
        return ld + jnp.sum(c * Z) + aux

    def spelled_out(blocks):
        Z, total, aux = X, 0.0, 0.0
        for block in reversed(unstacked(blocks, f.n_blocks)):
            Z, ld, aux_b = block.inverse(Z)
            total, aux = total + ld, aux + aux_b / f.n_blocks
        return total + jnp.sum(c * Z) + aux

    g_scan, g_ref = eqx.filter_grad(scanned)(f.blocks), eqx.filter_grad(spelled_out)(f.blocks)
    leaves_scan, leaves_ref = jax.tree_util.tree_leaves(g_scan), jax.tree_util.tree_leaves(g_ref)
    assert len(leaves_scan) == len(leaves_ref) > 0
    assert any(float(jnp.max(jnp.abs(leaf))) > 1e-3 for leaf in leaves_ref)  # not a vacuous comparison
    for u, v in zip(leaves_scan, leaves_ref):
        np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-5)
    params, static = eqx.partition(f.blocks, eqx.is_array)
    jaxpr = str(jax.make_jaxpr(lambda p: eqx.filter_grad(scanned)(eqx.combine(p, static)))(params))
    assert re.search(r"\b(remat\w*|checkpoint)\b", jaxpr), "the scan body is no longer rematerialised"


def test_config_round_trip():
    f = el.make_flow(jax.random.key(0), 4, 2, "cartesian", n_aug=3, n_blocks=1, inner="spline", **TINY)
    g = el.flow_from_config(f.config)
    assert g.config == f.config
    assert jax.tree_util.tree_structure(eqx.filter(g, eqx.is_array)) == jax.tree_util.tree_structure(
        eqx.filter(f, eqx.is_array))


def test_readme_snippet_runs(capsys):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"README-SNIPPET: first-steps.*?```python\n(.*?)```", readme, re.S)
    assert block, "README snippet marker not found"
    code = block.group(1).replace("n_blocks=12", "n_blocks=1")  # same code path, faster compile
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    numbers = [float(v) for v in printed]
    assert len(numbers) == 4
    np.testing.assert_allclose(numbers[0], numbers[1], rtol=1e-4)  # log q twice
    np.testing.assert_allclose(numbers[2], numbers[1], rtol=1e-4)  # rotated: invariant
