"""Speed benchmark (issue 7): training steps, sampling with log q, compile time, peak memory.

For every target (DW4, LJ13) and projection, on the paper's configuration (``make_flow``
defaults: 12 blocks, EGNN 3 layers, MLP 64-64, 128 invariant features, float32):

* the ML training step of ``eacf_lab.train.ml`` (loss, gradient, robust Adam update) at batch
  32 / 128 / 1,024: time to trace (``lower``) and compile, and the warm time per step;
* ``jax.vmap(flow.sample_and_log_prob)`` at 128 / 1,024 samples: compile and warm time;
* the number of parameters, the memory one call needs (XLA's memory analysis of the compiled
  call), peak host memory (``ru_maxrss``) and, on a GPU, peak device memory.  A call that needs
  more memory than the device has (LJ13 training at batch 1,024 on a 24 GiB CPU machine) is
  listed as not measured, with the figure, instead of ending the run.

Every time is recorded as wall-clock seconds **and** as CPU seconds of this process
(``time.process_time``): on a shared CPU machine the wall clock measures the neighbours too,
while the CPU time is what the computation itself cost (XLA's CPU runtime may use several
threads, so CPU time can also exceed wall time on an idle machine).  On a GPU read the wall
clock.  The load average before and after is recorded.

    python benchmarks/speed.py --smoke --out-dir /tmp/speed     # seconds; tiny flows (CI)
    python benchmarks/speed.py                                  # full; writes benchmarks/results/speed.*
    python benchmarks/speed.py --targets dw4 --budget-s 3600    # stop starting measurements after 1 h

Runs unchanged on a GPU (``pip install -e .[cuda12]``): nothing here assumes a CPU.  Results go
to ``speed.json`` (every measurement, the machine) and ``speed.md`` (a table with the
published reference numbers and the speed-up), rewritten after every measurement so a long
run that is stopped still leaves its results.  A measurement left out for the time budget is
listed as such, never dropped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from eacf_lab import data, make_flow
from eacf_lab.atomic import atomic_write
from eacf_lab.train import ml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Clock, machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# Published implementation (JAX 0.4.13, haiku), 2-core CPU, float32, Spherical-proj, ~5.3M
# parameters (issue 7).  Seconds.
PUBLISHED = {
    "dw4": {"sample_128": 0.30, "sample_1024": 2.0, "train_32": 1.23, "compile_train": 626.0, "compile_sample": 18.0},
    "lj13": {"sample_128": 2.3, "sample_1024": 61.0, "train_32": 7.3, "compile_train": 1239.0, "compile_sample": 21.0},
}
PUBLISHED_N_PARAMS = 5.3e6
SMOKE_SIZES = dict(n_blocks=2, n_invariant=16, mlp_width=16, mlp_depth=1, egnn_layers=1, egnn_hidden=16)


def memory() -> dict:
    """Peak host RSS of this process so far (MiB) and, where the device reports it, its peak memory."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_mib"] = stats["peak_bytes_in_use"] / 2**20
    return out


class TooBig(Exception):
    """A compiled call needs more memory than the device has: recorded as not measured."""


def available_bytes() -> int:
    """Memory one call may use: the accelerator's limit where it reports one, else the host's
    available memory (``MemAvailable``: free plus reclaimable caches; free pages where unknown)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def timed_calls(fn, args, min_seconds, max_reps):
    """Warm time per call: one untimed call, then repeat until ``min_seconds`` or ``max_reps``."""
    jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    while len(walls) < max_reps and (not walls or sum(walls) < min_seconds):
        with Clock() as c:
            jax.block_until_ready(fn(*args))
        walls.append(c.wall)
        cpus.append(c.cpu)
    return {"reps": len(walls), "wall_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)),
            "wall_all_s": [round(w, 4) for w in walls]}


def compile_fn(fn, args):
    """``jax.jit(fn)`` traced and compiled for ``args``; returns the executable and the timings."""
    with Clock() as lo:
        lowered = jax.jit(fn).lower(*args)
    with Clock() as co:
        compiled = lowered.compile()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older JAX: one dict per device
    mem = compiled.memory_analysis()
    need = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes) if mem is not None else 0
    if need > available_bytes():
        raise TooBig(f"needs {need / 2**30:.1f} GiB (XLA memory analysis), {available_bytes() / 2**30:.1f} GiB available")
    return compiled, {"call_memory_mib": need / 2**20, "gflop": float(cost.get("flops", float("nan"))) / 1e9, "trace_wall_s": lo.wall, "trace_cpu_s": lo.cpu, "compile_wall_s": co.wall,
                      "compile_cpu_s": co.cpu, "total_compile_wall_s": lo.wall + co.wall,
                      "total_compile_cpu_s": lo.cpu + co.cpu}


def bench_train(flow, train, batch, aux_weight, args):
    """The library's ML training step (``ml._train_step``) at one batch size."""
    optimizer, _ = ml.make_optimizer(1000, max(1, len(train) // batch))
    params, static = eqx.partition(flow, eqx.is_array)
    opt_state = optimizer.init(eqx.filter(flow, eqx.is_inexact_array))
    reps = np.random.default_rng(0).integers(0, len(train), batch)
    x = jnp.asarray(train[reps])

    def step(params, opt_state, x, key):
        new, opt_state, stats = ml._train_step(eqx.combine(params, static), opt_state, x, key, optimizer,
                                               float(aux_weight), False)
        return eqx.filter(new, eqx.is_array), opt_state, stats

    call_args = (params, opt_state, x, jax.random.key(1))
    compiled, timing = compile_fn(step, call_args)
    run = timed_calls(compiled, call_args, args.min_seconds, args.max_reps)
    return {**timing, **run, "per_s": 1.0 / run["wall_s"], "examples_per_s": batch / run["wall_s"],
            "gflop_per_cpu_s": timing["gflop"] / run["cpu_s"]}


def bench_sample(flow, n, args):
    """``jax.vmap(flow.sample_and_log_prob)`` for ``n`` samples."""
    params, static = eqx.partition(flow, eqx.is_array)

    def sample(params, key):
        f = eqx.combine(params, static)
        return jax.vmap(f.sample_and_log_prob)(jax.random.split(key, n))

    call_args = (params, jax.random.key(2))
    compiled, timing = compile_fn(sample, call_args)
    run = timed_calls(compiled, call_args, args.min_seconds, args.max_reps)
    x, _, log_q = compiled(*call_args)
    ok = bool(np.all(np.isfinite(np.asarray(log_q))) and np.all(np.isfinite(np.asarray(x))))
    return {**timing, **run, "samples_per_s": n / run["wall_s"], "finite": ok,
            "gflop_per_cpu_s": timing["gflop"] / run["cpu_s"]}


def write(results, meta, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    doc = {**meta, "load_average_now": list(os.getloadavg()), "results": results}
    atomic_write(os.path.join(out_dir, "speed.json"), json.dumps(doc, indent=1, default=float) + "\n")
    atomic_write(os.path.join(out_dir, "speed.md"), table(doc))


def _fmt(v, unit="s"):
    if v is None:
        return "—"
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def table(doc) -> str:
    m = doc["machine"]
    lines = [f"# Speed benchmark{' (smoke)' if doc['smoke'] else ''}", "",
             f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}; jax {m['jax']} "
             f"({m['backend']}, {m['device_kind']}); XLA_FLAGS=`{m['xla_flags'] or '(none)'}`.",
             f"Load average at start {doc['load_average_start']}, now {doc['load_average_now']} "
             "(a shared machine: compare CPU seconds).", "",
             "Times per call, median of `reps` warm calls. *wall* = wall clock, *cpu* = CPU seconds of the "
             "process. Compile = trace (`jit.lower`) + XLA compile. Speed-up = published / ours (wall; cpu).", "",
             "*throughput* = steps/s (training) or samples/s (sampling), from the warm wall time. *memory* = what "
             "one call needs by XLA's memory analysis (arguments + outputs + temporaries) / peak host RSS of "
             "the process so far.", "",
             "| target | flow | params | what | reps | ours wall | ours cpu | published | speed-up wall | speed-up cpu "
             "| throughput | memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        pub = PUBLISHED.get(r["target"], {}) if not doc["smoke"] else {}
        head = f"| {r['target']} | {r['projection']} | {r['n_params'] / 1e6:.2f}M"
        if "skipped" in r:
            lines.append(f"{head} | {r['what']} | — | not measured: {r['skipped']} | | | | | | |")
            continue
        ref = pub.get(r["what"])
        train = r["what"].startswith("train")
        rate = f"{1 / r['wall_s']:.3g} steps/s" if train else f"{r['samples_per_s']:.3g} samples/s"
        mem = (f"{r['call_memory_mib']:,.0f} / " if "call_memory_mib" in r else "") + f"{r['peak_rss_mib']:,.0f} MiB"
        rows = [(r["what"], r["wall_s"], r["cpu_s"], ref, r["reps"], rate, mem)]
        ref_c = pub.get("compile_train" if train else "compile_sample")
        rows.append((f"compile {r['what']}", r["total_compile_wall_s"], r["total_compile_cpu_s"], ref_c, 1, "", ""))
        for what, wall, cpu, ref, reps, rate, mem in rows:
            su_w = f"{ref / wall:.1f}x" if ref else ""
            su_c = f"{ref / cpu:.1f}x" if ref and cpu > 0 else ""
            lines.append(f"{head} | {what} | {reps} | {_fmt(wall)} | {_fmt(cpu)} | {_fmt(ref) if ref else ''} | "
                         f"{su_w} | {su_c} | {rate} | {mem} |")
    lines += ["", f"Published parameter count ~{PUBLISHED_N_PARAMS / 1e6:.1f}M; ours: see the params column "
              "(why they differ: `notes` in speed.json).", ""]
    if doc.get("notes"):
        lines += ["Notes:", ""] + [f"* {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny flows and batches: a seconds-long check")
    p.add_argument("--targets", nargs="+", default=["dw4", "lj13"], choices=["dw4", "lj13"])
    p.add_argument("--projections", nargs="+", default=["spherical"],
                   choices=["spherical", "cartesian", "vector", "none"])
    p.add_argument("--train-batches", nargs="+", type=int, default=[32, 128, 1024])
    p.add_argument("--sample-batches", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--min-seconds", type=float, default=5.0, help="repeat warm calls until this much time")
    p.add_argument("--max-reps", type=int, default=10, help="at most this many timed warm calls")
    p.add_argument("--budget-s", type=float, default=None, help="start no new measurement after this many seconds")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--note", action="append", default=[], help="a note for the results file (repeatable)")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_batches, args.sample_batches = [8], [16]
        args.min_seconds, args.max_reps = 0.0, 2
    t_start = time.perf_counter()
    meta = {"machine": machine(), "smoke": args.smoke, "load_average_start": list(os.getloadavg()),
            "published": PUBLISHED, "published_n_params": PUBLISHED_N_PARAMS, "notes": args.note,
            "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    # Headline numbers first (the smallest sample and train sizes of every target), then the rest,
    # so a run cut short by --budget-s still covers every target.
    jobs = [(0 if size == sizes[0] else 1, t, p, kind, size) for t in args.targets for p in args.projections
            for kind, sizes in (("sample", args.sample_batches), ("train", args.train_batches)) for size in sizes]
    jobs.sort(key=lambda j: j[0])
    flows, results = {}, []
    for _, target, projection, kind, size in jobs:
        n_nodes, dim = data.SPECS[target]
        if (target, projection) not in flows:
            flow = make_flow(jax.random.key(0), n_nodes, dim, projection, **(SMOKE_SIZES if args.smoke else {}))
            flows[target, projection] = flow
            print(f"{target} {projection}: {flow.n_params():,} parameters", flush=True)
        flow = flows[target, projection]
        base = {"target": target, "projection": projection, "n_params": flow.n_params(),
                "dtype": str(jax.tree.leaves(eqx.filter(flow, eqx.is_inexact_array))[0].dtype),
                "flow_config": flow.config}
        what = f"{kind}_{size}"
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            results.append({**base, "what": what, "skipped": f"time budget of {args.budget_s:.0f} s used up"})
            print(f"  {target} {what}: not measured (time budget)", flush=True)
        else:
            try:
                if kind == "train":
                    r = bench_train(flow, data.load(target, "train"), size, ml.PUBLISHED[target]["aux_weight"], args)
                else:
                    r = bench_sample(flow, size, args)
                results.append({**base, "what": what, "batch": size, **r, **memory()})
                print(f"  {target} {what}: compile {r['total_compile_wall_s']:.1f} s wall / {r['total_compile_cpu_s']:.1f} s "
                      f"cpu; warm {r['wall_s']:.4f} s wall / {r['cpu_s']:.4f} s cpu ({r['reps']} reps)", flush=True)
            except (TooBig, jax.errors.JaxRuntimeError) as e:
                if isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" not in str(e):
                    raise
                results.append({**base, "what": what, "batch": size, "skipped": f"out of memory: {str(e)[:200]}"})
                print(f"  {target} {what}: not measured (out of memory: {str(e)[:200]})", flush=True)
        write(results, meta, args.out_dir)
    write(results, meta, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
