"""The core coupling transform of E-ACF (paper Sec. 3.3, Alg. 1 lines 4-9).

Transforms the arrays of one half of the augmented stack conditioned on the other half:

    vectors, h = conditioner(cond)                  equivariant vectors, invariant features
    theta      = head(h)                            inner-bijection parameters, per node
    u'         = project back o inner o project(u; x_c + vectors, theta)  for every node

``trans: (m_t, n_nodes, dim)`` is transformed; ``cond: (m_c, n_nodes, dim)`` conditions
(its first array must be zero-CoM, which the shift-CoM step guarantees).  The log-det is
the sum of the per-point log-dets (the transform of each point depends on ``cond`` only).
The head's last layer starts at zero, so every coupling starts as the identity.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from eacf_lab.egnn import EGNN
from eacf_lab.nn import MLP
from eacf_lab.projections import Projection
from eacf_lab.transformer import Transformer

__all__ = ["Coupling"]


class Coupling(eqx.Module):
    """One coupling: conditioner + MLP head + projection.  See the module docstring."""

    conditioner: EGNN | Transformer
    head: MLP
    projection: Projection
    n_trans: int = eqx.field(static=True)

    def __init__(self, projection: Projection, n_trans: int, n_cond: int, *, n_invariant=128,
                 mlp_width=64, mlp_depth=2, egnn_layers=3, egnn_hidden=64, transformer_layers=3,
                 transformer_size=64, transformer_heads=4, n_features=0, key):
        k1, k2 = jax.random.split(key)
        dim = projection.dim
        if projection.n_vectors == 0:
            self.conditioner = Transformer(n_cond, dim, n_invariant, n_layers=transformer_layers,
                                           size=transformer_size, n_heads=transformer_heads,
                                           width=mlp_width, n_features=n_features, key=k1)
        else:
            self.conditioner = EGNN(n_cond, n_trans * projection.n_vectors, n_invariant, n_layers=egnn_layers,
                                    n_hidden=egnn_hidden, width=mlp_width, depth=mlp_depth,
                                    n_features=n_features, key=k1)
        # Zero last layer: all inner parameters are 0 at initialisation -> identity coupling.
        self.head = MLP(n_invariant, n_trans * projection.n_params, mlp_width, mlp_depth, key=k2, final_scale=0.0)
        self.projection, self.n_trans = projection, n_trans

    def condition(self, cond, features=None):
        """Reference vectors ``(m_t, n, n_vectors, d)`` and inner parameters ``(m_t, n, n_params)``."""
        n, dim = cond.shape[1], cond.shape[2]
        vectors, h = self.conditioner(jnp.swapaxes(cond, 0, 1), features)
        params = jax.vmap(self.head)(h).reshape(n, self.n_trans, self.projection.n_params)
        vectors = vectors.reshape(n, self.n_trans, self.projection.n_vectors, dim)
        return jnp.swapaxes(vectors, 0, 1), jnp.swapaxes(params, 0, 1)  # (m_t, n, ...)

    def _apply(self, trans, cond, features, inverse):
        vectors, params = self.condition(cond, features)
        fn = lambda u, x_c, v, p: self.projection.transform(u, x_c, v, p, inverse)  # noqa: E731
        per_point = jax.vmap(jax.vmap(fn, in_axes=(0, 0, 0, 0)), in_axes=(0, None, 0, 0))
        out, log_det = per_point(trans, cond[0], vectors, params)
        aux = jnp.mean(jax.vmap(jax.vmap(self.projection.aux_loss))(vectors)) if self.projection.n_vectors else 0.0
        return out, jnp.sum(log_det), jnp.asarray(aux, trans.dtype)

    def forward(self, trans, cond, features=None):
        """``trans: (m_t, n, d)``, ``cond: (m_c, n, d)`` -> ``(trans', log_det, aux_loss)``."""
        return self._apply(trans, cond, features, inverse=False)

    def inverse(self, trans, cond, features=None):
        """Inverse of ``forward`` with the log-det of the inverse."""
        return self._apply(trans, cond, features, inverse=True)
