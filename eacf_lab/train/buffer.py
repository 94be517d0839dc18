"""Prioritised replay buffer of FAB (Midgley et al., ICLR 2023, Sec. 3.3, Alg. 2), pure-functional.

AIS is the expensive part of FAB, so its samples are kept and re-used. The buffer stores
``(x, a)`` with the AIS log-weight ``log w`` and the flow's ``log q_old`` at the time of storage,
and is sampled **in proportion to w** (without replacement within one draw: Gumbel top-k on
``log w``).  Because the flow changes after storage, the loss re-weights a sample by
``w_adj = (q_theta / q_old)^(1 - alpha)`` (clipped, see ``fab.py``), and after the updates the
stored values are re-adjusted so that they stay consistent with the current flow:

    log w   <- log w + (1 - alpha) (log q_new - log q_old),    log q_old <- log q_new.

The buffer is a fixed-capacity ring (``capacity = max_batches x batch``): new samples overwrite
the oldest.  Entries with a non-finite ``x``, ``a``, ``log w`` or ``log q`` are never stored.
Every function returns a new :class:`Buffer`; all shapes are static, so they jit and scan.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Buffer", "init", "add", "sample", "adjust"]


class Buffer(NamedTuple):
    """``x: (C, n, d)``, ``a: (C, k, n, d)``, ``log_w: (C,)``, ``log_q_old: (C,)``;
    ``count``: filled entries (``<= C``); ``head``: next slot to write (ring position)."""

    x: jax.Array
    a: jax.Array
    log_w: jax.Array
    log_q_old: jax.Array
    count: jax.Array
    head: jax.Array

    @property
    def capacity(self) -> int:
        return self.log_w.shape[0]


def init(capacity: int, n_nodes: int, dim: int, n_aug: int, dtype=jnp.float32) -> Buffer:
    """An empty buffer for ``capacity`` samples of ``x: (n_nodes, dim)``, ``a: (n_aug, n_nodes, dim)``."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    return Buffer(x=jnp.zeros((capacity, n_nodes, dim), dtype), a=jnp.zeros((capacity, n_aug, n_nodes, dim), dtype),
                  log_w=jnp.full((capacity,), -jnp.inf, dtype), log_q_old=jnp.zeros((capacity,), dtype),
                  count=jnp.zeros((), jnp.int32), head=jnp.zeros((), jnp.int32))


def add(buffer: Buffer, x, a, log_w, log_q) -> Buffer:
    """Store the valid rows of a batch ``x: (B, n, d)``, ``a: (B, k, n, d)``, ``log_w, log_q: (B,)``.

    Invalid rows (anything non-finite) are dropped; valid rows fill consecutive ring slots.
    """
    b = log_w.shape[0]
    if b > buffer.capacity:
        raise ValueError(f"a batch of {b} does not fit a buffer of capacity {buffer.capacity}")
    valid = (jnp.isfinite(log_w) & jnp.isfinite(log_q)
             & jnp.isfinite(x.reshape(b, -1)).all(axis=1) & jnp.isfinite(a.reshape(b, -1)).all(axis=1))
    rank = jnp.cumsum(valid) - 1  # position of each valid row among the valid rows
    slot = jnp.where(valid, (buffer.head + rank) % buffer.capacity, buffer.capacity)  # out of range = dropped
    n_new = jnp.sum(valid).astype(jnp.int32)
    put = lambda store, new: store.at[slot].set(new.astype(store.dtype), mode="drop")  # noqa: E731
    return Buffer(x=put(buffer.x, x), a=put(buffer.a, a), log_w=put(buffer.log_w, log_w),
                  log_q_old=put(buffer.log_q_old, log_q),
                  count=jnp.minimum(buffer.count + n_new, buffer.capacity),
                  head=(buffer.head + n_new) % buffer.capacity)


def sample(buffer: Buffer, key, n: int):
    """Draw ``n`` distinct entries with probability ``∝ w`` (Gumbel top-k on ``log w``).

    Returns ``(x: (n, ...), a, log_w: (n,), log_q_old: (n,), index: (n,))``.  The caller must
    make sure ``count >= n`` (FAB starts training only after ``min_batches`` are stored).
    """
    filled = jnp.arange(buffer.capacity) < buffer.count
    gumbel = jax.random.gumbel(key, (buffer.capacity,), buffer.log_w.dtype)
    score = jnp.where(filled & jnp.isfinite(buffer.log_w), buffer.log_w + gumbel, -jnp.inf)
    _, index = jax.lax.top_k(score, n)
    return buffer.x[index], buffer.a[index], buffer.log_w[index], buffer.log_q_old[index], index


def adjust(buffer: Buffer, index, log_q_new, alpha: float) -> Buffer:
    """After updating the flow: ``log w += (1 - alpha)(log q_new - log q_old)`` and
    ``log q_old = log q_new`` at ``index: (m,)`` (distinct indices; ``log_q_new: (m,)``).
    A non-finite ``log_q_new`` sets ``log w = -inf``: the entry is never drawn again."""
    old = buffer.log_q_old[index]
    new_w = buffer.log_w[index] + (1.0 - alpha) * (log_q_new - old)
    ok = jnp.isfinite(new_w) & jnp.isfinite(log_q_new)
    return buffer._replace(log_w=buffer.log_w.at[index].set(jnp.where(ok, new_w, -jnp.inf)),
                           log_q_old=buffer.log_q_old.at[index].set(jnp.where(ok, log_q_new, 0.0)))
