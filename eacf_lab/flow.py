"""The augmented coupling flow (paper Sec. 3, Alg. 1 sampling, Alg. 2 density).

State: ``X = [x, a_1, ..., a_k]: (k + 1, n_nodes, dim)``, ``k = n_aug`` odd, split along the
augmented axis into halves ``A = X[:m]`` (holds ``x``) and ``B = X[m:]``, ``m = (k + 1) / 2``.

One block, sampling direction (Alg. 1):

    X <- shift_com(X, m)            constraint moves to B[0]         (Eq. 5/17, log-det 0)
    A <- T_1(A | B)                 coupling on A given B            (log-det ld_1)
    X <- shift_com(X, 0)            x is zero-CoM again              (log-det 0)
    B <- T_2(B | A)                 coupling on B given A            (log-det ld_2)

The inverse runs the same steps backwards with inverse couplings; the shift-CoM steps are
their own kind of inverse (see ``shift_com``).  Each block is initialised with its own random
key (the published code copies one block's initial parameters into all blocks; we do not).

How it is run: the two couplings of a block have the same structure once the halves are
swapped after each one, so the flow is a ``lax.scan`` over the ``2 n_blocks`` couplings with
one coupling as its body:

    X <- shift_com(X, m);  X[:m] <- T(X[:m] | X[m:]);  X <- [X[m:], X[:m]]   (swap halves)

After two such steps the halves are back in place and the result is exactly one block
(``Block.forward`` spells the block out and is tested against the scan).  Compile time is
then set by one coupling: it does not grow with depth.  Under a gradient each coupling is
recomputed in the backward pass (``jax.checkpoint``) rather than stored: see ``_scan_blocks``.

Base: ``q0(z_x, z_a) = N_H(z_x; 0, I) prod_i N(z_a_i; z_x, eta^2 I)`` (zero-CoM Gaussian on the
hyperplane H times the augmented conditional), the same form as the augmented target
``pi(a | x)``.  ``log q(x, a) = log q0(f^{-1}(x, a)) + log|det J_{f^{-1}}|`` (Alg. 2).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from eacf_lab import checks
from eacf_lab.coupling import Coupling
from eacf_lab.geometry import (aug_gaussian_log_prob, remove_com, sample_aug_gaussian,
                               sample_zero_com_gaussian, zero_com_gaussian_log_prob)
from eacf_lab.projections import make_projection
from eacf_lab.shift_com import shift_com

__all__ = ["Block", "AugmentedFlow"]


class Block(eqx.Module):
    """Two couplings with their shift-CoM moves; acts on ``X: (k + 1, n_nodes, dim)``."""

    couple_a_half: Coupling  # T_1: transforms A = [x, ...] given B
    couple_b_half: Coupling  # T_2: transforms B given A
    m: int = eqx.field(static=True)

    def __init__(self, projection, n_aug, *, key, **sizes):
        k1, k2 = jax.random.split(key)
        self.m = (n_aug + 1) // 2
        self.couple_a_half = Coupling(projection, self.m, self.m, key=k1, **sizes)
        self.couple_b_half = Coupling(projection, self.m, self.m, key=k2, **sizes)

    def forward(self, X, features=None):
        """Sampling direction. ``X[0]`` zero-CoM in and out. Returns ``(X, log_det, aux)``."""
        m = self.m
        X = shift_com(X, m)
        A, ld1, aux1 = self.couple_a_half.forward(X[:m], X[m:], features)
        X = shift_com(jnp.concatenate([A, X[m:]]), 0)
        B, ld2, aux2 = self.couple_b_half.forward(X[m:], X[:m], features)
        return jnp.concatenate([X[:m], B]), ld1 + ld2, 0.5 * (aux1 + aux2)

    def inverse(self, X, features=None):
        """Density direction: the exact inverse of ``forward``."""
        m = self.m
        B, ld2, aux2 = self.couple_b_half.inverse(X[m:], X[:m], features)
        X = shift_com(jnp.concatenate([X[:m], B]), m)
        A, ld1, aux1 = self.couple_a_half.inverse(X[:m], X[m:], features)
        X = shift_com(jnp.concatenate([A, X[m:]]), 0)
        return X, ld1 + ld2, 0.5 * (aux1 + aux2)


def _swap_halves(X, m):
    """``[X[:m], X[m:]] -> [X[m:], X[:m]]`` (both halves hold ``m`` arrays)."""
    return jnp.concatenate([X[m:], X[:m]])


def _interleave_couplings(blocks):
    """Stacked blocks -> stacked couplings ``(2 n_blocks, ...)`` in flow order: T_1, T_2 of
    block 0, then of block 1, ... (the leaves of both halves have the same shapes)."""
    a, b = eqx.filter(blocks.couple_a_half, eqx.is_array), eqx.filter(blocks.couple_b_half, eqx.is_array)
    stacked = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v], axis=1).reshape(-1, *u.shape[1:]), a, b)
    return stacked, eqx.filter(blocks.couple_a_half, eqx.is_array, inverse=True)


@eqx.filter_jit
def _scan_blocks(blocks, X, features, inverse: bool, n_blocks: int):
    """Run all blocks as a ``lax.scan`` over their couplings (see the module docstring);
    reversed, with inverse couplings, when ``inverse``.

    Jitted here so that eager calls (a learner in a notebook) compile once per shape instead
    of re-tracing the scan on every call; inside an outer ``jit`` it is simply inlined.
    Returns ``(X, total log-det, mean aux loss)``.
    """
    params, static = _interleave_couplings(blocks)
    m = blocks.m

    def forward(carry, p):  # shift-CoM, couple the first half on the second, swap
        X, ld, aux = carry
        X = shift_com(X, m)
        A, ld_c, aux_c = eqx.combine(p, static).forward(X[:m], X[m:], features)
        return (_swap_halves(jnp.concatenate([A, X[m:]]), m), ld + ld_c, aux + aux_c), None

    def backward(carry, p):  # the exact inverse of one ``forward`` step
        X, ld, aux = carry
        X = _swap_halves(X, m)
        A, ld_c, aux_c = eqx.combine(p, static).inverse(X[:m], X[m:], features)
        return (shift_com(jnp.concatenate([A, X[m:]]), 0), ld + ld_c, aux + aux_c), None

    # Rematerialisation (``jax.checkpoint``): under a gradient, the backward pass recomputes one
    # coupling's forward pass from the scan carry instead of reading stored intermediates.
    # Without it, reverse-mode AD of the scan stacks every intermediate of the couplings into a
    # ``(2 n_blocks, ...)`` buffer (some 250 buffers for E-ACF couplings, many of them
    # ``(2 n_blocks, batch, n, n, width)``); on CPU, filling and copying them costs more than
    # the recomputation (``benchmarks/results/speed.md``).  Values and gradients are unchanged;
    # without a gradient (sampling, density evaluation) it does nothing.  ``prevent_cse=False``
    # is safe inside ``scan``, which already keeps XLA from merging the recomputation away.
    step = jax.checkpoint(backward if inverse else forward, prevent_cse=False)
    zero = jnp.zeros((), X.dtype)
    (X, ld, aux), _ = jax.lax.scan(step, (X, zero, zero), params, reverse=inverse)
    return X, ld, aux / (2 * n_blocks)  # = mean over blocks of the blocks' mean aux


class AugmentedFlow(eqx.Module):
    """An E-ACF (or the Non-E-ACF) over ``n_nodes`` points in ``dim`` dimensions.

    Build it with ``eacf_lab.make_flow``.  Every method takes one example; ``jax.vmap``
    over methods for batches, e.g. ``jax.vmap(flow.log_prob)(xs, as_)``.
    """

    blocks: Block  # stacked: every array leaf has a leading axis of size n_blocks
    node_features: jax.Array | None
    n_nodes: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    n_aug: int = eqx.field(static=True)
    n_blocks: int = eqx.field(static=True)
    eta: float = eqx.field(static=True)
    projection: str = eqx.field(static=True)
    config_items: tuple = eqx.field(static=True)

    def __init__(self, *, key, n_nodes, dim, projection, n_aug, n_blocks, eta, proj_kwargs, sizes,
                 node_features=None, config_items=()):
        proj = make_projection(projection, dim, **proj_kwargs)
        n_features = 0 if node_features is None else node_features.shape[-1]
        make = lambda k: Block(proj, n_aug, key=k, n_features=n_features, **sizes)  # noqa: E731
        # Independent initialisation per block, then stack the arrays along a leading axis.
        # (A plain loop re-uses the compiled eager ops across blocks and across flows of the
        # same sizes; a vmapped or jitted constructor recompiles for every n_blocks.)
        blocks = [make(k) for k in jax.random.split(key, n_blocks)]
        arrays = [eqx.filter(b, eqx.is_array) for b in blocks]
        stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *arrays)
        self.blocks = eqx.combine(stacked, eqx.filter(blocks[0], eqx.is_array, inverse=True))
        self.node_features = None if node_features is None else jnp.asarray(node_features)
        self.n_nodes, self.dim, self.n_aug, self.n_blocks = n_nodes, dim, n_aug, n_blocks
        self.eta, self.projection, self.config_items = float(eta), projection, tuple(config_items)

    # ---- the configuration (what make_flow was called with; JSON-able) -------------------
    @property
    def config(self) -> dict:
        return dict(self.config_items)

    # ---- internals without checks (used inside jit/scan) ---------------------------------
    def _features(self):
        return None if self.node_features is None else jax.lax.stop_gradient(self.node_features)

    def _run(self, X, inverse: bool):
        return _scan_blocks(self.blocks, X, self._features(), inverse, self.n_blocks)

    def base_log_prob(self, z_x, z_a):
        """``log q0(z_x, z_a)``; ``z_x: (n, d)`` zero-CoM, ``z_a: (k, n, d)``."""
        return zero_com_gaussian_log_prob(z_x) + aug_gaussian_log_prob(z_a, z_x, self.eta)

    def sample_base(self, *, key):
        """``(z_x: (n, d), z_a: (k, n, d))`` from the base."""
        k1, k2 = jax.random.split(key)
        dtype = jax.tree_util.tree_leaves(eqx.filter(self.blocks, eqx.is_inexact_array))[0].dtype
        z_x = sample_zero_com_gaussian(k1, self.n_nodes, self.dim, dtype=dtype)
        return z_x, sample_aug_gaussian(k2, z_x, self.n_aug, self.eta)

    # ---- checks ----------------------------------------------------------------------------
    def check_inputs(self, x, a, zero_com=True):
        """Raise a one-line ``ValueError`` unless ``x: (n, d)`` (zero-CoM) and ``a: (k, n, d)`` are valid."""
        n, d, k = self.n_nodes, self.dim, self.n_aug
        checks.check_shape(x, (n, d), "x")
        checks.check_shape(a, (k, n, d), "a")
        checks.check_finite(x, "x")
        checks.check_finite(a, "a")
        if zero_com:
            checks.check_zero_com(x, "x")

    # ---- public API ------------------------------------------------------------------------
    def forward(self, z_x, z_a):
        """Base -> data. ``z_x: (n, d)`` zero-CoM, ``z_a: (k, n, d)`` -> ``(x, a, log|det J|)``."""
        self.check_inputs(z_x, z_a)
        X, ld, _ = self._run(jnp.concatenate([remove_com(z_x)[None], z_a]), inverse=False)
        return X[0], X[1:], ld

    def inverse(self, x, a):
        """Data -> base. ``x: (n, d)`` zero-CoM, ``a: (k, n, d)`` -> ``(z_x, z_a, log|det J_inv|)``."""
        self.check_inputs(x, a)
        X, ld, _ = self._run(jnp.concatenate([remove_com(x)[None], a]), inverse=True)
        return X[0], X[1:], ld

    def log_prob_and_aux(self, x, a):
        """``(log q(x, a), collinearity aux loss)`` (Alg. 2)."""
        self.check_inputs(x, a)
        com = jnp.mean(x, axis=0)[None, None, :]
        X = jnp.concatenate([x[None], a]) - com  # Alg. 2, line 1: subtract x's CoM everywhere
        Z, ld, aux = self._run(X, inverse=True)
        return self.base_log_prob(Z[0], Z[1:]) + ld, aux

    def log_prob(self, x, a):
        """Joint ``log q(x, a)``; ``x: (n, d)`` zero-CoM, ``a: (k, n, d)`` -> scalar."""
        return self.log_prob_and_aux(x, a)[0]

    def sample_and_log_prob_and_aux(self, key):
        """``(x, a, log q(x, a), aux)`` in one pass (Alg. 1)."""
        z_x, z_a = self.sample_base(key=key)
        X, ld, aux = self._run(jnp.concatenate([z_x[None], z_a]), inverse=False)
        return X[0], X[1:], self.base_log_prob(z_x, z_a) - ld, aux

    def sample_and_log_prob(self, key):
        """``(x: (n, d) zero-CoM, a: (k, n, d), log q(x, a))`` in one pass."""
        return self.sample_and_log_prob_and_aux(key)[:3]

    def sample(self, key):
        """``(x, a)`` without the density."""
        return self.sample_and_log_prob(key)[:2]

    def aug_target_log_prob(self, x, a):
        """``log pi(a | x) = sum_i log N(a_i; x, eta^2 I)``."""
        self.check_inputs(x, a, zero_com=False)
        return aug_gaussian_log_prob(a, x, self.eta)

    def sample_aug(self, key, x):
        """``a ~ pi(. | x)``: ``(k, n, d)``."""
        checks.check_shape(x, (self.n_nodes, self.dim), "x")
        return sample_aug_gaussian(key, x, self.n_aug, self.eta)

    def n_params(self) -> int:
        """Number of trainable scalars."""
        leaves = jax.tree_util.tree_leaves(eqx.filter(self.blocks, eqx.is_inexact_array))
        return int(sum(leaf.size for leaf in leaves))
