"""``eacf-lab`` end to end (tiny flow, a few steps): train -> resume -> eval -> sample; bad args."""

import json
import subprocess
import sys

import numpy as np
import pytest

from eacf_lab import checkpoint
from eacf_lab.cli import main

# Same fit settings as tests/test_ml.py (64 points, batch 32) so the jitted step is shared.
TRAIN = ["train", "dw4", "--quick", "--epochs", "20", "--no-progress",
         "--n-samples", "64", "--n-test", "32", "--n-marginal", "2"]


def test_train_eval_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out), "--stop-at-step", "3"]) == 0
    for name in ("checkpoint.eqx", "flow.eqx", "metrics.json", "training.html", "energy.html",
                 "distances.html", "plotly.min.js"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3 and np.isfinite(metrics["eval"]["nll"])
    assert checkpoint.peek(out / "flow.eqx")["payload_bytes"]["train_state"] == 0
    capsys.readouterr()

    assert main(TRAIN + ["--out", str(out), "--stop-at-step", "5", "--no-eval"]) == 0  # resumes
    err = capsys.readouterr().err
    assert "resuming" in err
    assert checkpoint.peek(out / "checkpoint.eqx")["metrics"]["history"]["step"] == [1, 2, 3, 4, 5]

    assert main(["eval", str(out / "flow.eqx"), "--n-samples", "64", "--n-test", "32", "--n-marginal", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["target"] == "dw4" and 0 <= result["reverse_ess"] <= 1

    npz = tmp_path / "s.npz"
    assert main(["sample", str(out / "checkpoint.eqx"), "-n", "7", "-o", str(npz)]) == 0
    with np.load(npz, allow_pickle=False) as f:
        assert f["x"].shape == (7, 4, 2) and f["a"].shape == (7, 1, 4, 2) and f["log_q"].shape == (7,)
        assert np.all(np.isfinite(f["log_q"]))

    capsys.readouterr()
    assert main(TRAIN + ["--out", str(out), "--seed", "3"]) == 2  # another config in that folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another config" in err


@pytest.mark.parametrize("argv, match", [
    (["train", "qm9", "--out", "x"], "invalid choice"),
    (["train", "dw4"], "--out"),
    (["train", "dw4", "--out", "x", "--epochs", "-3"], "positive integer"),
    (["eval", "no/such/file.eqx"], "no checkpoint file"),
    (["sample", "no/such/file.eqx", "-o", "s.npz"], "no checkpoint file"),
    (["frobnicate"], "invalid choice"),
    (["fab", "dw4", "--out", "x", "--iterations", "0"], "positive integer"),
    (["fab", "qm9", "--out", "x"], "invalid choice"),
    (["fab", "dw4", "--out", "x", "--ema-decay", "1"], "expected a number in (0, 1)"),
    (["eval", "dw4-ecnf"], "E-CNF baseline"),
])
def test_bad_arguments_one_line_exit_2(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "fab"])
def test_help_is_useful(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--projection" in out and "Example" in out and "--quick" in out


def test_module_entry_point_exit_code():
    r = subprocess.run([sys.executable, "-m", "eacf_lab.cli", "train", "dw4", "--out", "x", "--batch-size", "zero"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "positive integer" in r.stderr


def test_aldp_flow_gets_per_target_settings():
    """``train aldp`` builds the App. C.3.2 flow: one-hot atom-index features, eta 0.5 nm, radii in
    [0, 3] nm, 20 blocks unless told otherwise; DW4 keeps the DW4/LJ13 settings."""
    from eacf_lab.cli import _new_flow, build_parser
    parse = build_parser().parse_args
    flow = _new_flow(parse(["train", "aldp", "--out", "x", "--n-blocks", "1", "--n-invariant", "8", "--mlp-width", "8",
                            "--egnn-hidden", "8", "--egnn-layers", "1"]))
    cfg = flow.config
    assert (cfg["n_nodes"], cfg["dim"], cfg["eta"], cfg["r_max"], cfg["n_blocks"]) == (22, 3, 0.5, 3.0, 1)
    assert tuple(cfg["node_features_shape"]) == (22, 22) and np.array_equal(flow.node_features, np.eye(22))
    assert _new_flow(parse(["train", "aldp", "--out", "x", "--quick", "--r-max", "2.5"])).config["r_max"] == 2.5
    dw4 = _new_flow(parse(["train", "dw4", "--out", "x", "--quick"])).config
    assert (dw4["eta"], dw4["r_max"], dw4["node_features_shape"]) == (0.1, 10.0, None)
