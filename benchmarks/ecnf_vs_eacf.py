"""E-ACF vs E-CNF: sampling with log-density, timed in one run, and both test NLLs (issue 7).

The paper's claim (Sec. 6, Table 1 / App. C): the E-ACF draws samples *with* their density in
one network pass and is >= 10x faster than an equivariant CNF, which solves an ODE with the
divergence integral.  This script measures that ratio on one machine, in one process:

* E-ACF: ``jax.vmap(flow.sample_and_log_prob)`` of a shipped checkpoint (``dw4-spherical-ml``,
  ``lj13-spherical-ml``); the density is the joint ``log q(x, a)`` that importance weights use.
* E-CNF: ``jax.vmap(model.sample_and_log_prob)`` of ``eacf_lab/baselines/ecnf.py``: adaptive
  Dopri5, ``PIDController(rtol=1e-5, atol=1e-5)``, exact divergence (``dw4-ecnf`` for DW4).
  Under ``vmap`` the batch takes as many solver steps as its slowest member (diffrax's batched
  ``while_loop``); the mean/max steps per sample are recorded as well.

Per model and batch size (128, 1,024): trace + XLA compile time, then the median warm time of
``reps`` calls; wall clock **and** CPU seconds of this process (on a shared CPU the wall clock
also measures the neighbours; compare CPU seconds there).  The ratio is E-CNF / E-ACF.
Test NLLs on the same test points: the E-CNF's exact ``-log q(x)`` (one adaptive ODE solve per
point) and the E-ACF's marginal estimator (Eq. 21, M = 20) from ``eacf_lab.evaluate``.

LJ13 E-CNF: ``--lj13-ecnf PATH`` (a checkpoint of ``python -m eacf_lab.baselines.ecnf_train
lj13 ...``); without it an *untrained* E-CNF of the DW4 model's size is timed, which is
labelled as such (an untrained field is nearly constant, so its solver takes fewer steps than
a trained one: the ratio is then a lower bound) and no LJ13 E-CNF NLL is reported.

    python benchmarks/ecnf_vs_eacf.py --smoke --out-dir /tmp/ecnf   # seconds: tiny untrained models
    python benchmarks/ecnf_vs_eacf.py --lj13-ecnf runs/lj13-ecnf/flow.eqx   # writes benchmarks/results/

Writes ``ecnf_vs_eacf.json`` (every measurement, the machine) and ``ecnf_vs_eacf.md`` (tables),
rewritten after every measurement so a stopped run still leaves its results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import equinox as eqx
import jax
import numpy as np

from eacf_lab import checkpoint, data, make_flow, pretrained, targets
from eacf_lab.atomic import atomic_write
from eacf_lab.baselines.ecnf import ECNF as ECNFModel
from eacf_lab.baselines.ecnf import make_ecnf
from eacf_lab.baselines.ecnf_train import ecnf_nll
from eacf_lab.evaluate import evaluate
from eacf_lab.geometry import sample_zero_com_gaussian

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Clock, machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EACF = {"dw4": "dw4-spherical-ml", "lj13": "lj13-spherical-ml"}
ECNF = {"dw4": "dw4-ecnf"}
PAPER_MIN_RATIO, GOAL_RATIO = 10.0, 30.0
SMOKE_EACF = dict(n_blocks=1, n_invariant=8, mlp_width=8, mlp_depth=1, egnn_layers=1, egnn_hidden=8)
SMOKE_ECNF = dict(n_layers=1, n_hidden=8, width=8, depth=1, n_freq=1)


def _sampler(kind, model, n):
    """``(params, key) -> (x: (n, nodes, dim), log q: (n,))`` for the E-ACF or the E-CNF."""
    params, static = eqx.partition(model, eqx.is_array)

    def sample(params, key):
        m = eqx.combine(params, static)
        keys = jax.random.split(key, n)
        if kind == "eacf":
            x, _, log_q = jax.vmap(m.sample_and_log_prob)(keys)
        else:
            x, log_q = jax.vmap(lambda k: m.sample_and_log_prob(key=k))(keys)
        return x, log_q

    return sample, params


def bench_sample(kind, model, n, *, min_seconds, max_reps, long_call_s=60.0):
    """Compile ``n`` samples with log q, then time warm calls (median); checks finiteness.

    The first call after compiling is not counted, unless it took ``>= long_call_s``: then it is
    the one rep (warm-up effects are far below a minute; a second LJ13 E-CNF call costs many).
    """
    fn, params = _sampler(kind, model, n)
    args = (params, jax.random.key(2))
    with Clock() as lo:
        lowered = jax.jit(fn).lower(*args)
    with Clock() as co:
        compiled = lowered.compile()
    with Clock() as first:
        x, log_q = jax.block_until_ready(compiled(*args))
    walls, cpus = ([first.wall], [first.cpu]) if first.wall >= long_call_s else ([], [])
    while len(walls) < max_reps and (not walls or sum(walls) < min_seconds):
        with Clock() as c:
            jax.block_until_ready(compiled(*args))
        walls.append(c.wall)
        cpus.append(c.cpu)
    return {"batch": n, "compile_wall_s": lo.wall + co.wall, "compile_cpu_s": lo.cpu + co.cpu, "reps": len(walls),
            "wall_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)),
            "wall_all_s": [round(w, 4) for w in walls], "samples_per_s": n / float(np.median(walls)),
            "first_call_wall_s": first.wall, "first_call_is_rep": first.wall >= long_call_s,
            "finite": bool(np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(log_q))))}


@eqx.filter_jit
def _solver_steps(model, keys):
    """Adaptive Dopri5 steps of each sample's solve ``z -> x`` (each alone, not batched)."""
    def one(k):
        z = sample_zero_com_gaussian(k, model.n_nodes, model.dim)
        return model.integrate(z, t0=0.0, t1=1.0)[2]
    return jax.lax.map(one, keys)


def load_models(target, args):
    """``(eacf, eacf_source, ecnf, ecnf_source, ecnf_metrics)`` for ``target``; ``ecnf_metrics``
    is the trained E-CNF's checkpoint metrics, ``None`` for an untrained one."""
    n_nodes, dim = data.SPECS[target]
    if args.smoke:
        eacf = make_flow(jax.random.key(0), n_nodes, dim, "spherical", **SMOKE_EACF)
        ecnf = make_ecnf(jax.random.key(0), n_nodes, dim, **SMOKE_ECNF)
        return eacf, "untrained tiny E-ACF (smoke)", ecnf, "untrained tiny E-CNF (smoke)", None
    eacf, _ = pretrained.load(EACF[target])
    path = args.lj13_ecnf if target == "lj13" else None
    if target in ECNF:
        ecnf, info = pretrained.load(ECNF[target])
        return eacf, f"pretrained {EACF[target]}", ecnf, f"pretrained {ECNF[target]}", info["metrics"]
    if path:
        ecnf, info = checkpoint.load(path)
        if not isinstance(ecnf, ECNFModel):
            raise ValueError(f"--lj13-ecnf {path} holds a {type(ecnf).__name__}; expected an E-CNF checkpoint")
        if (ecnf.n_nodes, ecnf.dim) != (n_nodes, dim):
            raise ValueError(f"--lj13-ecnf {path} is an E-CNF for ({ecnf.n_nodes}, {ecnf.dim}); "
                             f"expected ({n_nodes}, {dim})")
        epochs = info["config"]["train"]["epochs"]
        return eacf, f"pretrained {EACF[target]}", ecnf, f"{path} (trained {epochs} epochs)", info["metrics"]
    dw4_cfg = checkpoint.peek(pretrained.path(ECNF["dw4"]))["config"]["flow"]
    sizes = {k: dw4_cfg[k] for k in ("n_layers", "n_hidden", "width", "depth", "n_freq")}
    ecnf = make_ecnf(jax.random.key(0), n_nodes, dim, **sizes)
    return eacf, f"pretrained {EACF[target]}", ecnf, "UNTRAINED E-CNF, dw4-ecnf sizes (speed only)", None


def nlls(target, eacf, ecnf, ecnf_metrics, n_test, args):
    """Both test NLLs on the first ``n_test`` test points (E-CNF only if trained).

    The E-CNF's exact NLL is taken from its checkpoint metrics when they were computed on the
    same first ``n_test`` test points (``ecnf_train`` evaluates exactly those), else solved here.
    """
    test = data.load(target, "test")[:n_test]
    out = {"n_test": len(test)}
    with Clock() as c:
        ev = evaluate(eacf, targets.get(target), test, key=jax.random.key(0), n_flow_samples=n_test,
                      n_marginal=args.n_marginal, batch_size=min(250, n_test))
    out.update(eacf_nll=ev["nll"], eacf_nll_se=ev["nll_se"], eacf_nll_wall_s=c.wall, n_marginal=args.n_marginal)
    if ecnf_metrics is not None and ecnf_metrics.get("n_test") == len(test) and "test_nll" in ecnf_metrics:
        out.update(ecnf_nll=ecnf_metrics["test_nll"], ecnf_nll_se=ecnf_metrics["test_nll_se"],
                   ecnf_nll_source="checkpoint metrics (same test points)")
    elif ecnf_metrics is not None:
        with Clock() as c:
            nll, se = ecnf_nll(ecnf, test, batch_size=100)
        out.update(ecnf_nll=nll, ecnf_nll_se=se, ecnf_nll_wall_s=c.wall, ecnf_nll_source="solved here")
    return out


def write(doc, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    doc = {**doc, "load_average_now": _load()}
    atomic_write(os.path.join(out_dir, "ecnf_vs_eacf.json"), json.dumps(doc, indent=1, default=float) + "\n")
    atomic_write(os.path.join(out_dir, "ecnf_vs_eacf.md"), table(doc))


def _f(v, unit=" s"):
    return "—" if v is None else (f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}")


def table(doc) -> str:
    m = doc["machine"]
    lines = [f"# E-ACF vs E-CNF: sampling with log-density{' (smoke)' if doc['smoke'] else ''}", "",
             f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}; jax {m['jax']} ({m['backend']}, "
             f"{m['device_kind']}). Load average at start {doc['load_average_start']}, at the end "
             f"{doc['load_average_now']} (shared machine: compare CPU seconds).", "",
             "Warm time per call (median of `reps`), after compile; ratio = E-CNF / E-ACF "
             f"(paper: >= {PAPER_MIN_RATIO:.0f}x; goal: >= {GOAL_RATIO:.0f}x). E-CNF: adaptive Dopri5, "
             "rtol = atol = 1e-5, exact divergence; steps = Dopri5 steps per sample solved alone (mean / max).", ""]
    for t in doc["targets"]:
        lines += [f"## {t['target']}", "", f"* E-ACF: {t['eacf_source']}, {t['eacf_params']:,} parameters",
                  f"* E-CNF: {t['ecnf_source']}, {t['ecnf_params']:,} parameters"
                  + (f"; solver steps {t['ecnf_steps_mean']:.1f} / {t['ecnf_steps_max']} (mean / max of "
                     f"{t['ecnf_steps_n']} samples)" if "ecnf_steps_mean" in t else ""),
                  f"* run: `{t.get('command', doc['command'])}`; load average {t.get('load_average_start')} -> "
                  f"{t.get('load_average_end', '(running)')}",
                  "", "| batch | E-ACF wall | E-ACF cpu | E-CNF wall | E-CNF cpu | ratio wall | ratio cpu | "
                  "compile E-ACF (wall) | compile E-CNF (wall) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in t["timings"]:
            a, c = r["eacf"], r["ecnf"]
            lines.append(f"| {r['batch']} | {_f(a['wall_s'])} | {_f(a['cpu_s'])} | {_f(c['wall_s'])} | "
                         f"{_f(c['cpu_s'])} | **{r['ratio_wall']:.1f}x** | {r['ratio_cpu']:.1f}x | "
                         f"{_f(a['compile_wall_s'])} | {_f(c['compile_wall_s'])} |")
        if "nll" in t:
            n = t["nll"]
            ecnf_part = (f"E-CNF (exact, ODE; {n['ecnf_nll_source']}) **{n['ecnf_nll']:.3f} ± {n['ecnf_nll_se']:.3f}**"
                         if "ecnf_nll" in n else "E-CNF: not reported (untrained model)")
            lines += ["", f"Test NLL on the first {n['n_test']} test points: E-ACF (marginal estimator, "
                      f"M = {n['n_marginal']}) **{n['eacf_nll']:.3f} ± {n['eacf_nll_se']:.3f}**; {ecnf_part}."]
        lines.append("")
    if doc.get("notes"):
        lines += ["Notes:", ""] + [f"* {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def _load():
    return [round(v, 2) for v in os.getloadavg()]


def _previous(doc, args):
    """``doc`` with the other targets (and notes) of an earlier run on this machine kept."""
    path = os.path.join(args.out_dir, "ecnf_vs_eacf.json")
    if not os.path.isfile(path):
        return doc
    with open(path) as f:
        old = json.load(f)
    if old.get("machine") != doc["machine"] or old.get("smoke") != doc["smoke"]:
        raise ValueError(f"--update: {path} was written on another machine or mode; expected {doc['machine']}")
    run = {"command": old["command"], "load_average_start": old.get("load_average_start"),
           "load_average_end": old.get("load_average_now")}  # for entries written before per-target fields
    kept = [{**run, **t} for t in old.get("targets", []) if t["target"] not in args.targets]
    notes = old.get("notes", []) + [n for n in doc["notes"] if n not in old.get("notes", [])]
    return {**doc, "targets": kept, "notes": notes, "command": f"{old['command']} ; then {doc['command']}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny untrained models, batch 4, no NLLs: a CI check")
    p.add_argument("--targets", nargs="+", default=["dw4", "lj13"], choices=["dw4", "lj13"])
    p.add_argument("--batches", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--lj13-ecnf", default=None, help="checkpoint of a trained LJ13 E-CNF (else: untrained)")
    p.add_argument("--n-test", type=int, default=500, help="DW4 test points for both NLLs (0: skip the NLLs)")
    p.add_argument("--lj13-batches", nargs="+", type=int, default=[128],
                   help="LJ13 batch sizes (an LJ13 E-CNF solve costs ~100x a DW4 one)")
    p.add_argument("--lj13-n-test", type=int, default=20, help="LJ13 test points for both NLLs")
    p.add_argument("--n-marginal", type=int, default=20, help="M of the E-ACF marginal estimator")
    p.add_argument("--n-steps-probe", type=int, default=16, help="samples whose solver steps are counted")
    p.add_argument("--min-seconds", type=float, default=3.0, help="repeat warm calls until this much time")
    p.add_argument("--max-reps", type=int, default=5)
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--note", action="append", default=[], help="a note for the results file (repeatable)")
    p.add_argument("--update", action="store_true",
                   help="keep the other targets already in <out-dir>/ecnf_vs_eacf.json (same machine only)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batches, args.lj13_batches, args.min_seconds, args.max_reps = [4], [4], 0.0, 1
        args.n_test, args.lj13_n_test, args.n_steps_probe = 0, 0, 2  # the NLL passes compile minutes: not in CI
    doc = {"machine": machine(), "smoke": args.smoke, "load_average_start": _load(),
           "command": "python benchmarks/ecnf_vs_eacf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "paper_min_ratio": PAPER_MIN_RATIO, "goal_ratio": GOAL_RATIO, "notes": args.note, "targets": []}
    this_command = doc["command"]
    if args.update:
        doc = _previous(doc, args)
    for target in args.targets:
        eacf, eacf_src, ecnf, ecnf_src, ecnf_metrics = load_models(target, args)
        batches, n_test = (args.lj13_batches, args.lj13_n_test) if target == "lj13" else (args.batches, args.n_test)
        t = {"target": target, "eacf_source": eacf_src, "ecnf_source": ecnf_src,
             "ecnf_trained": ecnf_metrics is not None,
             "eacf_params": eacf.n_params(), "ecnf_params": ecnf.n_params(), "ecnf_config": ecnf.config,
             "command": this_command, "load_average_start": _load(), "timings": []}
        doc["targets"] = [u for u in doc["targets"] if u["target"] != target] + [t]
        n_probe = min(args.n_steps_probe, 4) if target == "lj13" else args.n_steps_probe
        steps = np.asarray(_solver_steps(ecnf, jax.random.split(jax.random.key(3), n_probe)))
        t.update(ecnf_steps_mean=float(steps.mean()), ecnf_steps_max=int(steps.max()), ecnf_steps_n=len(steps))
        print(f"{target}: E-ACF {eacf_src} ({eacf.n_params():,}), E-CNF {ecnf_src} ({ecnf.n_params():,}); "
              f"E-CNF solver steps mean {steps.mean():.1f}, max {steps.max()}", flush=True)
        for n in batches:  # E-ACF and E-CNF back to back, same process, same batch
            r = {"batch": n}
            for kind, model in (("eacf", eacf), ("ecnf", ecnf)):
                r[kind] = bench_sample(kind, model, n, min_seconds=args.min_seconds, max_reps=args.max_reps)
            r["ratio_wall"] = r["ecnf"]["wall_s"] / r["eacf"]["wall_s"]
            r["ratio_cpu"] = r["ecnf"]["cpu_s"] / max(r["eacf"]["cpu_s"], 1e-9)
            t["timings"].append(r)
            print(f"  batch {n}: E-ACF {r['eacf']['wall_s']:.4f} s, E-CNF {r['ecnf']['wall_s']:.4f} s wall "
                  f"-> {r['ratio_wall']:.1f}x (cpu {r['ratio_cpu']:.1f}x); compile {r['eacf']['compile_wall_s']:.1f} / "
                  f"{r['ecnf']['compile_wall_s']:.1f} s", flush=True)
            write(doc, args.out_dir)
        if n_test > 0:
            t["nll"] = nlls(target, eacf, ecnf, ecnf_metrics, n_test, args)
            print(f"  NLL: {t['nll']}", flush=True)
        t["load_average_end"] = _load()
        write(doc, args.out_dir)
    write(doc, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
