"""The shift-CoM bijection (paper Sec. 3.2, Eq. 5; several augmented sets: App. B.2, Eq. 17).

The flow acts on the stack ``X = [x, a_1, ..., a_k]: (k + 1, n_nodes, dim)`` in which
exactly one array is zero-CoM at a time.  shift-CoM subtracts the centre of mass of array
``j`` from **every** array:

    X -> X - mean_nodes(X[j])                                          (Eq. 5 / Eq. 17)

so afterwards array ``j`` is zero-CoM and the previously constrained array is free.  It
moves the constraint onto the array a coupling *conditions on*, so the coupling can act on
an unconstrained array with a well-defined Jacobian.  Written in orthonormal coordinates of
the two constrained hyperplanes the map is linear with ``|det| = 1``: **log-det 0**
(App. B.2; ``tests/test_bijections.py`` checks this against ``jax.jacfwd``).

Its inverse is the same operation on the array that was zero-CoM before (which, in the
input, was zero-CoM): ``shift_com(shift_com(X, j), i) == X`` when ``X[i]`` has zero CoM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["shift_com"]


def shift_com(X: jax.Array, j: int) -> jax.Array:
    """Subtract the CoM of ``X[j]`` from every array.  ``X: (n_arrays, n_nodes, dim)``; log-det 0."""
    return X - jnp.mean(X[j], axis=0)[None, None, :]
