"""Small neural-network layers with NumPy-drawn initial weights.

Why not ``eqx.nn.Linear``?  Its initialiser draws every weight with ``jax.random``, and
each draw of a new shape compiles a small XLA program the first time it runs eagerly: a
12-block flow has hundreds of differently shaped weights, which made ``make_flow`` take
20-50 s on a 2-core CPU.  Drawing the initial values with NumPy (seeded from the JAX key,
so results are still reproducible from the key) makes building a flow take well under a
second.  The layers themselves are the textbook ones:

* ``Linear``: ``y = W x + b`` with ``W, b ~ U(-1/sqrt(in), 1/sqrt(in))`` (PyTorch/Equinox
  default), optionally scaled (``scale=0`` gives a zero layer, used for identity init).
* ``MLP``: ``depth`` hidden layers of ``width`` units, SiLU activations; the last layer's
  initial scale and bias can be set (tiny coordinate heads, zero heads).
* ``SelfAttention``: multi-head scaled dot-product self-attention (Vaswani et al. 2017),
  no positional encoding, so it is permutation-equivariant over its rows.

One example per call: ``Linear``/``MLP`` take ``x: (in,)``; ``SelfAttention`` takes the set
``h: (n, size)``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["numpy_rng", "Linear", "MLP", "SelfAttention"]


def numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded deterministically from a JAX PRNG key."""
    data = np.asarray(jax.random.key_data(key)).ravel()
    return np.random.default_rng([int(v) for v in data])


def _dtype():
    return jnp.zeros(()).dtype  # float64 when jax_enable_x64 is on, else float32


class Linear(eqx.Module):
    """``y = W x + b``; ``x: (in_size,)`` -> ``(out_size,)``."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, in_size: int, out_size: int, *, key, scale: float = 1.0, zero_bias: bool = False):
        rng = numpy_rng(key)
        lim = scale / math.sqrt(max(in_size, 1))
        self.weight = jnp.asarray(rng.uniform(-lim, lim, (out_size, in_size)), dtype=_dtype())
        bias = np.zeros(out_size) if zero_bias else rng.uniform(-lim, lim, (out_size,))
        self.bias = jnp.asarray(bias, dtype=_dtype())

    def __call__(self, x):
        return self.weight @ x + self.bias


class MLP(eqx.Module):
    """``depth`` hidden layers of ``width`` with SiLU; ``final_scale`` scales the last layer's init."""

    layers: list[Linear]

    def __init__(self, in_size, out_size, width, depth, *, key, final_scale: float = 1.0,
                 zero_final_bias: bool = False):
        keys = jax.random.split(key, depth + 1)
        sizes = [in_size] + [width] * depth + [out_size]
        self.layers = [
            Linear(sizes[i], sizes[i + 1], key=keys[i], scale=final_scale if i == depth else 1.0,
                   zero_bias=zero_final_bias and i == depth)
            for i in range(depth + 1)
        ]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.silu(layer(x))
        return self.layers[-1](x)


class SelfAttention(eqx.Module):
    """Multi-head self-attention over a set: ``h: (n, size)`` -> ``(n, size)``."""

    qkv: Linear
    out: Linear
    n_heads: int = eqx.field(static=True)

    def __init__(self, size: int, n_heads: int, *, key):
        if size % n_heads:
            raise ValueError(f"attention size {size} must be divisible by n_heads {n_heads}")
        k1, k2 = jax.random.split(key)
        self.qkv = Linear(size, 3 * size, key=k1)
        self.out = Linear(size, size, key=k2)
        self.n_heads = n_heads

    def __call__(self, h):
        n, size = h.shape
        q, k, v = jnp.split(jax.vmap(self.qkv)(h).reshape(n, 3, self.n_heads, size // self.n_heads), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # (n, heads, head_size)
        logits = jnp.einsum("ihd,jhd->hij", q, k) / math.sqrt(size // self.n_heads)
        att = jax.nn.softmax(logits, axis=-1)
        return jax.vmap(self.out)(jnp.einsum("hij,jhd->ihd", att, v).reshape(n, size))
