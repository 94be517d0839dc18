"""FAB quality benchmark: reverse ESS against wall time, E-ACF vs Non-E-ACF (paper Sec. 4.3, App. C.4).

For every (target, projection, seed): build the flow with ``make_flow``, train it with
``eacf_lab.train.fab.fab`` at the published settings (alpha = 2, 5 leapfrog steps, buffer
64 -> 512 batches, 8 updates per AIS pass, clip 10; DW4: batch 128, 2 intermediate
distributions; LJ13: batch 1,024, 8) for ``--iterations`` or until ``--minutes`` of wall time,
evaluating the flow's reverse ESS (``--n-eval-samples`` samples), the ESS of AIS towards ``p``
and forward ESS / NLL on the test set along the way. Then a final evaluation with
``eacf_lab.evaluate`` (``--n-final-samples`` flow samples, default 100,000: the weights are
heavy-tailed, and 10,000 samples can miss their tail, giving too high an ESS with too small an
error bar). Writes ``benchmarks/results/fab_quality.json``
(every run with its ESS-vs-time curve, and the machine) and ``fab_quality.md``; next to each
run's resumable checkpoint in ``--work``, the trained flow alone with its history
(``<target>-<projection>-<seed>-flow.eqx``: what the shipped ``dw4-*-fab`` checkpoints are).

    python benchmarks/fab_quality.py --smoke                                  # seconds-long check
    python benchmarks/fab_quality.py --targets dw4 --minutes 60 --n-blocks 4 --size 32   # CPU-sized
    python benchmarks/fab_quality.py --targets lj13 --iterations 14000                  # GPU, published

``--data-parallel`` splits every batch across all JAX devices (``fab(..., devices="all")``).  On
a CPU, make one device per core first: ``XLA_FLAGS=--xla_force_host_platform_device_count=2``
(one XLA device runs its work mostly on one thread, so this is how FAB uses both cores).
Runs resume from their checkpoints in ``--work``; ``--stop-at N`` ends them at iteration ``N`` on
the learning-rate schedule of ``--iterations`` (a run stopped by hand after an evaluation then
finishes from there: final evaluation, results and flow file). ``--merge`` keeps the merged
files' notes (``--drop-notes`` to rewrite them).

Published anchors (FAB, joint reverse ESS, Spherical/Vector/Cartesian-proj): about 80 % on DW4
after 20,000 iterations of batch 128, about 60 % on LJ13 after 14,000 iterations of batch 1,024;
the Non-E-ACF is far lower. Goal on 2 CPU cores: DW4 Spherical-proj >= 50 % within 2 hours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from eacf_lab import data, make_flow, targets
from eacf_lab.evaluate import evaluate
from eacf_lab.train.fab import PUBLISHED_FAB, fab

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_results_options, command, export_flow, flow_sizes, machine,  # noqa: E402
                    merged_results, size_label, write_results)

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED_ESS = {("dw4", "spherical"): 0.8, ("lj13", "spherical"): 0.6}


def run_one(target_name, projection, seed, args) -> dict:
    n_nodes, dim = data.SPECS[target_name]
    sizes = flow_sizes(args)
    pub = PUBLISHED_FAB[target_name]
    iterations = args.iterations or (6 if args.smoke else pub["n_iterations"])
    batch = args.batch_size or (32 if args.smoke else pub["batch_size"])
    target = targets.get(target_name)
    test = data.load(target_name, "test")[:64 if args.smoke else args.n_test]
    flow = make_flow(jax.random.key(seed), n_nodes, dim, projection, **sizes)
    deadline = None if not args.minutes else time.perf_counter() + 60 * args.minutes
    path = os.path.join(args.work, f"{target_name}-{projection}-{seed}.eqx")

    def stop_on_deadline(it, row):  # stop at an evaluation once the time budget is spent
        return deadline is not None and time.perf_counter() > deadline and "eval_reverse_ess" in row

    t0 = time.perf_counter()
    kw = dict(key=jax.random.key(seed + 1), n_iterations=iterations, batch_size=batch,
              n_intermediate=pub["n_intermediate"], aux_weight=pub["aux_weight"], init_step_size=args.step_size,
              buffer_min_batches=4 if args.smoke else 64, buffer_max_batches=8 if args.smoke else 512,
              n_updates=4 if args.smoke else 8, peak_lr=args.lr, end_lr=args.end_lr,
              ema_decay=args.ema_decay, test_data=test, eval_every=args.eval_every,
              n_eval_samples=64 if args.smoke else args.n_eval_samples, n_marginal=2 if args.smoke else 20,
              progress=not args.smoke, checkpoint_path=path, checkpoint_every=args.eval_every, resume=True,
              devices="all" if args.data_parallel else None, stop_at_iteration=args.stop_at)
    flow, history = fab(flow, target, callback=stop_on_deadline, **kw)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = evaluate(flow, target, test, key=jax.random.key(seed + 2),
                 n_flow_samples=64 if args.smoke else args.n_final_samples, n_marginal=2 if args.smoke else 20)
    curve = {k: history[k] for k in history if k.startswith("eval_")}
    curve["eval_time"] = [float(np.interp(i, history["iteration"], history["time"])) for i in history["eval_iteration"]]
    final = {k: v for k, v in m.items() if not isinstance(v, dict)}
    # The flow-only file with the final evaluation and the training history (4 significant digits;
    # `histograms.fab_curves` plots it): what eacf_lab/pretrained/dw4-{spherical,none}-fab.eqx are copies of.
    short = {k: [float(f"{v:.4g}") for v in vs] for k, vs in history.items()}
    export_flow(path, flow, {"eval": final, "history": short, "train": {"iterations": history["iteration"][-1],
                                                                        "train_wall_s": history["time"][-1],
                                                                        "n_params": flow.n_params()}})
    return {"target": target_name, "projection": projection, "seed": seed, "iterations": history["iteration"][-1],
            "command": command("fab_quality.py"), "machine": machine(),
            "n_devices": jax.device_count() if args.data_parallel else 1,
            "batch_size": batch, "n_params": flow.n_params(), "flow_config": flow.config,
            "train_wall_s": history["time"][-1], "session_wall_s": train_s,
            "buffer_fill_s": (history.get("fill_time") or [0.0])[0],
            "iterations_per_s": (history["iteration"][-1] - 1) / max(history["time"][-1] - history["time"][0], 1e-9),
            "eval_wall_s": time.perf_counter() - t0, "curve": curve,
            **final}


def _percent(fraction) -> str:
    return "" if fraction is None else f"~{100 * fraction:.0f} %"


def _ess(r) -> str:
    """A run's final reverse ESS, with its standard error where the run recorded one."""
    se = f" ± {100 * r['reverse_ess_se']:.1f}" if r.get("reverse_ess_se") is not None else ""
    return f"{100 * r['reverse_ess']:.1f}{se} %"


def _label(r) -> str:
    """A run's name in the lists below the table: the same flow and seed may have run at several settings."""
    return (f"{r['target']} {r['projection']} {size_label(r)} seed {r['seed']}, {r['iterations']} iterations, "
            f"{r.get('n_devices', 1)} device{'s' if r.get('n_devices', 1) > 1 else ''}")


def table(runs) -> str:
    lines = ["| target | flow | size (blocks x width) | params | seed | iterations | train wall (s) | devices | it/s | "
             "reverse ESS | AIS ESS (last eval) | forward ESS | NLL | published ESS |", "|---" * 14 + "|"]
    for r in runs:
        ais_ess = r["curve"]["eval_ais_ess"][-1] if r["curve"].get("eval_ais_ess") else float("nan")
        lines.append(f"| {r['target']} | {r['projection']} | {size_label(r)} | {r['n_params']:,} | {r['seed']} | "
                     f"{r['iterations']} | {r['train_wall_s']:.0f} | "
                     f"{r.get('n_devices', 1)} | {r['iterations_per_s']:.3f} | {_ess(r)} | "
                     f"{100 * ais_ess:.1f} % | "
                     f"{100 * r['forward_ess']:.1f} % | {r['nll']:.3f} | "
                     f"{_percent(PUBLISHED_ESS.get((r['target'], r['projection'])))} |")
    for r in runs:
        if (r["target"], r["projection"]) == ("dw4", "spherical"):
            met = r["reverse_ess"] >= 0.5 and r["train_wall_s"] <= 7200
            lines += ["", f"Goal (DW4 Spherical-proj >= 50 % reverse ESS within 2 h on 2 CPU cores), {_label(r)}: "
                          f"{'met' if met else 'missed'} ({_ess(r)} after {r['train_wall_s'] / 60:.0f} min)."]
    lines += ["", "Flow reverse ESS at the evaluations (estimates from the evaluation's AIS chains): "
                  "iteration (wall time): ESS", ""]
    for r in runs:
        c = r["curve"]
        pts = ", ".join(f"{i} ({t:.0f} s): {100 * e:.1f} %"
                        for i, t, e in zip(c["eval_iteration"], c["eval_time"], c["eval_reverse_ess"]))
        lines.append(f"* {_label(r)}: {pts}")
    if any("command" in r for r in runs):
        lines += ["", "Commands:", ""]
        lines += [f"* {_label(r)}: `{r['command']}`" for r in runs if "command" in r]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=["dw4"], choices=["dw4", "lj13"])
    p.add_argument("--projections", nargs="+", default=["spherical", "none"],
                   choices=["spherical", "vector", "cartesian", "none"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--iterations", type=int, help="override the published iterations (DW4 20000, LJ13 14000)")
    p.add_argument("--minutes", type=float, help="stop each run after this much wall time (at an evaluation)")
    p.add_argument("--stop-at", type=int, metavar="ITERATION",
                   help="end each run at this iteration; the learning-rate schedule still spans --iterations "
                        "(with an evaluation's checkpoint in --work, e.g. of a run stopped by hand, the run "
                        "resumes there and ends at once: final evaluation, results, flow file)")
    p.add_argument("--batch-size", type=int, help="override the published batch (DW4 128, LJ13 1024)")
    p.add_argument("--n-blocks", type=int, help="override the 12 blocks")
    p.add_argument("--size", type=int, help="set n_invariant, mlp_width, egnn_hidden, transformer_size")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--end-lr", type=float, default=2e-5, help="final learning rate (default 2e-5)")
    p.add_argument("--ema-decay", type=float, help="average the parameters with this decay (default: no averaging)")
    p.add_argument("--step-size", type=float, default=0.05, help="initial HMC step size")
    p.add_argument("--eval-every", type=int, default=50, help="iterations between evaluations (and checkpoints)")
    p.add_argument("--n-eval-samples", type=int, default=2048, help="flow samples per evaluation")
    p.add_argument("--n-final-samples", type=int, default=100_000,
                   help="flow samples for the final reverse ESS and its standard error (default 100,000)")
    p.add_argument("--n-test", type=int, default=1000, help="test points (forward ESS, NLL)")
    p.add_argument("--data-parallel", action="store_true",
                   help="split every batch across all JAX devices (on a CPU, set "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=<cores> first)")
    p.add_argument("--smoke", action="store_true", help="tiny flows, a few iterations: seconds")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    p.add_argument("--work", default=os.path.join("runs", "fab_quality"), help="checkpoints (resumable runs)")
    add_results_options(p)
    args = p.parse_args(argv)
    if args.stop_at is not None and args.stop_at < 1:
        p.error(f"--stop-at needs an iteration >= 1, got {args.stop_at}")
    if args.n_final_samples < 2:
        p.error(f"--n-final-samples needs at least 2 samples, got {args.n_final_samples}")
    merged = merged_results(args, "fab_quality.py", p.error)
    if merged is not None:
        print(write(args, "fab_quality", merged))
        return
    if args.smoke:
        args.eval_every = 3
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    name = "fab_quality_smoke" if args.smoke else "fab_quality"
    runs = []
    for t in args.targets:
        for proj in args.projections:
            for seed in args.seeds:
                runs.append(run_one(t, proj, seed, args))
                print(json.dumps({k: runs[-1][k] for k in ("target", "projection", "seed", "iterations",
                                                              "reverse_ess", "train_wall_s")}), flush=True)
                write(args, name, runs)
    print(write(args, name, runs))


def write(args, name, runs) -> str:
    return write_results(args.out, name, f"FAB quality ({'smoke' if args.smoke else 'benchmark'})", "fab_quality.py", runs,
                         table(runs), args.note)

if __name__ == "__main__":
    main()
