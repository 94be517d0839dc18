"""Permutation-equivariant transformer: the Non-E-ACF conditioner (paper Sec. 4, baseline).

Reads the raw Cartesian coordinates of the conditioning arrays of each node (after
shift-CoM, so they are translation-invariant), embeds them, and runs pre-norm
self-attention blocks **without positional encoding**: permuting the nodes permutes the
outputs (permutation equivariance) but nothing makes the output rotation-equivariant.

Call with ``x: (n_nodes, n_channels, dim)`` (and optional ``features: (n_nodes, F)``);
returns ``vectors: (n_nodes, 0, dim)`` (none: the baseline uses no frame) and
``h: (n_nodes, n_invariant)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from eacf_lab.nn import MLP, Linear, SelfAttention

__all__ = ["Transformer"]


class _Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    attn: SelfAttention
    norm2: eqx.nn.LayerNorm
    mlp: MLP

    def __init__(self, size, n_heads, width, *, key):
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx.nn.LayerNorm(size)
        self.attn = SelfAttention(size, n_heads, key=k1)
        self.norm2 = eqx.nn.LayerNorm(size)
        self.mlp = MLP(size, size, width, 1, key=k2)

    def __call__(self, h):
        z = jax.vmap(self.norm1)(h)
        h = h + self.attn(z)
        return h + jax.vmap(self.mlp)(jax.vmap(self.norm2)(h))


class Transformer(eqx.Module):
    """Transformer conditioner for the Non-E-ACF; see the module docstring."""

    embed: Linear
    blocks: list[_Block]
    out: Linear
    dim: int = eqx.field(static=True)

    def __init__(self, n_channels, dim, n_invariant, *, n_layers=3, size=64, n_heads=4, width=64,
                 n_features=0, key):
        keys = jax.random.split(key, n_layers + 2)
        self.embed = Linear(n_channels * dim + n_features, size, key=keys[0])
        self.blocks = [_Block(size, n_heads, width, key=k) for k in keys[2:]]
        self.out = Linear(size, n_invariant, key=keys[1])
        self.dim = dim

    def __call__(self, x, features=None):
        n = x.shape[0]
        inp = x.reshape(n, -1)
        if features is not None:
            inp = jnp.concatenate([inp, features], axis=-1)
        h = jax.vmap(self.embed)(inp)
        for block in self.blocks:
            h = block(h)
        return jnp.zeros((n, 0, self.dim), x.dtype), jax.vmap(self.out)(jax.nn.silu(h))
