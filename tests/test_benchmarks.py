"""The quality benchmarks' bookkeeping (no training here): ``ml_quality.py`` groups runs by
target, flow size and epochs and judges the paper's ordering with error bars; ``--merge``
combines results files written by separate processes and refuses files it cannot use."""

import importlib.util
import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def _module(name):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for `common`
    return module


ml_quality = _module("ml_quality")
common = sys.modules["common"]


def fab_run(iterations, devices, ess, wall, width=16):
    """One fab_quality.py run record (DW4 Spherical-proj, 3 blocks, seed 0) with a two-point ESS curve."""
    curve = {"eval_iteration": [1, iterations], "eval_time": [60.0, wall], "eval_reverse_ess": [0.001, ess],
             "eval_ais_ess": [0.01, 0.3]}
    return {"target": "dw4", "projection": "spherical", "seed": 0, "iterations": iterations, "n_devices": devices,
            "flow_config": {"n_blocks": 3, "mlp_width": width}, "n_params": 300 * width ** 2,
            "train_wall_s": wall, "iterations_per_s": iterations / wall, "reverse_ess": ess, "forward_ess": 0.4,
            "nll": 7.9, "curve": curve}


def run(target, projection, seed, nll, *, nll_se=0.03, blocks=6, width=32, epochs=100, n_test=1000):
    return {"target": target, "projection": projection, "seed": seed, "epochs": epochs, "n_test": n_test,
            "flow_config": {"n_blocks": blocks, "mlp_width": width}, "n_params": 1000 + blocks * width,
            "nll": nll, "nll_se": nll_se, "joint_nll": nll - 6, "reverse_ess": 0.01, "forward_ess": 0.02,
            "kl_estimate": 1.0, "train_wall_s": 100.0, "steps_per_s": 5.0}


def verdict_lines(md):
    return [line for line in md.splitlines() if "every E-ACF beats the Non-E-ACF" in line]


def test_ml_quality_table_groups_by_setting_and_judges_the_ordering_with_error_bars():
    runs = [run("dw4", "spherical", 0, 9.0), run("dw4", "spherical", 1, 9.1), run("dw4", "none", 0, 12.3),
            run("dw4", "none", 1, 12.2),
            # LJ13 at two epoch counts: never averaged together; a 0.08-nat lead with 0.15-nat errors is no clear win
            run("lj13", "spherical", 0, 47.96, nll_se=0.15, blocks=4, epochs=50, n_test=500),
            run("lj13", "none", 0, 48.04, nll_se=0.15, blocks=4, epochs=50, n_test=500),
            run("lj13", "none", 0, 47.77, nll_se=0.17, blocks=4, epochs=200, n_test=500),
            run("lj13", "vector", 0, 47.50, nll_se=0.17, blocks=4, epochs=200, n_test=500),
            run("lj13", "spherical", 0, 48.50, nll_se=0.17, blocks=4, epochs=200, n_test=500)]
    md = ml_quality.table(runs)
    rows = [line for line in md.splitlines() if line.startswith("| dw4") or line.startswith("| lj13")]
    assert len(rows) == 7  # dw4 x 2 flows, lj13 50 epochs x 2, lj13 200 epochs x 3
    assert "| dw4 | spherical | 6 x 32 | 1,192 | 100 | 1000 | 2 | 9.050 ± 0.071 |" in md
    assert sum("| lj13 | none | 4 x 32 |" in r for r in rows) == 2
    dw4, lj13_50, lj13_200 = verdict_lines(md)
    assert "dw4, 6 x 32, 100 epochs" in dw4 and "**yes, clearly (> 2 standard errors)**" in dw4
    assert "3.200 ±" in dw4  # 12.25 - 9.05
    assert "lj13, 4 x 32, 50 epochs" in lj13_50 and "**yes, but within 2 standard errors**" in lj13_50
    assert "0.080 ± 0.212" in lj13_50  # hypot(0.15, 0.15)
    # one E-ACF (spherical) worse than the Non-E-ACF: the ordering fails, whatever the others do
    assert "lj13, 4 x 32, 200 epochs" in lj13_200 and "**NO**" in lj13_200 and "(spherical, 48.500)" in lj13_200
    # without a Non-E-ACF in a setting there is nothing to judge
    assert verdict_lines(ml_quality.table([run("dw4", "spherical", 0, 9.0)])) == []


def test_merge_combines_results_files_and_their_notes_and_refuses_foreign_ones(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"argv": ["--targets", "dw4", "--seeds", "1"], "runs": [run("dw4", "spherical", 1, 9.1)]}))
    tagged = dict(run("dw4", "none", 0, 12.3), command="python benchmarks/ml_quality.py --projections none")
    b.write_text(json.dumps({"argv": ["--other"], "runs": [tagged]}))
    out = tmp_path / "out"
    ml_quality.main(["--merge", str(a), str(b), "--out", str(out), "--note", "measured on 2 cores"])
    doc = json.loads((out / "ml_quality.json").read_text())
    assert [r["command"] for r in doc["runs"]] == ["python benchmarks/ml_quality.py --targets dw4 --seeds 1",
                                                   tagged["command"]]  # a run's own command is kept
    assert doc["notes"] == ["measured on 2 cores"]
    md = (out / "ml_quality.md").read_text()
    assert "* measured on 2 cores" in md and "**yes, clearly" in md

    # a merged file merged again keeps its notes; new notes follow them, a repeated one appears once
    again = tmp_path / "again"
    ml_quality.main(["--merge", str(out / "ml_quality.json"), "--out", str(again), "--note", "second",
                     "--note", "measured on 2 cores"])
    assert json.loads((again / "ml_quality.json").read_text())["notes"] == ["measured on 2 cores", "second"]
    # --drop-notes rewrites them (in fab_quality too: the options are shared)
    fab_quality = _module("fab_quality")
    fab_file = tmp_path / "fab.json"
    fab_file.write_text(json.dumps({"argv": [], "runs": [fab_run(2000, 1, 0.174, 4121.0)], "notes": ["old"]}))
    fab_quality.main(["--merge", str(fab_file), "--out", str(again), "--note", "new"])
    assert json.loads((again / "fab_quality.json").read_text())["notes"] == ["old", "new"]
    fab_quality.main(["--merge", str(fab_file), "--out", str(again), "--drop-notes", "--note", "new"])
    assert json.loads((again / "fab_quality.json").read_text())["notes"] == ["new"]
    with pytest.raises(SystemExit):
        ml_quality.main(["--drop-notes", "--out", str(again)])
    assert "error: --drop-notes needs --merge" in capsys.readouterr().err

    # each run keeps the machine it ran on: from its own record, else from the file a run wrote;
    # a merged file's machine is only where it was merged, and names no run's machine
    here, there = common.machine(), dict(common.machine(), n_devices=2, xla_flags="--other")
    made_there = tmp_path / "there.json"
    made_there.write_text(json.dumps({"machine": there, "argv": [], "runs": [run("dw4", "spherical", 0, 9.0)]}))
    merged_there = tmp_path / "merged_there.json"
    merged_there.write_text(json.dumps({"machine": there, "argv": ["--merge", "x.json"],
                                        "runs": [run("dw4", "none", 0, 12.3)]}))
    own = dict(run("dw4", "vector", 0, 9.2), machine=here)
    mixed = tmp_path / "mixed"
    ml_quality.main(["--merge", str(made_there), str(merged_there), str(b), "--out", str(mixed)])
    assert [r.get("machine") for r in json.loads((mixed / "ml_quality.json").read_text())["runs"]] == [there, None, None]
    md = (mixed / "ml_quality.md").read_text()
    assert f"Written on: {here}." in md and "Machine:" not in md
    b.write_text(json.dumps({"argv": [], "runs": [own], "machine": there}))
    ml_quality.main(["--merge", str(b), "--out", str(mixed)])
    assert json.loads((mixed / "ml_quality.json").read_text())["runs"][0]["machine"] == here  # its own record wins
    assert f"Machine: {here}\n" in (mixed / "ml_quality.md").read_text()

    def error(message):
        raise SystemExit(message)

    foreign = tmp_path / "speed.json"
    foreign.write_text(json.dumps({"results": []}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"runs": [')
    not_runs = tmp_path / "not_runs.json"
    not_runs.write_text(json.dumps({"argv": [], "runs": [1, 2]}))
    bad_notes = tmp_path / "bad_notes.json"
    bad_notes.write_text(json.dumps({"argv": [], "runs": [], "notes": "one note, not a list"}))
    for path in (tmp_path / "missing.json", foreign, broken, not_runs, bad_notes):
        with pytest.raises(SystemExit, match="--merge needs ml_quality.json files written by ml_quality.py; ") as e:
            common.merge_runs([str(a), str(path)], "ml_quality.py", error)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_resume_skips_only_a_run_of_the_same_setting(tmp_path, monkeypatch):
    def argv(epochs):
        return ["--targets", "dw4", "--projections", "spherical", "--epochs", str(epochs), "--n-blocks", "2",
                "--size", "8", "--n-test", "16", "--out", str(tmp_path), "--resume"]

    results = tmp_path / "ml_quality.json"
    results.write_text(json.dumps({"argv": [], "runs": [run("dw4", "spherical", 0, 9.0, blocks=2, width=8, epochs=3,
                                                            n_test=16)]}))
    trained = []

    def fake_run_one(target, projection, seed, args):
        trained.append(args.epochs)
        return run(target, projection, seed, 9.5, blocks=2, width=8, epochs=args.epochs, n_test=16)

    monkeypatch.setattr(ml_quality, "run_one", fake_run_one)
    ml_quality.main(argv(3))  # the same target, flow, seed, size, epochs and test points: kept, not re-run
    assert trained == []
    ml_quality.main(argv(6))  # the same flow and seed for longer is another run (it used to be skipped)
    assert trained == [6]
    assert [r["epochs"] for r in json.loads(results.read_text())["runs"]] == [3, 6]


def test_benchmark_commands_record_the_xla_flags_their_devices_came_from(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fab_quality.py", "--data-parallel", "--minutes", "1"])
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    # the device count is set outside the script, so its command line alone would not rerun the run
    assert common.command("fab_quality.py") == ("XLA_FLAGS=--xla_force_host_platform_device_count=2 "
                                      "python benchmarks/fab_quality.py --data-parallel --minutes 1")
    monkeypatch.delenv("XLA_FLAGS")
    assert common.command("fab_quality.py") == "python benchmarks/fab_quality.py --data-parallel --minutes 1"


def test_fab_quality_table_tells_runs_of_one_flow_apart_and_judges_the_goal():
    fab_quality = _module("fab_quality")

    md = fab_quality.table([fab_run(2000, 1, 0.174, 4121.0), fab_run(5400, 2, 0.52, 7100.0),
                            fab_run(9000, 2, 0.6, 7300.0), fab_run(5400, 2, 0.45, 7000.0, width=24)])
    goals = [line for line in md.splitlines() if line.startswith("Goal")]
    assert goals == [
        "Goal (DW4 Spherical-proj >= 50 % reverse ESS within 2 h on 2 CPU cores), dw4 spherical 3 x 16 seed 0, "
        "2000 iterations, 1 device: missed (17.4 % after 69 min).",
        "Goal (DW4 Spherical-proj >= 50 % reverse ESS within 2 h on 2 CPU cores), dw4 spherical 3 x 16 seed 0, "
        "5400 iterations, 2 devices: met (52.0 % after 118 min).",
        # 60 % but after more than 2 hours: missed
        "Goal (DW4 Spherical-proj >= 50 % reverse ESS within 2 h on 2 CPU cores), dw4 spherical 3 x 16 seed 0, "
        "9000 iterations, 2 devices: missed (60.0 % after 122 min).",
        # the same iterations and devices with a wider flow: a run of its own
        "Goal (DW4 Spherical-proj >= 50 % reverse ESS within 2 h on 2 CPU cores), dw4 spherical 3 x 24 seed 0, "
        "5400 iterations, 2 devices: missed (45.0 % after 117 min)."]
    assert ("| dw4 | spherical | 3 x 16 | 76,800 | 0 | 5400 | 7100 | 2 | 0.761 | 52.0 % | 30.0 % | 40.0 % | 7.900 "
            "| ~80 % |") in md
    assert "| dw4 | spherical | 3 x 24 | 172,800 | 0 | 5400 | 7000 | 2 | 0.771 | 45.0 % |" in md
    # a run with the standard error of its final ESS shows it, in the row and in the verdict
    md = fab_quality.table([dict(fab_run(5400, 2, 0.493, 6936.0), reverse_ess_se=0.012)])
    assert "| 0.779 | 49.3 ± 1.2 % |" in md and "missed (49.3 ± 1.2 % after 116 min)." in md


def test_fab_quality_stop_at_ends_runs_early_on_the_full_schedule(tmp_path, monkeypatch, capsys):
    fab_quality = _module("fab_quality")
    seen = {}

    def fake_fab(flow, target, **kw):  # what the benchmark asks of the library; no training
        seen.update(kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(fab_quality, "fab", fake_fab)
    with pytest.raises(KeyboardInterrupt):
        fab_quality.main(["--projections", "spherical", "--iterations", "100", "--stop-at", "40", "--n-blocks", "1",
                          "--size", "8", "--n-test", "8", "--out", str(tmp_path), "--work", str(tmp_path)])
    # the schedule spans --iterations; the run ends at --stop-at, resuming any checkpoint in --work
    assert (seen["n_iterations"], seen["stop_at_iteration"], seen["resume"]) == (100, 40, True)
    assert seen["checkpoint_path"] == os.path.join(str(tmp_path), "dw4-spherical-0.eqx")
    with pytest.raises(SystemExit):
        fab_quality.main(["--stop-at", "0", "--out", str(tmp_path)])
    assert "error: --stop-at needs an iteration >= 1, got 0" in capsys.readouterr().err
