"""Exponential moving average of the parameters (Polyak averaging; Polyak & Juditsky 1992).

A stochastic optimizer leaves the parameters jittering around where the loss would send them;
the average of the last few hundred iterates sits closer to that point. Importance weights
``p / q`` are sensitive to small errors of ``q`` in the tails, so a flow whose parameters are
averaged can have a higher ESS than the last iterate (an option of ``fab.fab``; the paper's
runs do not average). After gradient step ``t`` (counted from 0):

    decay_t = min(decay, (1 + t) / (10 + t))
    ema_t   = decay_t * ema_{t-1} + (1 - decay_t) * params_t

The warm-up of ``decay_t`` (as in TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``) keeps the average from clinging to the random initial parameters: the first
steps have a short memory, which grows to ``1 / (1 - decay)`` steps.

The state is a pytree ``{"params": <params pytree>, "count": int32 ()}``: the same structure as
the parameters (``eqx.filter(flow, eqx.is_inexact_array)``), so it checkpoints, replicates and
travels through ``jax.lax.scan`` like them. ``eqx.combine(state["params"], flow)`` is the
averaged flow.
"""

import jax
import jax.numpy as jnp

__all__ = ["ema_init", "ema_update", "ema_decay_at", "check_ema_decay"]


def check_ema_decay(decay):
    """Raise a one-line ``ValueError`` unless ``decay`` is ``None`` (off) or a float in ``(0, 1)``."""
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1):
        raise ValueError(f"ema_decay must be None (no averaging) or a number in (0, 1), got {decay!r}")


def ema_init(params):
    """The average before any step: the parameters themselves, ``count = 0``."""
    return {"params": jax.tree_util.tree_map(jnp.asarray, params), "count": jnp.zeros((), jnp.int32)}


def ema_decay_at(count, decay):
    """``min(decay, (1 + count) / (10 + count))``: the decay applied at step ``count`` (a scalar)."""
    c = jnp.asarray(count, jnp.result_type(float))  # float64 when x64 is on
    return jnp.minimum(decay, (1.0 + c) / (10.0 + c))


def ema_update(state, params, decay):
    """Fold ``params`` (after a gradient step) into the average ``state``; returns the new state."""
    d = ema_decay_at(state["count"], decay)
    avg = jax.tree_util.tree_map(lambda e, p: (d * e + (1.0 - d) * p).astype(p.dtype), state["params"], params)
    return {"params": avg, "count": state["count"] + 1}
