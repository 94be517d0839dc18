"""Tests for eacf_lab.checkpoint: round trips, corruption detection, atomic writes."""

import inspect
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eacf_lab import checkpoint
from eacf_lab.checkpoint import load, peek, save

CONFIG = {"flow": {"in_size": 3, "out_size": 2, "width_size": 8, "depth": 2}, "seed": 1}


def _build(cfg):
    return eqx.nn.MLP(**cfg["flow"], key=jax.random.key(0))


def _flow(seed=42):
    return eqx.nn.MLP(**CONFIG["flow"], key=jax.random.key(seed))


def _assert_trees_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if eqx.is_array(x):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.eacf"
    flow = _flow()
    save(path, flow, CONFIG, {"nll": jnp.float32(1.25), "ess": float("nan")})
    return path, flow


def test_round_trip_bit_exact(saved):
    path, flow = saved
    loaded, info = load(path, builder=_build)
    _assert_trees_identical(loaded, flow)
    x = jnp.ones(3)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(flow(x)))
    assert info["config"] == CONFIG and info == peek(path)
    assert info["metrics"] == {"nll": 1.25, "ess": "NaN"}
    assert info["versions"]["jax"] == jax.__version__
    assert info["structure"]["flow"][0] == [[8, 3], "float32"]


def test_train_state_round_trip(tmp_path):
    path = tmp_path / "run.eacf"
    flow = _flow()
    params = eqx.filter(flow, eqx.is_inexact_array)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = jax.jit(opt.update)(grads, opt_state, params)  # non-trivial moments and count
    state = {"opt_state": opt_state, "step": 7, "key": jax.random.key(3),
             "old_key": jax.random.PRNGKey(5)}
    save(path, flow, CONFIG, train_state=state)
    like = {"opt_state": opt.init(params), "step": 0, "key": jax.random.key(0),
            "old_key": jax.random.PRNGKey(0)}
    _, info = load(path, builder=_build, train_state_like=like)
    got = info["train_state"]
    _assert_trees_identical(got["opt_state"], opt_state)
    assert got["step"] == 7 and isinstance(got["step"], int)
    assert jax.dtypes.issubdtype(got["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(got["key"]), jax.random.key_data(state["key"]))
    np.testing.assert_array_equal(got["old_key"], state["old_key"])
    assert info["structure"]["train_state"][0] == [[], "key<fry>"]  # sorted dict keys
    assert info["structure"]["train_state"][-1] == [[], "int"]
    # Asking for a train state the file does not have is an error, not a silent default.
    save(path, flow, CONFIG)
    with pytest.raises(ValueError, match="no train_state"):
        load(path, builder=_build, train_state_like=like)


def _corrupt(path, fn):
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(fn(data)))


def _flip(i):
    def fn(data):
        data[i] ^= 0x01
        return data
    return fn


@pytest.mark.parametrize(
    "name, fn, match",
    [
        ("truncated", lambda d: d[:-10], "truncated"),
        ("truncated header", lambda d: d[:60], "truncated"),
        ("padded", lambda d: d + b"\0", "truncated or padded"),
        ("payload byte", _flip(-5), "payload sha256"),
        ("header byte", _flip(60), "header sha256"),
        ("magic", _flip(0), "magic"),
        ("empty", lambda d: d[:0], "magic"),
    ],
)
def test_corruption_is_detected(saved, name, fn, match):
    path, _ = saved
    _corrupt(path, fn)
    with pytest.raises(ValueError, match=match) as e:
        load(path, builder=_build)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=match):
        peek(path)


def test_missing_file_and_structure_mismatch(saved, tmp_path):
    path, _ = saved
    with pytest.raises(FileNotFoundError, match="nothing.eacf"):
        load(tmp_path / "nothing.eacf", builder=_build)
    # Abstract skeletons (no compute): also how a learner can load without building.
    abstract = lambda *a, **kw: (lambda cfg: eqx.filter_eval_shape(eqx.nn.MLP, *a, **kw, key=jax.random.key(0)))
    _assert_trees_identical(load(path, builder=abstract(3, 2, 8, 2))[0], _flow())
    with pytest.raises(ValueError, match=r"flow structure mismatch.*\[\[8, 3\], 'float32'\]"):
        load(path, builder=abstract(3, 2, 16, 2))  # wider
    with pytest.raises(ValueError, match="file has 6 leaves, skeleton 8"):
        load(path, builder=abstract(3, 2, 8, 3))  # deeper
    with pytest.raises(ValueError, match="float16"):
        load(path, builder=abstract(3, 2, 8, 2, dtype=jnp.float16))
    with pytest.raises(ValueError, match="ShapeDtypeStruct"):
        save(tmp_path / "x.eacf", abstract(3, 2, 8, 2)(None), CONFIG)


def test_bad_inputs_are_refused(tmp_path):
    path = tmp_path / "m.eacf"
    with pytest.raises(ValueError, match="config\\['flow'\\]\\['depth'\\] is a numpy.int64"):
        save(path, _flow(), {"flow": {**CONFIG["flow"], "depth": np.int64(2)}})
    with pytest.raises(ValueError, match="config\\['flow'\\]"):
        save(path, _flow(), {"seed": 1})
    with pytest.raises(ValueError, match="finite"):
        save(path, _flow(), {"flow": {"eta": float("inf")}})
    with pytest.raises(ValueError, match="str keys"):
        save(path, _flow(), {"flow": {1: 2}})
    bad = eqx.tree_at(lambda m: m.layers[0].bias, _flow(), np.full(8, np.nan, np.float32))
    with pytest.raises(ValueError, match="non-finite.*allow_nan"):
        save(path, bad, CONFIG)
    assert not path.exists() and os.listdir(tmp_path) == []
    with jax.debug_nans(False):
        save(path, bad, CONFIG, allow_nan=True)
        loaded, _ = load(path, builder=_build)
    assert np.all(np.isnan(np.asarray(loaded.layers[0].bias)))


@pytest.mark.parametrize("target", ["replace", "fsync", "serialise"])
def test_crash_during_write_keeps_previous_checkpoint(saved, monkeypatch, target):
    path, flow = saved
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    if target == "serialise":
        monkeypatch.setattr(checkpoint.eqx, "tree_serialise_leaves", boom)
    else:
        monkeypatch.setattr(checkpoint.os, target, boom)
    with pytest.raises(OSError, match="simulated crash"):
        save(path, _flow(seed=7), {"flow": CONFIG["flow"], "seed": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind
    _assert_trees_identical(load(path, builder=_build)[0], flow)


def test_header_is_plain_json_and_module_has_no_pickle(saved):
    path, _ = saved
    data = path.read_bytes()
    assert data[:8] == b"EACFLAB1"
    n = int.from_bytes(data[8:16], "little")
    header = json.loads(data[48:48 + n])
    assert header["format_version"] == 1 and len(header["payload_sha256"]) == 64
    assert header["payload_bytes"]["flow"] == len(data) - 48 - n
    code = inspect.getsource(checkpoint).replace(checkpoint.__doc__, "")
    assert "pickle" not in code  # neither imported nor used (np.load keeps allow_pickle=False)
