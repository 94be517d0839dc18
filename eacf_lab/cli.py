"""``eacf-lab``: train, evaluate and sample flows from the shell.

    eacf-lab train dw4 --projection spherical --epochs 100 --out runs/dw4-sph
    eacf-lab fab dw4 --iterations 2000 --out runs/dw4-fab
    eacf-lab eval runs/dw4-sph/checkpoint.eqx --n-samples 10000
    eacf-lab sample runs/dw4-sph/checkpoint.eqx -n 1000 -o samples.npz

``train`` writes into its run folder: ``checkpoint.eqx`` (flow + train state + history, to
resume), ``flow.eqx`` (flow only, header holds the config, training cost and evaluation),
``metrics.json`` and plotly figures (``training.html``, ``energy.html``, ``distances.html``
next to one shared ``plotly.min.js``, so they open offline). Re-running the same command
resumes; a folder holding a run of another config is refused. Bad arguments print one
line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from eacf_lab.atomic import atomic_write

DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")
SIZES = ("n_invariant", "mlp_width", "mlp_depth", "egnn_layers", "egnn_hidden",
         "transformer_layers", "transformer_size", "transformer_heads")
QUICK_SIZES = dict(n_blocks=1, n_invariant=8, mlp_width=16, mlp_depth=1, egnn_layers=1, egnn_hidden=16,
                   transformer_layers=1, transformer_size=16, transformer_heads=2)


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1, default=float, allow_nan=True) + "\n")


def _write_figure(folder, name, fig):
    """``fig`` as ``folder/name`` referencing a shared ``plotly.min.js`` (works offline)."""
    js = os.path.join(folder, "plotly.min.js")
    if not os.path.exists(js):
        from plotly.offline import get_plotlyjs
        atomic_write(js, get_plotlyjs())
    atomic_write(os.path.join(folder, name), fig.to_html(include_plotlyjs="directory", full_html=True))


def _summary(metrics):
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _evaluate(flow, target_name, args, folder=None):
    import jax

    from eacf_lab import data, evaluate, targets
    from eacf_lab.viz import histograms
    test = data.load(target_name, "test")
    if args.n_test:
        test = test[:args.n_test]
    m = evaluate.evaluate(flow, targets.get(target_name), test, key=jax.random.key(args.seed + 12345),
                          n_flow_samples=args.n_samples, n_marginal=args.n_marginal)
    if folder:
        _write_figure(folder, "energy.html", histograms.energy_figure(m))
        _write_figure(folder, "distances.html", histograms.distance_figure(m))
    return m


def _load(path_or_name):
    from eacf_lab import checkpoint, pretrained
    if not os.path.exists(path_or_name) and path_or_name in pretrained.available():
        flow, info = pretrained.load(path_or_name)
    else:
        flow, info = checkpoint.load(path_or_name)
    if info["config"]["flow"].get("model") == "ecnf":
        raise UsageError(f"{path_or_name} is an E-CNF baseline, not an E-ACF; use eacf_lab.baselines "
                         "(ecnf_nll, ecnf_sample_and_log_prob) or benchmarks/ecnf_vs_eacf.py")
    return flow, info


def _new_flow(args):
    """The flow ``train`` / ``fab`` start from: ``make_flow`` with the size options (tiny with --quick)."""
    import jax
    import jax.numpy as jnp

    from eacf_lab import data, factory
    from eacf_lab.train.ml import TARGET_FLOW
    sizes = {k: getattr(args, k) for k in SIZES + ("n_blocks",) if getattr(args, k) is not None}
    if args.quick:
        sizes = {**QUICK_SIZES, **sizes}
    n_nodes, dim = data.SPECS[args.target]
    per_target = dict(TARGET_FLOW.get(args.target, {}))
    features = jnp.eye(n_nodes) if per_target.pop("atom_index_features", False) else None  # one-hot atom index
    if not args.quick:
        sizes.setdefault("n_blocks", per_target.get("n_blocks", 12))
    r_max = per_target.get("r_max", 10.0) if args.r_max is None else args.r_max
    return factory.make_flow(jax.random.key(args.seed), n_nodes, dim, args.projection, n_aug=args.n_aug,
                             n_bins=args.n_bins, r_max=r_max, inner=args.inner, eta=per_target.get("eta", 0.1),
                             node_features=features, **sizes)


def _open_run(args):
    """Create the run folder; ``(checkpoint path, extra config)``. A folder holding another run is refused."""
    from eacf_lab import checkpoint
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "checkpoint.eqx")
    extra = {"target": args.target, "seed": args.seed}
    if os.path.exists(ckpt):
        saved = checkpoint.peek(ckpt)["config"]
        if saved.get("extra") != extra:
            raise UsageError(f"{args.out} holds a run of another config ({saved.get('extra')}); use a new --out")
        print(f"resuming from {ckpt}", file=sys.stderr)
    return ckpt, extra


def _finish_run(args, flow, ckpt, metrics, shown_without_eval):
    """End of ``train`` / ``fab``: evaluate (unless --no-eval), write ``flow.eqx`` (flow + the run's
    config + metrics) and ``metrics.json``, print the evaluation (or ``shown_without_eval``)."""
    from eacf_lab import checkpoint
    if not args.no_eval:
        metrics["eval"] = _summary(_evaluate(flow, args.target, args, args.out))
    config = checkpoint.peek(ckpt)["config"]
    checkpoint.save(os.path.join(args.out, "flow.eqx"), flow, config, metrics)
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps(metrics.get("eval", shown_without_eval), indent=1, default=float))


def cmd_train(args):
    import jax

    from eacf_lab import data
    from eacf_lab.train import ml
    from eacf_lab.viz import histograms
    pub = ml.PUBLISHED[args.target]
    epochs = args.epochs or (2 if args.quick else pub["epochs"])
    aux = pub["aux_weight"] if args.aux_weight is None else args.aux_weight
    rotate = args.projection == "none" if args.rotate is None else args.rotate
    flow = _new_flow(args)
    train = data.load(args.target, "train")[:args.n_train or (64 if args.quick else None)]
    val = data.load(args.target, "val")[:args.n_val or (64 if args.quick else None)]
    ckpt, extra = _open_run(args)
    t0 = time.time()
    try:
        flow, history = ml.fit(flow, train, key=jax.random.key(args.seed + 1), epochs=epochs,
                               batch_size=args.batch_size, aux_weight=aux, rotate=rotate, val_data=val,
                               progress=not args.no_progress, checkpoint_path=ckpt, resume=True,
                               stop_at_step=args.stop_at_step, extra_config=extra,
                               devices="all" if args.data_parallel else None)
    except ValueError as e:
        if "holds a run with other settings" in str(e):
            raise UsageError(f"{args.out} holds a run of another config: {e}") from None
        raise
    _write_figure(args.out, "training.html", histograms.training_curves(history))
    cost = {"steps": history["step"][-1] if history["step"] else 0, "train_wall_s": history["time"][-1] if history["time"] else 0.0,
            "steps_per_s": ml.steps_per_second(history), "session_wall_s": time.time() - t0,
            "n_params": flow.n_params(), "machine": _machine(),
            "n_devices": jax.device_count() if args.data_parallel else 1}
    metrics = {"target": args.target, "projection": args.projection, "command": args.command_line, "train": cost,
               "final_train_nll": history["nll"][-1] if history["nll"] else None,
               "final_val_joint_nll": history["val_nll"][-1] if history["val_nll"] else None}
    _finish_run(args, flow, ckpt, metrics, metrics)


def cmd_fab(args):
    import jax

    from eacf_lab import data, targets
    from eacf_lab.train import fab
    from eacf_lab.viz import histograms
    pub = fab.PUBLISHED_FAB[args.target]
    quick = dict(iterations=10, batch_size=32, buffer_min=4, buffer_max=8) if args.quick else {}
    iterations = args.iterations or quick.get("iterations") or pub["n_iterations"]
    batch = args.batch_size or quick.get("batch_size") or pub["batch_size"]
    n_inter = pub["n_intermediate"] if args.n_intermediate is None else args.n_intermediate
    aux = pub["aux_weight"] if args.aux_weight is None else args.aux_weight
    flow = _new_flow(args)
    ckpt, extra = _open_run(args)
    test = data.load(args.target, "test")[:args.n_eval_test]
    t0 = time.time()
    try:
        flow, history = fab.fab(
            flow, targets.get(args.target), key=jax.random.key(args.seed + 1), n_iterations=iterations,
            batch_size=batch, n_intermediate=n_inter, aux_weight=aux, init_step_size=args.step_size,
            buffer_min_batches=args.buffer_min or quick.get("buffer_min", 64),
            buffer_max_batches=args.buffer_max or quick.get("buffer_max", 512), n_updates=args.n_updates,
            peak_lr=args.lr, end_lr=args.end_lr, ema_decay=args.ema_decay, test_data=test,
            eval_every=args.eval_every, n_eval_samples=args.n_eval_samples,
            progress=not args.no_progress, checkpoint_path=ckpt, resume=True,
            stop_at_iteration=args.stop_at_iteration, extra_config=extra,
            devices="all" if args.data_parallel else None)
    except ValueError as e:
        if "holds a run with other settings" in str(e):
            raise UsageError(f"{args.out} holds a run of another config: {e}") from None
        raise
    _write_figure(args.out, "training.html", histograms.fab_curves(history))
    _write_figure(args.out, "ess_vs_time.html", histograms.fab_curves(history, x="time"))
    cost = {"iterations": history["iteration"][-1] if history["iteration"] else 0,
            "train_wall_s": history["time"][-1] if history["time"] else 0.0,
            "buffer_fill_s": (history.get("fill_time") or [0.0])[0], "session_wall_s": time.time() - t0,
            "n_params": flow.n_params(), "machine": _machine(),
            "n_devices": jax.device_count() if args.data_parallel else 1}
    metrics = {"target": args.target, "projection": args.projection, "method": "fab", "command": args.command_line,
               "train": cost, "ess_curve": {k: history[k] for k in history if k.startswith("eval_")}}
    _finish_run(args, flow, ckpt, metrics, cost)


def _flow_options(p):
    p.add_argument("--projection", default="spherical", choices=["spherical", "cartesian", "vector", "none"],
                   help="E-ACF projection, or 'none' for the Non-E-ACF (default spherical)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and training (default 0)")
    p.add_argument("--n-blocks", type=_positive, help="flow blocks (default 12; aldp 20)")
    p.add_argument("--n-aug", type=_positive, default=1, help="augmented sets k, odd (default 1)")
    p.add_argument("--n-bins", type=_positive, default=8, help="spline bins (default 8)")
    p.add_argument("--r-max", type=float, help="radial spline range [0, R] (default 10; aldp 3 nm)")
    p.add_argument("--inner", choices=["affine", "spline"], default="affine", help="inner transform of cartesian/none")
    for s in SIZES:
        p.add_argument("--" + s.replace("_", "-"), type=_positive, dest=s, help=f"network size {s} (default: make_flow's)")


def cmd_eval(args):
    flow, info = _load(args.checkpoint)
    target = args.target or (info["config"].get("extra") or {}).get("target")
    if target is None:
        raise UsageError(f"{args.checkpoint} does not record its target; pass --target dw4|lj13|aldp")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    m = _evaluate(flow, target, args, args.out)
    if args.out:
        _write_json(os.path.join(args.out, "eval.json"), {"checkpoint": args.checkpoint, "target": target, **m})
    print(json.dumps({"checkpoint": args.checkpoint, "target": target, **_summary(m)}, indent=1, default=float))


def cmd_sample(args):
    import io

    import jax
    import numpy as np
    flow, _ = _load(args.checkpoint)
    if not args.output.endswith(".npz"):
        raise UsageError(f"-o must name a .npz file, got {args.output!r}")
    fn = jax.jit(jax.vmap(flow.sample_and_log_prob))
    parts = [fn(jax.random.split(jax.random.fold_in(jax.random.key(args.seed), i), 1000))
             for i in range(0, args.n, 1000)]
    x, a, log_q = (np.concatenate([np.asarray(p[j]) for p in parts])[:args.n] for j in range(3))
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, a=a, log_q=log_q)
    atomic_write(args.output, buf.getvalue())
    print(f"wrote {args.n} samples x{x.shape[1:]} a{a.shape[1:]} log_q to {args.output}")


def _machine():
    import platform

    import jax
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, jax {jax.__version__} ({jax.default_backend()})"


def _open_unit(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}")
    return v


def _positive(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _eval_options(p):
    p.add_argument("--n-samples", type=_positive, default=10_000, help="flow samples for reverse ESS, log Z, histograms (default 10000)")
    p.add_argument("--n-test", type=_positive, default=None, help="use only the first N test points (default: all)")
    p.add_argument("--n-marginal", type=_positive, default=20, help="M of the marginal NLL estimator, Eq. 21 (default 20)")


def build_parser():
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="eacf-lab", description=DESCRIPTION, formatter_class=fmt,
                epilog="Examples:\n  eacf-lab train dw4 --projection spherical --epochs 100 --out runs/dw4-sph\n"
                       "  eacf-lab eval dw4-spherical-ml\n  eacf-lab sample runs/dw4-sph/flow.eqx -n 1000 -o s.npz")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="maximum-likelihood training (published protocol by default)", formatter_class=fmt,
                       description="Train a flow by maximum likelihood on the kit's DW4, LJ13 or alanine-dipeptide "
                                   "data (paper App. C.1, C.3.2).",
                       epilog="Example:\n  eacf-lab train dw4 --projection spherical --epochs 100 --out runs/dw4-sph\n"
                              "  eacf-lab train dw4 --quick --out runs/smoke     # seconds-long smoke run")
    t.add_argument("target", choices=["dw4", "lj13", "aldp"],
                   help="dataset / target energy (aldp: alanine dipeptide, atom-index features, eta 0.5 nm)")
    t.add_argument("--out", required=True, help="run folder (created; resumed if it holds this run)")
    _flow_options(t)
    t.add_argument("--epochs", type=_positive, help="epochs (default: published, DW4 100, LJ13 400; aldp 20)")
    t.add_argument("--batch-size", type=_positive, default=32, help="minibatch size (default 32)")
    t.add_argument("--aux-weight", type=float, help="collinearity-loss weight (default: DW4 0, LJ13 10)")
    t.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                   help="random rotation of each example (default: on for --projection none)")
    t.add_argument("--n-train", type=_positive, help="use the first N training points (default all 1000)")
    t.add_argument("--n-val", type=_positive, help="use the first N validation points (default all)")
    t.add_argument("--quick", action="store_true", help="tiny network, 2 epochs, 64 points: a seconds-long smoke run")
    t.add_argument("--stop-at-step", type=_positive, help="stop early at this step (re-run to resume)")
    t.add_argument("--data-parallel", action="store_true",
                   help="split every batch across all devices (jax.devices()); --batch-size must divide evenly")
    t.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _eval_options(t)
    f = sub.add_parser("fab", help="FAB: train from the target energy alone (AIS + replay buffer, alpha = 2)",
                       formatter_class=fmt,
                       description="Train a flow with FAB (paper Sec. 3.3, App. C.4): no training data; the test set "
                                   "is used only for evaluation. Same run-folder layout as train.",
                       epilog="Example:\n  eacf-lab fab dw4 --iterations 2000 --out runs/dw4-fab\n"
                              "  eacf-lab fab dw4 --quick --out runs/fab-smoke     # seconds-long smoke run")
    f.add_argument("target", choices=["dw4", "lj13"], help="target energy")
    f.add_argument("--out", required=True, help="run folder (created; resumed if it holds this run)")
    _flow_options(f)
    f.add_argument("--iterations", type=_positive, help="AIS passes (default: published, DW4 20000, LJ13 14000)")
    f.add_argument("--batch-size", type=_positive, help="AIS chains per pass = minibatch (default: DW4 128, LJ13 1024)")
    f.add_argument("--n-intermediate", type=int, help="AIS intermediate distributions (default: DW4 2, LJ13 8)")
    f.add_argument("--n-updates", type=_positive, default=8, help="gradient steps per AIS pass (default 8)")
    f.add_argument("--buffer-min", type=_positive, help="batches in the buffer before training starts (default 64)")
    f.add_argument("--buffer-max", type=_positive, help="buffer capacity in batches (default 512)")
    f.add_argument("--step-size", type=float, default=0.05, help="initial HMC step size (default 0.05)")
    f.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    f.add_argument("--end-lr", type=float, default=2e-5, help="final learning rate of the cosine decay (default 2e-5)")
    f.add_argument("--ema-decay", type=_open_unit,
                   help="keep a moving average of the parameters with this decay in (0, 1), e.g. 0.999; "
                        "it is evaluated and saved (default: none, as published)")
    f.add_argument("--aux-weight", type=float, help="collinearity-loss weight (default: DW4 0, LJ13 10)")
    f.add_argument("--eval-every", type=_positive, help="iterations between evaluations (default: 20 per run)")
    f.add_argument("--n-eval-samples", type=_positive, default=1024, help="flow samples / AIS chains per evaluation")
    f.add_argument("--n-eval-test", type=_positive, default=1000, help="test points for forward ESS and NLL during training")
    f.add_argument("--quick", action="store_true", help="tiny network, 10 iterations of 32: a seconds-long smoke run")
    f.add_argument("--stop-at-iteration", type=_positive, help="stop early at this iteration (re-run to resume)")
    f.add_argument("--data-parallel", action="store_true",
                   help="split the AIS chains and every minibatch across all devices; --batch-size must divide evenly")
    f.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    _eval_options(f)
    e = sub.add_parser("eval", help="test NLL, ESS, log Z, KL estimate, histograms", formatter_class=fmt,
                       description="Evaluate a checkpoint (or a pretrained name) on its target's test set.",
                       epilog="Example:\n  eacf-lab eval runs/dw4-sph/flow.eqx --n-samples 10000 --out runs/dw4-sph/eval")
    e.add_argument("checkpoint", help="checkpoint file, or a name from eacf_lab.pretrained.available()")
    e.add_argument("--target", choices=["dw4", "lj13", "aldp"], help="target (default: the one recorded in the checkpoint)")
    e.add_argument("--out", help="folder for eval.json and figures (default: print only)")
    e.add_argument("--seed", type=int, default=0, help="seed of the estimators (default 0)")
    _eval_options(e)
    s = sub.add_parser("sample", help="draw samples (x, a, log q) into an .npz file", formatter_class=fmt,
                       description="Sample a checkpoint; writes arrays x (n, nodes, dim), a (n, k, nodes, dim), log_q (n,).",
                       epilog="Example:\n  eacf-lab sample dw4-spherical-ml -n 1000 -o samples.npz")
    s.add_argument("checkpoint", help="checkpoint file, or a pretrained name")
    s.add_argument("-n", type=_positive, default=1000, help="number of samples (default 1000)")
    s.add_argument("-o", "--output", required=True, help="output .npz file")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    return p


def main(argv=None):
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.command_line = "eacf-lab " + " ".join(argv)
        return {"train": cmd_train, "fab": cmd_fab, "eval": cmd_eval, "sample": cmd_sample}[args.command](args) or 0
    except UsageError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"eacf-lab: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
