"""One registry of bijections for the property tests (flowjax style).

Every entry builds ``(forward, inverse, args, zero_com_in, zero_com_out, symmetries)`` with
**randomly perturbed, non-identity parameters** (an identity-initialised flow proves
nothing).  ``forward(*arrays) -> (*arrays, log_det)``; every array is ``(n_nodes, dim)``
(the augmented stack is passed as separate arrays so zero-CoM indices are simple).
``symmetries`` maps a group to ``True`` (the density must be invariant) or ``False`` (it
must measurably *not* be).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import eacf_lab as el
from eacf_lab.testing import perturb
from eacf_lab.projections import make_projection

# Small sizes: the property does not depend on width, and compile time does.
TINY = dict(n_invariant=16, mlp_width=16, mlp_depth=1, egnn_layers=1, egnn_hidden=16,
            transformer_layers=1, transformer_size=16, transformer_heads=2)
N_NODES = {2: 4, 3: 5}


@functools.lru_cache(maxsize=None)
def perturbed_flow(projection, dim, n_aug, x64=False):
    """A 2-block flow with perturbed parameters (cached per process and dtype mode)."""
    flow = el.make_flow(jax.random.key(1), N_NODES[dim], dim, projection, n_aug=n_aug, n_blocks=2, **TINY)
    return perturb(flow, jax.random.key(2), scale=0.05)


def flow_entry(projection, dim, n_aug):
    flow = perturbed_flow(projection, dim, n_aug, bool(jax.config.jax_enable_x64))

    def forward(x, *a):
        y, b, ld = flow.forward(x, jnp.stack(a))
        return (y, *b, ld)

    def inverse(y, *b):
        x, a, ld = flow.inverse(y, jnp.stack(b))
        return (x, *a, ld)

    x, a, _ = flow.sample_and_log_prob(jax.random.key(3))
    args = (x, *a)
    proper = projection in ("spherical", "cartesian")
    symmetries = {"permutation": True, "rotation": projection != "none",
                  "reflection": None if projection == "none" else not proper}
    return flow, forward, inverse, args, (0,), (0,), symmetries


def shift_com_entry(dim, n_aug):
    """shift-CoM onto array ``m`` (Eq. 5/17): constraint moves from array 0 to array m."""
    m = (n_aug + 1) // 2
    n = N_NODES[dim]
    k1, k2 = jax.random.split(jax.random.key(4))
    x = el.remove_com(jax.random.normal(k1, (n, dim)))
    a = jax.random.normal(k2, (n_aug, n, dim)) + 0.3

    def forward(*arrays):
        return (*el.shift_com(jnp.stack(arrays), m), jnp.zeros(()))

    def inverse(*arrays):
        return (*el.shift_com(jnp.stack(arrays), 0), jnp.zeros(()))

    return None, forward, inverse, (x, *a), (0,), (m,), {}


FLOW_CASES = [(p, d, k) for p in ("spherical", "cartesian", "vector", "none") for d in (2, 3) for k in (1, 3)]
SHIFT_CASES = [(d, k) for d in (2, 3) for k in (1, 3)]


def point_entry(projection, dim, key):
    """One projection applied to one point with random vectors and parameters."""
    proj = make_projection(projection, dim, inner="spline")
    ks = jax.random.split(key, 4)
    u = jax.random.normal(ks[0], (dim,)) * 1.5
    x_c = jax.random.normal(ks[1], (dim,))
    vectors = jax.random.normal(ks[2], (proj.n_vectors, dim))
    params = jax.random.normal(ks[3], (proj.n_params,)) * 0.5
    return proj, u, x_c, vectors, params
