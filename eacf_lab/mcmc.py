"""MALA / HMC with many parallel chains, optional parallel tempering, and ``integrated_autocorr_time``.

* HMC (Duane et al. 1987; Neal 2011): ``n_leapfrog`` leapfrog steps of size ``eps`` with a
  fresh Gaussian momentum, then Metropolis-Hastings on the Hamiltonian.  ``n_leapfrog = 1``
  is MALA (Roberts & Tweedie 1996): ``x' = x + h grad log p(x) + sqrt(2h) xi``, ``h = eps^2/2``.
* Parallel tempering (Swendsen & Wang 1986; Geyer 1991): replicas at inverse temperatures
  ``betas`` (``betas[0]`` must be 1) target ``p(x)^beta``; after every transition adjacent
  pairs propose to swap states, even pairs after even steps and odd pairs after odd steps,
  accepted with ``min(1, exp((beta_i - beta_j)(log p(x_j) - log p(x_i))))``.
* Step sizes (one per temperature) adapt only during burn-in (``adapt=True``):
  ``log eps += rate * (mean acceptance over chains - target)``.  Afterwards pass the returned
  ``step_size`` back in, fixed, so the production chain is a time-homogeneous Markov chain.
* ``zero_com=True`` runs the chain on the zero centre-of-mass hyperplane (the noise and the
  gradient are projected onto it): the right sampler for translation-invariant energies.
* ``integrated_autocorr_time`` is Sokal's estimator with automatic windowing, as in emcee
  (Goodman & Weare 2010; Foreman-Mackey et al. 2013), on the chain-averaged autocorrelation.

``log_prob_fn`` takes one example ``x: event_shape`` and returns a scalar; chains are
vmapped inside.  One jitted ``_transition`` moves every chain one step; ``run_chains`` calls
it from a plain Python loop (it compiles once, whatever ``n_steps``/``thin``, and burn-in
and production share it).  Everything random follows from ``key`` and the step number:
same key, same bits; give each run (burn-in, production, ...) its own key.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MCMCResult", "run_chains", "integrated_autocorr_time"]


class MCMCResult(NamedTuple):
    """What ``run_chains`` returns.  ``T`` temperatures, ``C`` chains.  ``x`` and ``step_size``
    are JAX arrays (to continue a run); the rest are NumPy arrays on the host.

    x: ``(T, C, *event)`` final states of all replicas (to continue a run).
    samples: ``(n_steps // thin, C, *event)`` states at ``beta = 1``, every ``thin`` steps.
    log_prob: ``(n_steps, C)`` ``log p`` at ``beta = 1`` after every step (for tau_int).
    accept_rate: ``(T,)`` mean acceptance probability per temperature.
    swap_rate: ``(T - 1,)`` mean swap acceptance probability per adjacent pair.
    step_size: ``(T,)`` step sizes at the end (adapted if ``adapt``).
    """

    x: jax.Array
    samples: jax.Array
    log_prob: jax.Array
    accept_rate: jax.Array
    swap_rate: jax.Array
    step_size: jax.Array


def _project(v, zero_com):
    return v - jnp.mean(v, axis=-2, keepdims=True) if zero_com else v


def _hmc_step(log_prob_fn, beta, x, lp, g, eps, key, n_leapfrog, zero_com):
    """One HMC transition on ``p^beta`` for one chain; ``lp, g`` are ``log p`` and its gradient.

    ``n_leapfrog`` leapfrog steps of size ``eps`` with a standard-normal momentum, then an
    accept/reject on the change of the Hamiltonian.  With ``n_leapfrog = 1`` this is exactly
    MALA with ``h = eps^2 / 2``: ``x' = x + h beta grad log p(x) + sqrt(2h) xi``.
    """
    k_mom, k_acc = jax.random.split(key)
    p0 = _project(jax.random.normal(k_mom, x.shape, x.dtype), zero_com)

    def leapfrog(carry, _):
        y, p, _, gy = carry
        p = p + 0.5 * eps * beta * gy
        y = y + eps * p
        lp_y, gy = jax.value_and_grad(log_prob_fn)(y)
        gy = _project(gy, zero_com)
        return (y, p + 0.5 * eps * beta * gy, lp_y, gy), None

    (y, p1, lp_y, g_y), _ = jax.lax.scan(leapfrog, (x, p0, lp, g), None, length=n_leapfrog)
    log_alpha = beta * (lp_y - lp) - 0.5 * jnp.sum(p1**2) + 0.5 * jnp.sum(p0**2)
    log_alpha = jnp.where(jnp.isfinite(log_alpha), log_alpha, -jnp.inf)  # reject inf/NaN
    alpha = jnp.exp(jnp.minimum(log_alpha, 0.0))
    accept = jax.random.uniform(k_acc, (), lp.dtype) < alpha
    pick = lambda new, old: jnp.where(accept, new, old)
    return pick(y, x), pick(lp_y, lp), pick(g_y, g), alpha


def _swap(betas, x, lp, g, key, parity):
    """Replica exchange between pairs (t, t+1) with ``t % 2 == parity``; one chain column."""
    n_t = betas.shape[0]
    t = jnp.arange(n_t - 1)
    log_a = (betas[:-1] - betas[1:]) * (lp[1:] - lp[:-1])
    a = jnp.exp(jnp.minimum(log_a, 0.0))
    do = (jax.random.uniform(key, (n_t - 1,), lp.dtype) < a) & (t % 2 == parity)
    up = jnp.concatenate([do, jnp.zeros((1,), bool)])  # replica t takes t+1's state
    down = jnp.concatenate([jnp.zeros((1,), bool), do])  # replica t+1 takes t's state
    idx = jnp.arange(n_t)
    src = jnp.where(up, idx + 1, jnp.where(down, idx - 1, idx))
    tried = t % 2 == parity
    return x[src], lp[src], g[src], jnp.stack([jnp.where(tried, a, 0.0), tried.astype(a.dtype)])


@eqx.filter_jit
def _init(log_prob_fn, x, zero_com):
    """``log p`` and its (projected) gradient for all replicas ``x: (T, C, *event)``."""
    lp, g = jax.vmap(jax.vmap(jax.value_and_grad(log_prob_fn)))(x)
    return lp, _project(g, zero_com)


@eqx.filter_jit
def _transition(log_prob_fn, state, betas, key, i, adapt, target_accept, adapt_rate, n_leapfrog, zero_com):
    """One HMC/MALA transition of every replica, step-size adaptation if ``adapt``, then swaps.

    ``state = (x, lp, g, eps)``; ``i`` (the step number) is folded into ``key`` and picks
    even or odd swap pairs;
    ``adapt`` is a traced bool, so burn-in and production share one compiled function.
    Returns the new state and ``(log p at beta = 1: (C,), acceptance: (T,), swaps: (2, T-1))``.
    """
    x, lp, g, eps = state
    n_t, n_c = x.shape[:2]
    k_step, k_swap = jax.random.split(jax.random.fold_in(key, i))
    step = jax.vmap(jax.vmap(_hmc_step, in_axes=(None, None, 0, 0, 0, None, 0, None, None)),
                    in_axes=(None, 0, 0, 0, 0, 0, 0, None, None))
    keys = jax.random.split(k_step, (n_t, n_c))
    x, lp, g, alpha = step(log_prob_fn, betas, x, lp, g, eps, keys, n_leapfrog, zero_com)
    acc = jnp.mean(alpha, axis=1)
    eps = jnp.where(adapt, eps * jnp.exp(adapt_rate * (acc - target_accept)), eps)
    if n_t > 1:
        swap = jax.vmap(_swap, in_axes=(None, 1, 1, 1, 0, None), out_axes=(1, 1, 1, 1))
        x, lp, g, a_sw = swap(betas, x, lp, g, jax.random.split(k_swap, n_c), i % 2)
        sw = jnp.sum(a_sw, axis=1)  # (2, T-1): summed acceptance probability, number of tries
    else:
        sw = jnp.zeros((2, 0), lp.dtype)
    return (x, lp, g, eps), (lp[0], acc, sw)


def run_chains(
    log_prob_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    key: jax.Array,
    n_steps: int,
    step_size,
    thin: int = 1,
    n_leapfrog: int = 1,
    betas=None,
    adapt: bool = False,
    target_accept: float | None = None,
    adapt_rate: float = 0.05,
    zero_com: bool = False,
) -> MCMCResult:
    """Run ``C`` HMC/MALA chains (at ``T`` temperatures when ``betas`` is given) for ``n_steps``.

    Arguments:
        log_prob_fn: one example ``x: event_shape`` -> scalar ``log p(x)`` (unnormalised).
        x0: ``(C, *event)`` starting states, or ``(T, C, *event)`` with ``betas``.
        key: PRNG key.  n_steps: transitions (a multiple of ``thin``).
        step_size: scalar or ``(T,)`` initial leapfrog step sizes ``eps``.
        n_leapfrog: leapfrog steps per transition; 1 = MALA (``h = eps^2/2``), >1 = HMC.
        thin: keep the ``beta = 1`` state every ``thin`` steps.
        betas: ``(T,)`` inverse temperatures, ``betas[0] == 1``, decreasing; None = no tempering.
        adapt: adapt ``eps`` towards ``target_accept`` (burn-in only); the default target
            is 0.574 for MALA (Roberts & Rosenthal 1998) and 0.65 for HMC (Beskos et al. 2013).
        zero_com: chains live on the zero-CoM hyperplane (event ``(n_nodes, dim)``).
    """
    x0 = jnp.asarray(x0)
    if betas is None:
        betas, x0 = jnp.ones((1,), x0.dtype), x0[None]
    betas = jnp.asarray(betas, x0.dtype)
    if betas.ndim != 1 or float(betas[0]) != 1.0 or bool(jnp.any(jnp.diff(betas) >= 0)):
        raise ValueError(f"betas must be 1-D, start at 1 and decrease, got {np.asarray(betas)}")
    if x0.ndim < 3 or x0.shape[0] != betas.shape[0]:
        raise ValueError(f"x0 must be (n_chains, *event), or (n_temps={betas.shape[0]}, n_chains, *event) "
                         f"with betas, got {tuple(x0.shape)}")
    if n_steps <= 0 or thin <= 0 or n_steps % thin:
        raise ValueError(f"n_steps must be a positive multiple of thin, got n_steps={n_steps}, thin={thin}")
    if zero_com and x0.ndim != 4:
        raise ValueError(f"zero_com needs events (n_nodes, dim), got x0 of shape {tuple(x0.shape)}")
    eps = jnp.broadcast_to(jnp.asarray(step_size, x0.dtype), betas.shape)
    if zero_com:
        x0 = _project(x0, True)
    if target_accept is None:
        target_accept = 0.574 if n_leapfrog == 1 else 0.65
    lp, g = _init(log_prob_fn, x0, bool(zero_com))
    # strong (non-weak) types, as the transition returns them: one compilation, not two
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), (x0, lp, g, eps))
    adapt = jnp.asarray(bool(adapt))
    samples, lps, accs, sws = [], [], [], []
    for i in range(n_steps):
        state, (lp1, acc, sw) = _transition(log_prob_fn, state, betas, key, np.asarray(i, np.int32), adapt,
                                            float(target_accept), float(adapt_rate), int(n_leapfrog), bool(zero_com))
        lps.append(lp1), accs.append(acc), sws.append(sw)
        if (i + 1) % thin == 0:
            samples.append(state[0][0])
    lps, accs, sws, samples = jax.device_get((lps, accs, sws, samples))  # host-side stacking:
    sws = np.sum(np.stack(sws), axis=0)  # jnp.stack of n arrays would compile once per n
    swap_rate = sws[0] / np.maximum(sws[1], 1.0)
    return MCMCResult(state[0], np.stack(samples), np.stack(lps), np.mean(np.stack(accs), axis=0),
                      swap_rate, state[3])


def integrated_autocorr_time(series, c: float = 5.0) -> float:
    """Integrated autocorrelation time of a scalar series, e.g. the energy along the chains.

    Arguments:
        series: ``(n_steps,)`` or ``(n_steps, n_chains)``.
        c: window constant; the window ``M`` is the smallest with ``M >= c * tau(M)``.

    Returns:
        ``tau_int = 1 + 2 sum_{t=1}^{M} rho(t)``, where ``rho`` is the autocorrelation averaged
        over chains (Sokal 1997; emcee's ``integrated_time``).  The mean is taken over *all*
        chains, so chains that have not mixed with each other show up as a large tau.
        ``tau_int`` is in steps: ``n_steps * n_chains / tau_int`` is the effective sample size.
    """
    s = np.asarray(series, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] < 4 or not np.all(np.isfinite(s)):
        raise ValueError(f"series must be finite, (n_steps >= 4,) or (n_steps, n_chains), got shape {np.shape(series)}")
    n = s.shape[0]
    s = s - s.mean()
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(s, n=nfft, axis=0)
    acov = np.fft.irfft(f * np.conj(f), n=nfft, axis=0)[:n].mean(axis=1) / n
    if acov[0] <= 0:
        raise ValueError("series is constant: the autocorrelation time is undefined")
    taus = 2.0 * np.cumsum(acov / acov[0]) - 1.0
    window = np.arange(n) >= c * taus
    m = int(np.argmax(window)) if window.any() else n - 1
    return float(taus[m])
