"""Flow-matching training and exact-likelihood evaluation of the E-CNF baseline.

    model, history = fit_ecnf(make_ecnf(key0, 4, 2), data.load("dw4", "train"), key=key1, epochs=...)
    nll, se = ecnf_nll(model, data.load("dw4", "test")[:500])

Training needs no ODE solve: each step regresses ``v_t(x_t)`` on ``x1 - x0`` (Lipman et al.
2023, Eq. 23; see ``ecnf.py``), with a fresh ``(x0, t)`` per example and step.  Adam with a
linear-warmup cosine schedule (``optax.warmup_cosine_decay_schedule``), gradients clipped to
global norm 10.  Reproducible: the order of epoch ``e`` is ``permutation(fold_in(key_order, e))``
and the randomness of step ``s`` is ``fold_in(key_steps, s)``.

The likelihood is exact up to the solver tolerance: one adaptive ODE solve per test point with
the divergence integral (``ECNF.log_prob``).

Command line (what made ``eacf_lab/pretrained/dw4-ecnf.eqx``)::

    python -m eacf_lab.baselines.ecnf_train dw4 --out runs/dw4-ecnf --epochs 1200 --n-test 500
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from eacf_lab import checkpoint, data
from eacf_lab.checks import check_dataset
from eacf_lab.baselines.ecnf import ECNF, flow_matching_loss, make_ecnf

__all__ = ["fit_ecnf", "ecnf_nll", "ecnf_sample_and_log_prob", "main"]


def _batch_loss(model, x, key, align):
    keys = jax.random.split(key, x.shape[0])
    return jnp.mean(jax.vmap(lambda xi, k: flow_matching_loss(model, xi, key=k, align=align))(x, keys))


@eqx.filter_jit
def _step(model, opt_state, x, key, optimizer, align):
    loss, grads = eqx.filter_value_and_grad(_batch_loss)(model, x, key, align)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss, optax.global_norm(grads)


@eqx.filter_jit
def _eval_loss(model, x, key, align):
    return _batch_loss(model, x, key, align)


def fit_ecnf(model: ECNF, train_data, *, key, epochs, batch_size=128, lr=5e-4, warmup_frac=0.05, align=True,
             val_data=None, n_evals=20, progress=True, checkpoint_path=None, extra_config=None):
    """Train ``model`` by conditional flow matching on ``train_data: (N, n_nodes, dim)`` (zero-CoM).

    Arguments:
        key: PRNG key (example order, ``x0`` draws, ``t`` draws).
        epochs, batch_size: ``N // batch_size`` steps per epoch (last partial batch dropped).
        lr, warmup_frac: peak learning rate; linear warmup over that fraction of the run, then
            cosine decay to ``lr / 10``.
        align: Kabsch-align ``x0`` to ``x1`` (``ecnf.kabsch_align``; Klein et al. 2023).
        val_data: optional ``(M, n, d)``: flow-matching loss on it ``n_evals`` times (fixed key).
        checkpoint_path: if given, ``checkpoint.save`` the trained model and history there.
        extra_config: JSON-able dict stored as ``config["extra"]``.

    Returns ``(model, history)``: ``history["step"/"loss"/"grad_norm"/"time"]`` per step and
    ``history["val_step"/"val_loss"]``.
    """
    train = check_dataset(train_data, model.n_nodes, model.dim, "train_data")
    val = None if val_data is None else check_dataset(val_data, model.n_nodes, model.dim, "val_data")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(train):
        raise ValueError(f"batch_size must be an int in [1, {len(train)}], got {batch_size!r}")
    per_epoch = len(train) // batch_size
    n_steps = epochs * per_epoch
    schedule = optax.warmup_cosine_decay_schedule(lr / 10, lr, max(1, int(warmup_frac * n_steps)), n_steps, lr / 10)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    key_order, key_steps, key_val = jax.random.split(key, 3)
    eval_every = max(1, n_steps // max(n_evals, 1))
    history = {k: [] for k in ("step", "loss", "grad_norm", "time", "val_step", "val_loss")}
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps, disable=not progress, desc="ecnf", dynamic_ncols=True)
    for step in range(n_steps):
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(key_order, epoch), len(train)))
        x = jnp.asarray(train[order[i * batch_size:(i + 1) * batch_size]])
        model, opt_state, loss, gnorm = _step(model, opt_state, x, jax.random.fold_in(key_steps, step),
                                              optimizer, bool(align))
        history["step"].append(step + 1)
        history["loss"].append(float(loss))
        history["grad_norm"].append(float(gnorm))
        history["time"].append(time.perf_counter() - t0)
        if val is not None and ((step + 1) % eval_every == 0 or step + 1 == n_steps):
            history["val_step"].append(step + 1)
            history["val_loss"].append(float(_eval_loss(model, jnp.asarray(val), key_val, bool(align))))
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", val=f"{history['val_loss'][-1]:.4f}")
        bar.update(1)
    bar.close()
    if checkpoint_path is not None:
        settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, warmup_frac=warmup_frac, align=bool(align),
                        n_train=len(train), objective="conditional flow matching, linear path, sigma_min=0")
        checkpoint.save(checkpoint_path, model, {"flow": model.config, "train": settings,
                                                 "extra": extra_config or {}}, {"history": history})
    return model, history


@eqx.filter_jit
def _log_prob_chunk(model, x):
    return jax.vmap(model.log_prob)(x)


@eqx.filter_jit
def ecnf_sample_and_log_prob(model, keys):
    """``keys: (B,)`` -> ``(x: (B, n, d), log q: (B,))``: a batch of adaptive ODE solves."""
    return jax.vmap(lambda k: model.sample_and_log_prob(key=k))(keys)


def ecnf_nll(model: ECNF, test_data, *, batch_size=100):
    """Exact test NLL ``-mean log q(x)`` and its standard error over ``test_data: (N, n, d)``."""
    test = check_dataset(test_data, model.n_nodes, model.dim, "test_data")
    batch_size = min(batch_size, len(test))  # no padding beyond the data: each pad is a full ODE solve
    out = []
    for start in range(0, len(test), batch_size):
        chunk = test[start:start + batch_size]
        pad = batch_size - len(chunk)  # one compiled shape
        xs = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
        out.append(np.asarray(_log_prob_chunk(model, jnp.asarray(xs)))[:len(chunk)])
    log_q = np.concatenate(out).astype(np.float64)
    return float(-log_q.mean()), float(log_q.std(ddof=1) / np.sqrt(len(log_q))) if len(log_q) > 1 else float("nan")


def main(argv=None):
    """Train an E-CNF on a shipped dataset, evaluate its exact test NLL, write ``<out>/flow.eqx``."""
    p = argparse.ArgumentParser(prog="python -m eacf_lab.baselines.ecnf_train", description=main.__doc__)
    p.add_argument("target", choices=sorted(data.SPECS))
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--n-layers", type=int, default=3)
    p.add_argument("--n-hidden", type=int, default=32)
    p.add_argument("--no-align", action="store_true")
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n_nodes, dim = data.SPECS[args.target]
    model = make_ecnf(jax.random.key(args.seed), n_nodes, dim, n_layers=args.n_layers, n_hidden=args.n_hidden,
                      width=args.n_hidden)
    train, val = data.load(args.target, "train"), data.load(args.target, "val")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    model, history = fit_ecnf(model, train, key=jax.random.key(args.seed + 1), epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, align=not args.no_align, val_data=val)
    train_wall = time.time() - t0
    test = data.load(args.target, "test")[:args.n_test]
    t1 = time.time()
    nll, se = ecnf_nll(model, test)
    metrics = dict(history=history, train_wall_s=train_wall, n_steps=len(history["step"]), n_params=model.n_params(),
                   test_nll=nll, test_nll_se=se, n_test=len(test), eval_wall_s=time.time() - t1,
                   machine=f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, jax {jax.__version__}")
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_frac=0.05,
                    align=not args.no_align, n_train=len(train),
                    objective="conditional flow matching, linear path, sigma_min=0")
    path = os.path.join(args.out, "flow.eqx")
    checkpoint.save(path, model, {"flow": model.config, "train": settings,
                                  "extra": {"target": args.target, "seed": args.seed}}, metrics)
    print(f"{args.target}: test NLL {nll:.3f} +- {se:.3f} ({len(test)} points), train {train_wall:.0f} s -> {path}")


if __name__ == "__main__":
    main()
