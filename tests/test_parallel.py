"""Data parallel (``eacf_lab.train.parallel``): a sharded step equals the one-device step.

The test process already initialised JAX with one CPU device, so the multi-device checks run
in a child process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (four
virtual CPU devices).  The child computes and prints numbers as JSON; the assertions are here.
"""

import json
import os
import textwrap

import jax
import numpy as np
import pytest

from eacf_lab.cli import build_parser
from eacf_lab.train import parallel

from child import run_child

CHILD = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, equinox as eqx, numpy as np
    jax.config.update("jax_debug_nans", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from eacf_lab import data, make_flow
    from eacf_lab.cli import QUICK_SIZES, main
    from eacf_lab.testing import perturb
    from eacf_lab.train import ml, parallel

    assert jax.device_count() == 4, jax.devices()
    out = {}
    leaves = lambda t: [np.asarray(l) for l in jax.tree.leaves(eqx.filter(t, eqx.is_inexact_array))]
    maxdiff = lambda s, t: max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(s), leaves(t)))
    train = data.load("dw4", "train")[:64]

    # Every run below uses the optimizer of `fit(epochs=2, batch_size=32)` on 64 points, so the
    # one-device and 4-device steps compile once each and `fit` and the CLI reuse them.
    opt, _ = ml.make_optimizer(4, 2, init_lr=2e-5, peak_lr=2e-4, end_lr=2e-5, warmup_epochs=None)  # as fit calls it

    # (a) one ML training step: unsharded vs batch over 4 devices, parameters replicated.
    #     Perturbed parameters: an identity-initialised flow would hide mistakes.
    flow = perturb(make_flow(jax.random.key(0), 4, 2, "spherical", **QUICK_SIZES), jax.random.key(1), scale=0.05)
    state = opt.init(eqx.filter(flow, eqx.is_inexact_array))
    x, key = jnp.asarray(train[:32]), jax.random.key(2)
    f1, s1, st1 = ml._train_step(flow, state, x, key, opt, 0.0, False)
    mesh = parallel.make_mesh(4)
    fr, sr = parallel.replicate((flow, state), mesh)
    xs = parallel.shard_batch(np.asarray(x), mesh)
    f4, s4, st4 = ml._train_step(fr, sr, xs, key, opt, 0.0, False)
    out["x_shard_shapes"] = sorted({tuple(s.data.shape) for s in xs.addressable_shards})
    out["x_n_devices"] = len(xs.sharding.device_set)
    w = jax.tree.leaves(eqx.filter(f4, eqx.is_inexact_array))[0]
    out["params_replicated"] = bool(w.sharding.is_fully_replicated) and len(w.sharding.device_set) == 4
    out["step_param_diff"] = maxdiff(f1, f4)
    out["step_update_size"] = maxdiff(f1, flow)
    out["step_stats"] = [[float(st1[k]), float(st4[k])] for k in ("loss", "nll", "grad_norm")]
    try:
        parallel.shard_batch(np.asarray(train[:6]), mesh)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)

    # (b) a short fit (2 epochs x 2 steps) on 1 device (no sharding) and on 2 and 4 devices.
    #     Perturbed too: at the identity initialisation many parameters have a true gradient of
    #     0, and Adam (which divides by sqrt(v)) turns float32 rounding in it into full steps.
    fit_flow = perturb(make_flow(jax.random.key(3), 4, 2, "spherical", **QUICK_SIZES), jax.random.key(1), scale=0.05)
    runs = {}
    for devices in (None, 2, 4):
        f, h = ml.fit(fit_flow, train, key=jax.random.key(4), epochs=2, batch_size=32, progress=False,
                      devices=devices)
        runs[str(devices)] = (f, h)
    ref, ref_h = runs["None"]
    out["fit_param_diff"] = {k: maxdiff(ref, f) for k, (f, h) in runs.items()}
    out["fit_update_size"] = maxdiff(ref, fit_flow)
    out["fit_nll"] = {k: h["nll"] for k, (f, h) in runs.items()}

    # (c) the CLI flag trains on all 4 devices (and evaluates the validation NLL sharded).
    rc = main(["train", "dw4", "--quick", "--out", sys.argv[1], "--data-parallel", "--no-eval", "--no-progress",
               "--epochs", "2", "--n-train", "64", "--n-val", "32"])
    out["cli_rc"] = rc
    out["cli_metrics"] = json.load(open(sys.argv[1] + "/metrics.json"))

    # (d) FAB on 1 and on 4 devices: a short run (3 iterations of AIS -> buffer -> 2 updates) ...
    from eacf_lab import targets
    from eacf_lab.train import buffer as replay
    from eacf_lab.train import fab
    fab_kw = dict(key=jax.random.key(5), n_iterations=3, batch_size=16, n_intermediate=1, buffer_min_batches=2,
                  buffer_max_batches=4, n_updates=2, peak_lr=1e-3, progress=False, eval_every=3, n_eval_samples=16)
    fab_flow = perturb(make_flow(jax.random.key(6), 4, 2, "spherical", **QUICK_SIZES), jax.random.key(1), scale=0.05)
    fab_runs = {str(d): fab.fab(fab_flow, targets.DW4(), devices=d, **fab_kw) for d in (None, 4)}
    out["fab_history"] = {k: {d: h[k] for d, (f, h) in fab_runs.items()}
                          for k in ("loss", "flow_ess", "accept", "n_invalid", "buffer_count", "eval_reverse_ess")}
    out["fab_update_size"] = {d: maxdiff(f, fab_flow) for d, (f, h) in fab_runs.items()}
    # ... and its two jitted pieces from identical inputs (the programs `fab` compiled above).
    target, ss, alpha = targets.DW4(), jnp.full((1,), 0.05), jnp.asarray(2.0)
    mesh = parallel.make_mesh(4)
    fab_rep = parallel.replicate(fab_flow, mesh)
    ais1 = fab.ais_pass(fab_flow, target, jax.random.key(7), ss, alpha, 16, 5)
    ais4 = fab.ais_pass(fab_rep, target, jax.random.key(7), parallel.replicate(ss, mesh), alpha, 16, 5, mesh)
    out["ais_x_shards"] = sorted({tuple(s.data.shape) for s in ais4.x.addressable_shards})
    out["ais"] = {k: [np.asarray(getattr(r, k)).tolist() for r in (ais1, ais4)] for k in ("x", "log_w", "log_q")}
    buf = replay.init(64, 4, 2, 1)
    for r in (ais1, ais1):  # 32 entries: two minibatches of 16
        buf = replay.add(buf, r.x, r.a, r.log_w, r.log_q)
    opt = fab._optimizer(6, 2e-5, 1e-3, 2e-5, 0)  # what fab(...) above built: the same compiled _updates
    settings = tuple(sorted(dict(batch_size=16, n_intermediate=1, alpha=2.0, n_leapfrog=5, n_updates=2,
                                 w_adj_clip=10.0, aux_weight=0.0).items()))
    state = opt.init(eqx.filter(fab_flow, eqx.is_inexact_array))
    u1 = fab._updates(fab_flow, state, buf, jax.random.key(8), opt, settings)
    u4 = fab._updates(fab_rep, *parallel.replicate((state, buf), mesh), jax.random.key(8), opt, settings, mesh)
    out["upd_stats"] = [[float(u[3][k]) for u in (u1, u4)] for k in ("loss", "grad_norm")]
    out["upd_param_diff"], out["upd_update_size"] = maxdiff(u1[0], u4[0]), maxdiff(u1[0], fab_flow)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """Run ``CHILD`` on 4 virtual CPU devices; its JSON result."""
    # Same fast-compile flags as tests/conftest.py, plus four host devices.
    flags = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
             "--xla_force_host_platform_device_count=4")
    return run_child(CHILD, tmp_path_factory.mktemp("cli-run"), xla_flags=flags)


@pytest.mark.slow  # compiles several training steps (~2-3 CPU-minutes for the file)
def test_sharded_step_equals_single_device_step(four_devices):
    r = four_devices
    assert r["x_n_devices"] == 4 and r["x_shard_shapes"] == [[8, 4, 2]]  # 32 examples -> 4 x 8
    assert r["params_replicated"]
    for single, sharded in r["step_stats"]:  # loss, NLL and the gradient norm
        assert sharded == pytest.approx(single, rel=1e-5)
    # Adam's first step moves every parameter by ~lr(0) = 2e-5; the two runs agree far below that.
    assert r["step_update_size"] == pytest.approx(2e-5, rel=0.05)
    assert r["step_param_diff"] < 0.01 * r["step_update_size"], r["step_param_diff"]
    assert "must be divisible by the number of devices 4" in r["indivisible_error"]


@pytest.mark.slow  # compiles several training steps (~2-3 CPU-minutes for the file)
def test_fit_does_not_depend_on_device_count(four_devices):
    r = four_devices
    assert set(r["fit_param_diff"]) == {"None", "2", "4"}
    assert r["fit_update_size"] > 1e-5  # training moved the parameters
    # From a perturbed flow (see CHILD), so no parameter has a true gradient of ~0 whose rounding
    # Adam would blow up (measured: 7e-8 / 1.3e-7 on 2 / 4 devices against an update of 4.4e-4).
    for k, diff in r["fit_param_diff"].items():
        assert diff < 0.01 * r["fit_update_size"], (k, diff)
    for k in ("2", "4"):
        np.testing.assert_allclose(r["fit_nll"][k], r["fit_nll"]["None"], rtol=1e-5)
    assert len(r["fit_nll"]["None"]) == 4


@pytest.mark.slow  # compiles several training steps (~2-3 CPU-minutes for the file)
def test_cli_data_parallel_flag(four_devices):
    r = four_devices
    assert r["cli_rc"] == 0
    assert r["cli_metrics"]["train"]["n_devices"] == 4 and r["cli_metrics"]["train"]["steps"] == 4
    assert np.isfinite(r["cli_metrics"]["final_val_joint_nll"])
    assert build_parser().parse_args(["train", "dw4", "--out", "x"]).data_parallel is False


@pytest.mark.slow  # compiles several training steps (~2-3 CPU-minutes for the file)
def test_fab_does_not_depend_on_device_count(four_devices):
    r = four_devices
    # One AIS pass: 16 chains computed as 4 devices x 4 chains, each from its own key, so the
    # states and weights equal the one-device pass up to rounding.
    assert r["ais_x_shards"] == [[4, 4, 2]]
    for k, (single, sharded) in r["ais"].items():
        np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-4, err_msg=k)
    # Two updates on the same buffer draws: loss and gradient norm agree, parameters far below the update.
    for single, sharded in r["upd_stats"]:
        assert sharded == pytest.approx(single, rel=1e-5)
    assert r["upd_update_size"] > 1e-4 and r["upd_param_diff"] < 0.01 * r["upd_update_size"]
    # Whole runs: AIS rounding (~1e-5 in log q) reaches Adam's first steps, where tiny gradients
    # are divided by their own size, so the runs drift apart slowly (measured: losses 0.1-0.4 %
    # apart after three iterations); the statistics agree to 2 %, the counts exactly.
    assert min(r["fab_update_size"].values()) > 1e-4
    for k, runs in r["fab_history"].items():
        assert len(runs["None"]) == len(runs["4"]) > 0, k
        np.testing.assert_allclose(runs["4"], runs["None"], rtol=2e-2, err_msg=k)
    assert r["fab_history"]["n_invalid"]["4"] == r["fab_history"]["n_invalid"]["None"]
    assert build_parser().parse_args(["fab", "dw4", "--out", "x", "--data-parallel"]).data_parallel is True


def test_helpers_on_one_device():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("batch",) and mesh.devices.size == jax.device_count()
    batch = {"x": np.arange(12.0).reshape(4, 3), "w": np.ones(4)}
    placed = parallel.shard_batch(batch, mesh)
    np.testing.assert_array_equal(parallel.gather(placed["x"]), batch["x"])
    assert placed["x"].sharding.spec == jax.sharding.PartitionSpec("batch")
    hinted = jax.jit(lambda t: parallel.constrain_batch(t, mesh, axis=1))({"x": np.ones((2, 4)), "name": None})
    np.testing.assert_array_equal(hinted["x"], 1.0)  # values untouched (the split itself: the 4-device child)
    assert hinted["name"] is None
    assert parallel.constrain_batch(batch, None) is batch  # no mesh: untouched
    rep = parallel.replicate({"p": np.ones(3), "name": "static"}, mesh)
    assert rep["name"] == "static" and rep["p"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="same leading"):
        parallel.shard_batch({"x": np.ones((4, 2)), "y": np.ones((3, 2))}, mesh)
    with pytest.raises(ValueError, match="devices must be between 1 and"):
        parallel.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="devices must be None"):
        parallel.make_mesh("gpu")


@pytest.mark.slow  # compiles several training steps (~2-3 CPU-minutes for the file)
def test_speed_benchmark_smoke(tmp_path):
    """``benchmarks/speed.py --smoke`` runs and writes both results files with the documented fields."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "speed.py")
    spec = importlib.util.spec_from_file_location("speed_benchmark", path)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    assert speed.main(["--smoke", "--targets", "dw4", "--out-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "speed.json").read_text())
    assert doc["smoke"] is True and doc["machine"]["backend"] == jax.default_backend()
    assert [r["what"] for r in doc["results"]] == ["sample_16", "train_8"]
    for r in doc["results"]:
        assert r["target"] == "dw4" and r["n_params"] > 0 and r["dtype"] == "float32"
        for k in ("trace_wall_s", "compile_wall_s", "compile_cpu_s", "wall_s", "cpu_s", "peak_rss_mib", "call_memory_mib"):
            assert r[k] > 0, (k, r[k])
        assert r["reps"] >= 1
    assert doc["results"][0]["finite"] and doc["results"][0]["samples_per_s"] > 0
    assert doc["results"][1]["examples_per_s"] == pytest.approx(8 / doc["results"][1]["wall_s"])
    md = (tmp_path / "speed.md").read_text()
    assert "| dw4 | spherical |" in md and "compile train_8" in md and "steps/s" in md and "samples/s" in md
    # A call that needs more memory than there is (LJ13 training at batch 1,024 needs ~82 GiB) is
    # listed as not measured, with the figure, and the run goes on to the next measurement.
    speed.available_bytes = lambda: 0
    assert speed.main(["--smoke", "--targets", "dw4", "--out-dir", str(tmp_path / "oom")]) == 0
    doc = json.loads((tmp_path / "oom" / "speed.json").read_text())
    assert [r["what"] for r in doc["results"]] == ["sample_16", "train_8"]
    for r in doc["results"]:
        assert r["skipped"].startswith("out of memory: needs ") and "GiB" in r["skipped"] and "wall_s" not in r
    assert (tmp_path / "oom" / "speed.md").read_text().count("not measured: out of memory") == 2
