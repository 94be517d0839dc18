"""FAB: training the flow from the target energy alone (paper Sec. 3.3 and 4.3, App. C.4).

Flow Annealed importance sampling Bootstrap (Midgley et al., ICLR 2023) minimises the
alpha-divergence ``D_alpha(p || q)`` with ``alpha = 2`` (mass-covering, like maximum
likelihood) without any data: AIS (``ais.py``) moves flow samples towards
``g ∝ p^2 / q``, the distribution whose samples give the lowest-variance estimate of the
divergence's gradient, and the flow is fitted to them by importance-weighted maximum likelihood.
With the prioritised replay buffer (``buffer.py``; FAB paper Alg. 2) one iteration is:

1. AIS: ``B`` chains from the flow to ``g`` (``K`` intermediate distributions, one HMC
   transition each, per-distribution step sizes adapted towards 65 % acceptance); store
   ``(x, a, log w, log q)`` in the buffer (invalid samples are dropped).
2. Draw ``n_updates x B`` distinct entries ``∝ w`` and make ``n_updates`` gradient steps on

       L(theta) = -mean_b  w_adj,b log q_theta(x_b, a_b),
       w_adj = min(exp((1 - alpha)(log q_theta - log q_old)), w_adj_clip)   (no gradient through w_adj)

   (plus ``aux_weight`` x the collinearity loss of the Cartesian/Spherical projections).
3. Re-adjust the drawn entries' ``log w`` and ``log q_old`` to the new flow.

Training starts once the buffer holds ``buffer_min_batches`` batches (filled by AIS with the
initial flow).  Published settings (App. C.4): alpha = 2, 5 leapfrog steps, DW4: batch 128,
2 intermediate distributions, 20,000 iterations; LJ13: batch 1,024, 8 intermediate
distributions, 14,000 iterations; buffer 64 -> 512 batches; 8 updates per AIS pass; clip 10.

``fab(...)`` runs the loop with a tqdm bar, periodic evaluation (reverse ESS of the flow,
ESS of AIS towards ``p``, forward ESS and NLL on test data), a callback hook, and checkpoints
from which a run resumes on exactly the same trajectory.  With ``ema_decay`` it also keeps an
exponential moving average of the parameters (``ema.py``; not in the paper): AIS and the
gradient steps use the live flow, the evaluations and the returned flow are the average.
"""

from __future__ import annotations

import functools
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from eacf_lab import checkpoint
from eacf_lab.checks import check_dataset
from eacf_lab.estimators import forward_ess, reverse_ess
from eacf_lab.evaluate import data_terms_in_chunks
from eacf_lab.train import buffer as replay
from eacf_lab.train import parallel
from eacf_lab.train.ais import ais
from eacf_lab.train.ema import check_ema_decay, ema_init, ema_update
from eacf_lab.train.hmc import adapt_step_size
from eacf_lab.train.ml import json_roundtrip
from eacf_lab.train.optim import mask_bad_examples, robust_adam, warmup_cosine_schedule

__all__ = ["fab", "fab_loss", "evaluate_fab", "ais_pass", "PUBLISHED_FAB", "FAB_HISTORY_KEYS"]

# Published per-target settings (paper App. C.4).
PUBLISHED_FAB = {
    "dw4": dict(batch_size=128, n_intermediate=2, n_iterations=20_000, aux_weight=0.0),
    "lj13": dict(batch_size=1024, n_intermediate=8, n_iterations=14_000, aux_weight=10.0),
}
FAB_HISTORY_KEYS = ("iteration", "loss", "aux", "ais_ess", "flow_ess", "accept", "step_size", "grad_norm",
                    "skipped", "n_invalid", "buffer_count", "time")
EVAL_KEYS = ("reverse_ess", "ais_ess", "forward_ess", "nll")


def fab_loss(flow, x, a, log_q_old, *, alpha=2.0, w_adj_clip=10.0, aux_weight=0.0):
    """Importance-weighted NLL of buffer samples ``x: (B, n, d)``, ``a: (B, k, n, d)``.

    ``log_q_old: (B,)`` are the flow's log densities when the samples were stored.
    Returns ``(loss, (nll_part, aux, n_masked))``; non-finite examples are masked out.
    """
    log_q, aux = jax.vmap(flow.log_prob_and_aux)(x, a)
    log_ratio = jax.lax.stop_gradient(log_q) - log_q_old
    ok = jnp.isfinite(log_ratio)
    w_adj = jnp.minimum(jnp.exp((1.0 - alpha) * jnp.where(ok, log_ratio, 0.0)), w_adj_clip)
    per_example = jnp.where(ok, -w_adj * log_q, jnp.nan)
    loss, n_masked = mask_bad_examples(per_example)
    ok_aux = ok & jnp.isfinite(aux)
    aux_mean = jnp.sum(jnp.where(ok_aux, aux, 0.0)) / jnp.maximum(jnp.sum(ok_aux), 1)
    return loss + aux_weight * aux_mean, (loss, aux_mean, n_masked)


@eqx.filter_jit
def ais_pass(flow, target, key, step_sizes, alpha, n_chains, n_leapfrog, mesh=None):
    """One AIS pass, jitted on its own: ``alpha`` is traced, so the same compiled program serves
    filling the buffer, training (alpha = 2) and evaluation (alpha = 1, in chunks of ``n_chains``).
    ``mesh``: split the chains across its devices (data parallel)."""
    return ais(key, flow, target, n_chains, step_sizes, alpha=alpha, n_leapfrog=n_leapfrog, mesh=mesh)


@eqx.filter_jit
def _store(buf, step_sizes, res):
    """Step-size adaptation towards 65 % acceptance and storage of the AIS samples (step 1)."""
    step_sizes = jax.vmap(adapt_step_size)(step_sizes, res.accept)
    buf = replay.add(buf, res.x, res.a, res.log_w, res.log_q)
    stats = dict(ais_ess=reverse_ess(res.log_w), flow_ess=reverse_ess(res.log_w_flow),
                 accept=jnp.mean(res.accept) if res.accept.size else jnp.zeros(()),  # 0 when K = 0
                 step_size=jnp.mean(step_sizes) if step_sizes.size else jnp.zeros(()),
                 n_invalid=jnp.sum(~jnp.isfinite(res.log_w)), buffer_count=buf.count)
    return buf, step_sizes, stats


@eqx.filter_jit
def _updates(flow, opt_state, buf, key, optimizer, settings, mesh=None, ema=None):
    """Steps 2-3: ``n_updates`` gradient steps on distinct buffer draws, then re-adjustment.
    ``mesh``: every minibatch is split across its devices (the loss's mean becomes an all-reduce).
    ``ema``: the parameter average (``ema.py``, decay ``settings["ema_decay"]``), folded in after
    every step; returned updated as a fifth value (``None`` when off)."""
    s = dict(settings)
    b, m = s["batch_size"], s["n_updates"]
    x, a, _, log_q_old, index = replay.sample(buf, key, b * m)
    params, static = eqx.partition(flow, eqx.is_inexact_array)

    def update(carry, batch):
        params, opt_state, ema = carry
        xb, ab, lqb = batch
        loss_fn = lambda p: fab_loss(eqx.combine(p, static), xb, ab, lqb, alpha=s["alpha"],  # noqa: E731
                                     w_adj_clip=s["w_adj_clip"], aux_weight=s["aux_weight"])
        (loss, (_, aux, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        if ema is not None:
            ema = ema_update(ema, params, s["ema_decay"])
        return (params, opt_state, ema), (loss, aux, opt_state.last_norm, opt_state.last_skipped)

    split = lambda t: t.reshape((m, b) + t.shape[1:])  # noqa: E731
    minibatches = parallel.constrain_batch((split(x), split(a), split(log_q_old)), mesh, axis=1)
    (params, opt_state, ema), (loss, aux, norms, skipped) = jax.lax.scan(update, (params, opt_state, ema),
                                                                          minibatches)
    flow = eqx.combine(params, static)
    log_q_new = jax.vmap(flow.log_prob)(*parallel.constrain_batch((x, a), mesh))
    buf = replay.adjust(buf, index, log_q_new, s["alpha"])
    stats = dict(loss=jnp.mean(loss), aux=jnp.mean(aux), grad_norm=jnp.mean(norms), skipped=jnp.sum(skipped),
                 buffer_count=buf.count)
    return flow, opt_state, buf, stats, ema


def _dtype(flow):
    return jax.tree_util.tree_leaves(eqx.filter(flow, eqx.is_inexact_array))[0].dtype


def evaluate_fab(flow, target, *, key, step_sizes, n_samples=1024, test_data=None, n_marginal=20,
                 n_leapfrog=5, chunk_size=None, mesh=None) -> dict:
    """Quick FAB metrics: ``reverse_ess`` of the flow and ``ais_ess`` of AIS towards ``p`` (alpha = 1,
    the current step sizes) from the same ``n_samples`` chains (run in chunks of ``chunk_size``,
    default ``min(n_samples, 1024)``; rounded up to whole chunks), and with ``test_data: (N, n, d)``
    also ``forward_ess`` and ``nll`` (marginal estimator, Eq. 21; test points in chunks of 250, as
    ``evaluate`` does: memory ~ ``250 * n_marginal`` flow passes).  ESS are fractions in ``[0, 1]``.
    ``mesh``: the AIS chunks are split across its devices (``chunk_size`` divisible by their number)."""
    chunk = chunk_size or min(n_samples, 1024)
    k_ais, k_test = jax.random.split(key)
    alpha = jnp.asarray(1.0, _dtype(flow))
    parts = [ais_pass(flow, target, jax.random.fold_in(k_ais, i), jnp.asarray(step_sizes), alpha, chunk, n_leapfrog,
                      mesh) for i in range(-(-n_samples // chunk))]
    out = {"reverse_ess": float(reverse_ess(jnp.concatenate([r.log_w_flow for r in parts]))),
           "ais_ess": float(reverse_ess(jnp.concatenate([r.log_w for r in parts])))}
    if test_data is not None:
        marg, _, log_w = data_terms_in_chunks(flow, target, test_data, k_test, n_marginal, min(len(test_data), 250))
        out["forward_ess"] = float(forward_ess(log_w))
        marg = np.asarray(marg)
        out["nll"] = float(-np.mean(marg[np.isfinite(marg)])) if np.isfinite(marg).any() else float("nan")
    return out


@functools.lru_cache(maxsize=16)  # the same optimizer object => the jitted iteration is reused
def _optimizer(n_steps, init_lr, peak_lr, end_lr, warmup_steps):
    """Adam behind the App. C.1 skip/clip rule with a warmup-cosine learning rate."""
    return robust_adam(warmup_cosine_schedule(n_steps, init_lr=init_lr, peak_lr=peak_lr, end_lr=end_lr,
                                              warmup_steps=warmup_steps))


def _check_positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def fab(flow, target, *, key, n_iterations, batch_size=128, n_intermediate=2, alpha=2.0, n_leapfrog=5,
        init_step_size=0.05, buffer_min_batches=64, buffer_max_batches=512, n_updates=8, w_adj_clip=10.0,
        aux_weight=0.0, peak_lr=2e-4, init_lr=2e-5, end_lr=2e-5, warmup_fraction=0.05, test_data=None,
        eval_every=None, n_eval_samples=1024, n_marginal=20, callback=None, progress=True,
        checkpoint_path=None, checkpoint_every=None, resume=False, stop_at_iteration=None, extra_config=None,
        devices=None, ema_decay=None):
    """Train ``flow`` on ``target`` with FAB (see the module docstring for the algorithm).

    Arguments:
        key: PRNG key (AIS, buffer draws, evaluation).
        n_iterations: AIS passes after the buffer is filled (each followed by ``n_updates`` steps).
        batch_size: AIS chains per pass = minibatch size (DW4 128, LJ13 1,024).
        n_intermediate: AIS intermediate distributions ``K`` (DW4 2, LJ13 8).
        alpha: the divergence's alpha (2); n_leapfrog: leapfrog steps per HMC transition (5).
        init_step_size: initial HMC step size of every intermediate distribution (0.05: stable for
            the augmented coordinates' ``eta = 0.1``; leapfrog needs ``eps < 2 eta``; then adapted).
        buffer_min_batches, buffer_max_batches: buffer sizes in batches (64, 512).
        n_updates: gradient steps per AIS pass (8); w_adj_clip: clip of the weight correction (10).
        aux_weight: collinearity-loss weight (DW4 0, LJ13 10).
        init_lr, peak_lr, end_lr, warmup_fraction: warmup-cosine learning rate over all updates,
            with Adam behind the App. C.1 skip/clip rule.
        test_data: optional ``(N, n, d)`` held-out samples for forward ESS and NLL (evaluation only:
            FAB never trains on data).
        eval_every: iterations between evaluations (default ~20 per run; also at the end).
        n_eval_samples: flow samples / AIS chains of an evaluation; n_marginal: ``M`` of Eq. 21.
        callback: ``callback(iteration, row)`` after every iteration (``row`` has the eval metrics
            ``eval_*`` on evaluation iterations); if it returns True, training stops there (the
            checkpoint is saved; re-run with ``resume=True`` to continue).
        checkpoint_path, checkpoint_every, resume, stop_at_iteration, extra_config: as in ``ml.fit``.
        devices: data parallel, as in ``ml.fit`` (``None``, an int, a list of devices or ``"all"``):
            the AIS chains and every minibatch are split across the devices (``batch_size``
            divisible by their number); parameters, optimizer state and buffer are replicated.
            Each chain has its own key, so only float rounding depends on the device count.
        ema_decay: ``None`` (default, as published) or a decay in ``(0, 1)``, e.g. 0.999: keep an
            exponential moving average of the parameters over the gradient steps (``ema.py``).
            AIS and the updates use the live flow (the per-iteration ``flow_ess`` is the live
            flow's); the evaluations and the returned flow are the average. A checkpoint holds
            the live flow and, in its train state, the average (``"ema"``).

    Returns ``(flow, history)``: ``history`` has one entry per iteration for ``FAB_HISTORY_KEYS``
    and ``eval_iteration`` / ``eval_<metric>`` lists for the evaluations.
    """
    for name, v in (("n_iterations", n_iterations), ("batch_size", batch_size), ("n_leapfrog", n_leapfrog),
                    ("buffer_min_batches", buffer_min_batches), ("buffer_max_batches", buffer_max_batches),
                    ("n_updates", n_updates), ("n_eval_samples", n_eval_samples), ("n_marginal", n_marginal)):
        _check_positive_int(name, v)
    if isinstance(n_intermediate, bool) or not isinstance(n_intermediate, int) or n_intermediate < 0:
        raise ValueError(f"n_intermediate must be an int >= 0, got {n_intermediate!r}")
    if (target.n_nodes, target.dim) != (flow.n_nodes, flow.dim):
        raise ValueError(f"target is ({target.n_nodes}, {target.dim}) but the flow is ({flow.n_nodes}, {flow.dim})")
    if buffer_min_batches < n_updates or buffer_max_batches < buffer_min_batches:
        raise ValueError("need n_updates <= buffer_min_batches <= buffer_max_batches, got "
                         f"{n_updates}, {buffer_min_batches}, {buffer_max_batches}")
    if not (init_step_size > 0 and alpha > 0 and w_adj_clip > 0):
        raise ValueError("init_step_size, alpha and w_adj_clip must be > 0")
    check_ema_decay(ema_decay)
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")
    mesh = parallel.mesh_for_training(devices, batch_size)
    test = None
    if test_data is not None:
        test = check_dataset(test_data, flow.n_nodes, flow.dim, "test_data")

    n_steps = n_iterations * n_updates
    optimizer = _optimizer(n_steps, init_lr, peak_lr, end_lr, min(int(warmup_fraction * n_steps), n_steps - 1))
    settings = dict(batch_size=batch_size, n_intermediate=n_intermediate, alpha=float(alpha), n_leapfrog=n_leapfrog,
                    n_updates=n_updates, w_adj_clip=float(w_adj_clip), aux_weight=float(aux_weight))
    if ema_decay is not None:  # only then: checkpoints of runs without averaging keep their settings
        settings["ema_decay"] = float(ema_decay)
    train_cfg = dict(settings, n_iterations=n_iterations, init_step_size=float(init_step_size),
                     buffer_min_batches=buffer_min_batches, buffer_max_batches=buffer_max_batches,
                     init_lr=init_lr, peak_lr=peak_lr, end_lr=end_lr, warmup_fraction=warmup_fraction,
                     method="fab", target=type(target).__name__)
    config = {"flow": flow.config, "train": train_cfg, "extra": extra_config or {}}
    static_settings = tuple(sorted(settings.items()))  # hashable: part of the jit cache key
    eval_every = eval_every or max(1, n_iterations // 20)
    checkpoint_every = checkpoint_every or max(1, n_iterations // 10)
    stop = n_iterations if stop_at_iteration is None else min(int(stop_at_iteration), n_iterations)

    dtype = _dtype(flow)
    key_fill, key_iter, key_eval = jax.random.split(key, 3)
    state = dict(opt_state=optimizer.init(eqx.filter(flow, eqx.is_inexact_array)),
                 buffer=replay.init(buffer_max_batches * batch_size, flow.n_nodes, flow.dim, flow.n_aug, dtype),
                 step_sizes=jnp.full((n_intermediate,), init_step_size, dtype),
                 iteration=jnp.zeros((), jnp.int32), key_iter=key_iter, key_eval=key_eval)
    if ema_decay is not None:
        state["ema"] = ema_init(eqx.filter(flow, eqx.is_inexact_array))
    eval_keys = EVAL_KEYS if test is not None else EVAL_KEYS[:2]
    history = {k: [] for k in FAB_HISTORY_KEYS + ("eval_iteration",) + tuple("eval_" + k for k in eval_keys)}
    history["fill_time"] = []
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        header = checkpoint.peek(checkpoint_path)
        saved = {k: header["config"].get(k) for k in ("flow", "train")}
        if saved != json_roundtrip({"flow": config["flow"], "train": train_cfg}):
            raise ValueError(f"{checkpoint_path} holds a run with other settings; use another path or resume=False")
        flow, info = checkpoint.load(checkpoint_path, train_state_like=state)
        state, history = info["train_state"], info["metrics"]["history"]

    buf, step_sizes, opt_state, ema = state["buffer"], state["step_sizes"], state["opt_state"], state.get("ema")
    if mesh is not None:
        flow, buf, step_sizes, opt_state, ema = parallel.replicate((flow, buf, step_sizes, opt_state, ema), mesh)

    def averaged():
        """The flow the evaluations see and ``fab`` returns: the average when on, else the live flow."""
        return flow if ema is None else eqx.combine(ema["params"], flow)

    it0 = int(state["iteration"])
    t_offset = history["time"][-1] if history["time"] else 0.0
    t0 = time.perf_counter()
    alpha_arr = jnp.asarray(alpha, dtype)

    def ais_and_store(flow, buf, step_sizes, key):
        res = ais_pass(flow, target, key, step_sizes, alpha_arr, batch_size, n_leapfrog, mesh)
        return _store(buf, step_sizes, res)

    if it0 == 0 and not history["fill_time"]:  # fill the buffer with AIS samples of the initial flow
        i, stored = 0, lambda: int(parallel.to_local(buf.count))  # noqa: E731
        for i in tqdm(range(buffer_min_batches * 4), disable=not progress, desc="fab: filling buffer", leave=False):
            if stored() >= buffer_min_batches * batch_size:
                break
            buf, step_sizes, _ = ais_and_store(flow, buf, step_sizes, jax.random.fold_in(key_fill, i))
        if stored() < buffer_min_batches * batch_size:
            raise RuntimeError(f"the buffer holds only {stored()} valid samples after {i + 1} AIS passes; "
                               "the flow or the target produces non-finite samples")
        history["fill_time"].append(time.perf_counter() - t0)
        t_offset += history["fill_time"][-1]
        t0 = time.perf_counter()

    def save(iteration):
        ts = dict(state, opt_state=opt_state, buffer=buf, step_sizes=step_sizes,
                  iteration=jnp.asarray(iteration, jnp.int32))
        if ema is not None:
            ts["ema"] = ema
        if jax.process_index() == 0:  # several hosts: one writer (use shared storage)
            checkpoint.save(checkpoint_path, parallel.to_local(flow), config, {"history": history},
                            train_state=parallel.to_local(ts))

    def run_eval(iteration):
        m = evaluate_fab(averaged(), target, key=jax.random.fold_in(state["key_eval"], iteration),
                         step_sizes=step_sizes, n_samples=n_eval_samples, test_data=test, n_marginal=n_marginal,
                         n_leapfrog=n_leapfrog, chunk_size=batch_size, mesh=mesh)
        history["eval_iteration"].append(iteration)
        for k in eval_keys:
            history["eval_" + k].append(m[k])
        return {"eval_" + k: v for k, v in m.items()}

    bar = tqdm(total=n_iterations, initial=it0, disable=not progress, desc="fab", dynamic_ncols=True)
    for it in range(it0, stop):
        k_ais, k_draw = jax.random.split(jax.random.fold_in(state["key_iter"], it))
        buf, step_sizes, stats = ais_and_store(flow, buf, step_sizes, k_ais)
        flow, opt_state, buf, stats_u, ema = _updates(flow, opt_state, buf, k_draw, optimizer, static_settings, mesh,
                                                      ema)
        row = {k: float(v) for k, v in parallel.to_local({**stats, **stats_u}).items()}
        row.update(iteration=it + 1, time=t_offset + time.perf_counter() - t0)
        for k in FAB_HISTORY_KEYS:
            history[k].append(row[k])
        if (it + 1) % eval_every == 0 or it + 1 == n_iterations or (it == it0 and it0 == 0):
            row.update(run_eval(it + 1))
        halt = bool(callback(it + 1, row)) if callback is not None else False
        bar.update(1)
        bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "flow_ess", "eval_reverse_ess") if k in row})
        if halt:  # the callback asked to stop: a clean early stop, resumable
            stop = it + 1
            break
        if checkpoint_path is not None and (it + 1) % checkpoint_every == 0 and it + 1 < stop:
            save(it + 1)
    bar.close()
    if checkpoint_path is not None and stop > it0:
        save(stop)
    return averaged(), history
