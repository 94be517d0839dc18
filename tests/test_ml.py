"""Maximum-likelihood training: the loss drops in a short smoke run, resume == uninterrupted.

Tiny flows (``eacf_lab.cli.QUICK_SIZES``) and the same fit settings in every test, so the
jitted training step compiles once for the whole file (and is shared with test_cli).
"""

import jax
import numpy as np
import pytest

from eacf_lab import checkpoint, data, make_flow
from eacf_lab.cli import QUICK_SIZES
from eacf_lab.train import ml

# 160 steps at a peak learning rate of 3e-3: long enough that every training key tried leaves the flat
# start (measured over training keys 1-12: the mean minibatch NLL of the last 10 steps is
# 1.6-6.1 nats below that of the first 10). Shorter runs at 1e-2 drop by -0.1 to 0.9 nats
# depending on the key, too little to tell training from noise.
SETTINGS = dict(epochs=80, batch_size=32, aux_weight=0.0, peak_lr=3e-3, end_lr=1e-3, warmup_epochs=2, progress=False)


@pytest.fixture(scope="module")
def train():
    return data.load("dw4", "train")[:64]


def tiny_flow(seed=0):
    return make_flow(jax.random.key(seed), 4, 2, "spherical", **QUICK_SIZES)


@pytest.fixture(scope="module")
def straight(train):
    """160 uninterrupted steps, with a callback and validation."""
    seen = []
    flow, history = ml.fit(tiny_flow(), train, key=jax.random.key(1), val_data=data.load("dw4", "val")[:32],
                           eval_every=80, callback=lambda step, m: seen.append((step, m)), **SETTINGS)
    return flow, history, seen


def test_loss_drops(straight):
    _, history, seen = straight
    nll = np.asarray(history["nll"])
    assert len(nll) == 160 and np.all(np.isfinite(nll))
    assert nll[-10:].mean() < nll[:10].mean() - 0.5, (nll[:10].mean(), nll[-10:].mean())
    assert history["val_step"] == [80, 160] and np.all(np.isfinite(history["val_nll"]))
    assert [s for s, _ in seen] == list(range(1, 161)) and "val_nll" in seen[79][1]
    assert history["lr"][0] == pytest.approx(2e-5, rel=1e-3) and max(history["lr"]) == pytest.approx(3e-3, rel=0.05)


def test_joint_nll_drops(straight, train):
    # Same key => same augmented draws before and after: a low-noise comparison.
    before = ml.joint_nll(tiny_flow(), train, key=jax.random.key(5))
    after = ml.joint_nll(straight[0], train, key=jax.random.key(5))
    assert after < before - 0.5, (before, after)  # measured: 12.20 -> 6.88 (a 1-block toy, 160 steps)


def test_resume_continues_the_same_trajectory(straight, train, tmp_path):
    path = tmp_path / "ckpt.eqx"
    ml.fit(tiny_flow(), train, key=jax.random.key(1), checkpoint_path=path, stop_at_step=20, **SETTINGS)
    assert checkpoint.peek(path)["metrics"]["history"]["step"][-1] == 20
    # Resume in a "new session": a freshly initialised flow with another seed is replaced by the file.
    flow, history = ml.fit(tiny_flow(seed=7), train, key=jax.random.key(1), checkpoint_path=path, resume=True,
                           **SETTINGS)
    ref_flow, ref_history, _ = straight
    for a, b in zip(jax.tree.leaves(flow), jax.tree.leaves(ref_flow)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert history["nll"] == ref_history["nll"] and history["step"] == list(range(1, 161))


def test_resume_refuses_other_settings(train, tmp_path):
    path = tmp_path / "ckpt.eqx"
    ml.fit(tiny_flow(), train, key=jax.random.key(1), checkpoint_path=path, stop_at_step=1, **SETTINGS)
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        ml.fit(tiny_flow(), train, key=jax.random.key(1), checkpoint_path=path, resume=True,
               **{**SETTINGS, "batch_size": 16})


def test_bad_inputs(train):
    flow = tiny_flow()
    with pytest.raises(ValueError, match=r"train_data must have shape \(N, 4, 2\)"):
        ml.fit(flow, train[:, :3], key=jax.random.key(0), epochs=1)
    with pytest.raises(ValueError, match="zero-CoM"):
        ml.fit(flow, train + 1.0, key=jax.random.key(0), epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        ml.fit(flow, train, key=jax.random.key(0), epochs=1, batch_size=65)
    with pytest.raises(ValueError, match="epochs"):
        ml.fit(flow, train, key=jax.random.key(0), epochs=0)


def test_published_defaults():
    assert ml.PUBLISHED["dw4"] == dict(epochs=100, aux_weight=0.0, batch_size=32)
    assert ml.PUBLISHED["lj13"] == dict(epochs=400, aux_weight=10.0, batch_size=32)
    _, schedule = ml.make_optimizer(100 * 31, 31)  # DW4: warmup 30 epochs, 2e-5 -> 2e-4 -> 2e-5
    assert float(schedule(0)) == pytest.approx(2e-5)
    assert float(schedule(30 * 31)) == pytest.approx(2e-4)
    assert float(schedule(100 * 31)) == pytest.approx(2e-5)
