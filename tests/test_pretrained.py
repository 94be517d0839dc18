"""The shipped checkpoints (``eacf_lab/pretrained``): every one loads by name with a verified
header, and the FAB-trained pair is what its header says it is.

The FAB checks recompute numbers from the flows themselves (not from the header): a flow that
was not trained, or an E-ACF no better than its Non-E-ACF counterpart, fails them.
"""

import jax
import numpy as np
import pytest

import eacf_lab as el
from eacf_lab import checkpoint, data, pretrained
from eacf_lab.estimators import reverse_ess
from eacf_lab.evaluate import data_point_terms, flow_sample_terms


def test_every_shipped_checkpoint_loads_by_name_with_its_header():
    names = pretrained.available()
    assert {"dw4-spherical-ml", "dw4-none-ml", "lj13-spherical-ml", "dw4-spherical-fab", "dw4-none-fab",
            "dw4-ecnf", "aldp-spherical-ml"} <= set(names)
    for name in names:
        model, info = pretrained.load(name)  # verifies the payload's SHA-256 against the header
        assert set(info) >= {"config", "metrics", "versions"}, name
        header = checkpoint.peek(pretrained.path(name))
        assert header["payload_bytes"]["train_state"] == 0, f"{name} ships optimizer/buffer state"
    with pytest.raises(ValueError, match="unknown pretrained checkpoint"):
        pretrained.path("dw4-nonexistent")


@pytest.fixture(scope="module")
def fab_pair():
    return {name: pretrained.load(name) for name in ("dw4-spherical-fab", "dw4-none-fab")}


def test_fab_checkpoints_were_trained_by_fab_without_data(fab_pair):
    for name, (flow, info) in fab_pair.items():
        train = info["config"]["train"]
        assert train["method"] == "fab" and train["alpha"] == 2.0 and train["target"] == "DW4", name
        h = info["metrics"]["history"]
        assert len(h["iteration"]) == info["metrics"]["train"]["iterations"] > 100
        assert h["eval_reverse_ess"][-1] > 5 * h["eval_reverse_ess"][0], f"{name}: ESS did not rise"
    (sph, _), (none, _) = fab_pair["dw4-spherical-fab"], fab_pair["dw4-none-fab"]
    assert sph.config["projection"] == "spherical" and none.config["projection"] == "none"
    assert sph.n_blocks == none.n_blocks


def test_fab_e_acf_beats_its_non_e_acf_counterpart(fab_pair):
    """Held-out NLL (Eq. 21, M = 10, 300 test points) and reverse ESS (2,000 flow samples),
    computed here: the E-ACF is better on both (shipped, 1,000 points and 10,000 samples: NLL 7.44 vs 7.86, ESS 46 % vs
    21 %; here, with keys 0-2: NLL gaps 0.45-0.47 nats, ESS 46-49 % vs 18-23 %)."""
    test = data.load("dw4", "test")[:300]
    target = el.targets.DW4()
    nll, ess = {}, {}
    for name, (flow, _) in fab_pair.items():
        marg, _, _ = data_point_terms(flow, target, test, jax.random.key(0), 10)
        nll[name] = -float(np.mean(marg))
        _, _, log_w = flow_sample_terms(flow, target, jax.random.split(jax.random.key(1), 2000))
        ess[name] = float(reverse_ess(log_w))
    assert np.isfinite(list(nll.values())).all()
    assert nll["dw4-spherical-fab"] < nll["dw4-none-fab"] - 0.25, nll
    assert ess["dw4-spherical-fab"] > 0.3 and ess["dw4-spherical-fab"] > 1.5 * ess["dw4-none-fab"], ess
