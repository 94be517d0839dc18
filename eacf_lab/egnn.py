"""Multi-channel E(n)-equivariant graph network: the E-ACF conditioner (paper App. B.6).

EGNN (Satorras et al., ICML 2021, Eq. 3-6) extended to ``C`` vectors per node ("channels",
one per array of the conditioning half).  Fully connected, dense ``(n, n)`` tensors (n <= 22
here, so dense is simpler and faster than segment sums).  One layer, for nodes ``i, j``:

    r_ij^c = x_i^c - x_j^c                                   (relative vectors, per channel)
    m_ij   = phi_e(h_i, h_j, <r_ij^c, r_ij^c'>_{c <= c'})   (message from all invariants:
                                                             squared distances and
                                                             cross-channel inner products)
    x_i^k <- x_i^k + 1/(n-1) sum_j sum_c phi_x(m_ij)[k, c] r_ij^c / (1 + |r_ij^c|)
    h_i   <- h_i + phi_h(h_i, 1/(n-1) sum_j m_ij)

Inner products of relative vectors are invariant to rotations, reflections, translations;
the coordinate update is a sum of relative vectors with invariant weights, hence
equivariant; sums over ``j`` make everything permutation-equivariant.  The coordinate head
``phi_x`` starts tiny (x 1e-3) so the network begins close to "no update".

Outputs per node: ``n_vectors`` equivariant, translation-*invariant* vectors (the last
layer's update, i.e. "final minus initial position"), and ``n_invariant`` invariant
features (a linear read-out of ``h``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from eacf_lab.geometry import safe_norm
from eacf_lab.nn import MLP, Linear, numpy_rng

__all__ = ["EGNN", "EGNNLayer"]


def _pairwise(x):
    """``x: (n, C, d)`` -> relative vectors ``(n, n, C, d)``, invariants ``(n, n, C(C+1)/2)``."""
    rel = x[:, None] - x[None, :]
    gram = jnp.einsum("ijcd,ijed->ijce", rel, rel)
    iu, ju = jnp.triu_indices(x.shape[1])
    return rel, gram[:, :, iu, ju]


class EGNNLayer(eqx.Module):
    """One multi-channel EGNN layer mapping ``C_in`` to ``C_out`` vector channels."""

    phi_e: MLP
    phi_x: MLP
    phi_h: MLP
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(self, n_hidden, n_in, n_out, width, depth, *, key, coord_scale=1e-3):
        k1, k2, k3 = jax.random.split(key, 3)
        n_inv = n_in * (n_in + 1) // 2
        self.phi_e = MLP(2 * n_hidden + n_inv, width, width, depth, key=k1)
        # No initial bias in the coordinate head: a bias weights every neighbour alike, which
        # makes all output vectors of a node parallel (degenerate frames) at initialisation.
        self.phi_x = MLP(width, n_out * n_in, width, depth, key=k2, final_scale=coord_scale, zero_final_bias=True)
        self.phi_h = MLP(n_hidden + width, n_hidden, width, depth, key=k3)
        self.n_in, self.n_out = n_in, n_out

    def __call__(self, h, x):
        """``h: (n, H)``, ``x: (n, C_in, d)`` -> ``h: (n, H)``, ``dx: (n, C_out, d)``."""
        n, _ = h.shape
        rel, inv = _pairwise(x)
        edge_in = jnp.concatenate(
            [jnp.broadcast_to(h[:, None], (n, n, h.shape[1])), jnp.broadcast_to(h[None, :], (n, n, h.shape[1])), inv],
            axis=-1,
        )
        mask = (1.0 - jnp.eye(n, dtype=h.dtype))[:, :, None]
        m = jax.vmap(jax.vmap(self.phi_e))(edge_in) * mask  # (n, n, M)
        w = jax.vmap(jax.vmap(self.phi_x))(m).reshape(n, n, self.n_out, self.n_in)
        unit = rel / (1.0 + safe_norm(rel, axis=-1, keepdims=True))  # (n, n, C_in, d)
        dx = jnp.einsum("ijkc,ijcd->ikd", w * mask[..., None], unit) / (n - 1)
        agg = jnp.sum(m, axis=1) / (n - 1)
        h = h + jax.vmap(self.phi_h)(jnp.concatenate([h, agg], axis=-1))
        return h, dx


class EGNN(eqx.Module):
    """Multi-channel EGNN conditioner.

    Call with ``x: (n_nodes, n_channels, dim)`` (and optional ``features: (n_nodes, F)``);
    returns ``vectors: (n_nodes, n_vectors, dim)`` and ``h: (n_nodes, n_invariant)``.
    """

    h0: jax.Array
    feature_embed: Linear | None
    layers: list[EGNNLayer]
    readout: EGNNLayer
    out: Linear

    def __init__(self, n_channels, n_vectors, n_invariant, *, n_layers=3, n_hidden=64, width=64, depth=2,
                 n_features=0, key):
        keys = jax.random.split(key, n_layers + 4)
        self.h0 = jnp.asarray(numpy_rng(keys[0]).normal(0.0, 0.1, (n_hidden,)), dtype=jnp.zeros(()).dtype)
        self.feature_embed = Linear(n_features, n_hidden, key=keys[1]) if n_features else None
        self.layers = [EGNNLayer(n_hidden, n_channels, n_channels, width, depth, key=k) for k in keys[4:]]
        # The read-out layer produces the reference vectors: ordinary (not tiny) initial scale,
        # so frames built from them are well conditioned from the first step.
        self.readout = EGNNLayer(n_hidden, n_channels, n_vectors, width, depth, key=keys[2], coord_scale=1.0)
        self.out = Linear(n_hidden, n_invariant, key=keys[3])

    def __call__(self, x, features=None):
        n = x.shape[0]
        h = jnp.broadcast_to(self.h0, (n, self.h0.shape[0]))
        if self.feature_embed is not None:
            h = h + jax.vmap(self.feature_embed)(features)
        for layer in self.layers:
            h, dx = layer(h, x)
            x = x + dx
        h, vectors = self.readout(h, x)
        return vectors, jax.vmap(self.out)(jax.nn.silu(h))
