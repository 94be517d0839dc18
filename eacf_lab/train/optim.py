"""Robust optimizer of the E-ACF paper (Midgley et al. 2023, App. C.1).

Training a flow by maximum likelihood or FAB occasionally produces a huge or non-finite
gradient (a sample near a singularity of the target, a nearly collinear frame). The paper
puts Adam behind a rule over a window of the last 100 finite global gradient norms:

* **skip** the update when the norm is non-finite or larger than ``skip_factor`` x the
  window median (paper: 20; published code: 10);
* otherwise **clip** the gradient to at most ``clip_factor`` x the median (paper: 5;
  published code: 2).

Our defaults are the paper's. Until the window holds ``min_history`` norms only the
non-finite rule applies (no median yet to compare with).

The window records every finite norm, *skipped ones included* (as the published code does).
A window of accepted norms only would lock up: after a lasting rise of the gradient norm
above ``skip_factor`` x the median (training leaving a plateau does this) every later step
is skipped, the window never changes again, and training silently stops for good. Recording
skipped norms lets the median follow a lasting rise within about ``window / 2`` steps, while
a single outlier still barely moves it. Non-finite norms are never recorded.

A skipped step must leave *all* optimizer state untouched: if a zero gradient were passed
on to Adam, its moments would still decay. So the rule wraps the inner transformation
(Adam + learning rate) rather than sitting in front of it in a chain: on a skipped step the
whole inner state is kept, as ``optax.apply_if_finite`` does for the non-finite rule.
Note that the learning-rate schedule lives in the inner state and therefore counts
*accepted* steps.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "SkipClipState",
    "skip_and_clip_by_norm_window",
    "robust_adam",
    "warmup_cosine_schedule",
    "mask_bad_examples",
]


class SkipClipState(NamedTuple):
    """State of :func:`skip_and_clip_by_norm_window` (a pytree; jit/scan friendly).

    Attributes:
        norms: ``(window,)`` float32 ring buffer of the latest finite gradient norms; unfilled
            slots hold ``+inf`` (never NaN, so ``jax_debug_nans`` stays quiet).
        n_filled: int32, number of valid entries in ``norms`` (at most ``window``).
        index: int32, slot the next finite norm is written to.
        n_skipped: int32, total number of skipped updates.
        n_clipped: int32, total number of clipped updates.
        last_norm: float32, global norm of the latest raw gradient (may be inf/NaN).
        last_median: float32, window median used for the latest decision (0 before
            ``min_history`` norms were seen).
        last_skipped: bool, whether the latest update was skipped.
        inner_state: state of the wrapped transformation.
    """

    norms: jax.Array
    n_filled: jax.Array
    index: jax.Array
    n_skipped: jax.Array
    n_clipped: jax.Array
    last_norm: jax.Array
    last_median: jax.Array
    last_skipped: jax.Array
    inner_state: optax.OptState


def _window_median(norms: jax.Array, n_filled: jax.Array) -> jax.Array:
    """Median of the first ``n_filled`` valid entries (unfilled slots are +inf)."""
    s = jnp.sort(norms)  # +inf padding goes to the end
    n = jnp.maximum(n_filled, 1)
    lo = s[(n - 1) // 2]
    hi = s[n // 2]
    return jnp.where(n_filled > 0, 0.5 * (lo + hi), 0.0)


def skip_and_clip_by_norm_window(
    window: int = 100,
    skip_factor: float = 20.0,
    clip_factor: float = 5.0,
    min_history: int = 5,
    *,
    inner: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformation:
    """Skip or clip updates by comparing the gradient norm with a window median (App. C.1).

    Arguments:
        window: number of finite gradient norms kept (paper: 100).
        skip_factor: skip when ``norm > skip_factor * median`` (paper 20, code 10).
        clip_factor: clip the gradient to ``clip_factor * median`` (paper 5, code 2).
        min_history: number of norms needed before the median rules apply.
        inner: transformation applied to the (clipped) gradient, e.g. Adam. Its state is
            frozen on skipped steps. ``None`` means identity (the update is then the
            clipped gradient, or zeros when skipped).

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`SkipClipState`.
        The recorded norm is the raw (pre-clip) norm of every step whose norm is finite,
        skipped steps included (see the module docstring: otherwise a lasting rise of the
        norm would skip every later step).
    """
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be a positive int, got {window!r}")
    if not (isinstance(min_history, int) and 1 <= min_history <= window):
        raise ValueError(f"min_history must be an int in [1, window={window}], got {min_history!r}")
    if not (clip_factor > 0 and skip_factor >= clip_factor):
        raise ValueError(
            f"need 0 < clip_factor <= skip_factor, got clip_factor={clip_factor!r}, "
            f"skip_factor={skip_factor!r}"
        )
    inner = optax.identity() if inner is None else inner

    def init_fn(params):
        return SkipClipState(
            norms=jnp.full((window,), jnp.inf, jnp.float32),
            n_filled=jnp.zeros((), jnp.int32),
            index=jnp.zeros((), jnp.int32),
            n_skipped=jnp.zeros((), jnp.int32),
            n_clipped=jnp.zeros((), jnp.int32),
            last_norm=jnp.zeros((), jnp.float32),
            last_median=jnp.zeros((), jnp.float32),
            last_skipped=jnp.zeros((), bool),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None):
        norm = optax.tree.norm(updates).astype(jnp.float32)
        finite = jnp.isfinite(norm)
        ready = state.n_filled >= min_history
        median = jnp.where(ready, _window_median(state.norms, state.n_filled), 0.0)
        skip = ~finite | (ready & (norm > skip_factor * median))
        max_norm = clip_factor * median
        clip = ready & ~skip & (norm > max_norm)
        # Double where: no division by a non-finite or zero norm, even on branches not taken.
        safe_norm = jnp.where(clip, norm, 1.0)
        scale = jnp.where(clip, max_norm / safe_norm, 1.0)
        grads = jax.tree.map(
            lambda g: jnp.where(skip, jnp.zeros_like(g), g) * scale.astype(g.dtype), updates
        )
        # Fast path when no rule fires: `where(False, 0, g) * 1` is exactly `g`.
        new_updates, new_inner = inner.update(grads, state.inner_state, params)
        new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
        inner_state = optax.tree_utils.tree_where(skip, state.inner_state, new_inner)
        # Record every finite norm, skipped or not (module docstring: no lock-up).
        norms = jnp.where(finite, state.norms.at[state.index].set(norm), state.norms)
        new_state = SkipClipState(
            norms=norms,
            n_filled=jnp.where(finite, jnp.minimum(state.n_filled + 1, window), state.n_filled),
            index=jnp.where(finite, (state.index + 1) % window, state.index),
            n_skipped=state.n_skipped + skip.astype(jnp.int32),
            n_clipped=state.n_clipped + clip.astype(jnp.int32),
            last_norm=norm,
            last_median=median.astype(jnp.float32),
            last_skipped=skip,
            inner_state=inner_state,
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def robust_adam(
    learning_rate,
    *,
    window: int = 100,
    skip_factor: float = 20.0,
    clip_factor: float = 5.0,
    min_history: int = 5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam (with a constant or scheduled learning rate) behind the App. C.1 skip/clip rule.

    ``learning_rate`` is a float or an ``optax`` schedule (e.g. :func:`warmup_cosine_schedule`).
    When no rule fires, updates equal ``optax.adam(learning_rate, b1, b2, eps)`` exactly.
    """
    adam = optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )
    return skip_and_clip_by_norm_window(
        window, skip_factor, clip_factor, min_history, inner=adam
    )


def warmup_cosine_schedule(
    n_steps: int,
    *,
    init_lr: float = 2e-5,
    peak_lr: float = 2e-4,
    end_lr: float = 2e-5,
    warmup_steps: int,
) -> optax.Schedule:
    """Linear warmup ``init_lr -> peak_lr`` over ``warmup_steps``, then cosine to ``end_lr``
    at step ``n_steps`` (paper App. C.1: 2e-5 -> 2e-4 over 30 epochs -> 2e-5)."""
    if not (isinstance(n_steps, int) and n_steps >= 1):
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < n_steps):
        raise ValueError(f"warmup_steps must be an int in [0, n_steps={n_steps}), got {warmup_steps!r}")
    for name, lr in (("init_lr", init_lr), ("peak_lr", peak_lr), ("end_lr", end_lr)):
        if not (isinstance(lr, (int, float)) and 0 <= lr < float("inf")):
            raise ValueError(f"{name} must be a finite float >= 0, got {lr!r}")
    return optax.warmup_cosine_decay_schedule(
        init_value=init_lr, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=n_steps, end_value=end_lr,
    )


def mask_bad_examples(losses: jax.Array, *, max_loss: Optional[float] = None):
    """Mean of the per-example losses that are finite (and ``<= max_loss`` if given).

    Arguments:
        losses: ``(batch,)`` per-example losses; may contain NaN or +-inf.
        max_loss: optional threshold; larger losses are masked too.

    Returns:
        ``(mean, n_masked)``: a scalar (0 if every example is masked) and an int32 count.

    The gradient of ``mean`` w.r.t. ``losses`` is finite: masked entries get exactly zero
    (a ``where`` selects the value before summing, so the NaN never reaches the sum).
    Through a model, masked examples contribute ``0 x d loss_i / d theta``: this is finite
    when the bad value comes from a parameter-free term (e.g. an infinite target energy)
    but NaN if the loss's *own* derivative is infinite there (e.g. ``log`` of a zero
    density); guard such inputs with a where before the maths.
    """
    losses = jnp.asarray(losses)
    if losses.ndim != 1:
        raise ValueError(f"losses must be a 1-D (batch,) array, got shape {losses.shape}")
    ok = jnp.isfinite(losses)
    if max_loss is not None:
        ok = ok & (losses <= max_loss)
    safe = jnp.where(ok, losses, jnp.zeros_like(losses))
    n_ok = jnp.sum(ok)
    mean = jnp.sum(safe) / jnp.maximum(n_ok, 1).astype(losses.dtype)
    return mean, (losses.shape[0] - n_ok).astype(jnp.int32)
