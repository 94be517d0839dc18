"""Public checks of symmetry and invertibility -- for tests, notebooks and learners.

    el.testing.assert_invariant(fn, *args, key=key, group="rotation")
    el.testing.assert_equivariant(fn, *args, key=key, group="permutation")
    el.testing.check_bijection(forward, inverse, *args, zero_com_in=(0,))

A *group action* acts on every argument whose last two axes are ``(n_nodes, dim)`` (the
shape of the first argument's last two axes): ``"rotation"`` (Haar-uniform SO(dim)),
``"reflection"`` (Haar-uniform improper rotation, det -1), ``"permutation"`` of the nodes,
``"translation"`` by a random vector.  The action is applied in float64 (NumPy) and cast
back, so the check measures the function, not the rounding of the group action.

``fn`` may return an array or a tuple: outputs whose last two axes are ``(n_nodes, dim)``
must transform like the inputs (equivariance); every other output must not change.
The ``*_error`` functions return the largest relative deviation without raising (the
notebooks print them, e.g. to show that the Non-E-ACF is not rotation-invariant).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eacf_lab.geometry import random_rotation, zero_com_basis

__all__ = [
    "GROUPS", "sample_group_element", "act", "invariance_error", "equivariance_error",
    "assert_invariant", "assert_equivariant", "check_bijection", "default_tolerance", "perturb",
]

GROUPS = ("rotation", "reflection", "permutation", "translation")


def perturb(module, key, scale: float = 0.05):
    """Return ``module`` with ``N(0, scale^2)`` noise added to every floating-point array.

    A freshly built flow or coupling is the identity map, so every symmetry check passes
    trivially on it; perturbing all weights gives a generic, non-identity model to test.
    """
    import equinox as eqx

    params, static = eqx.partition(module, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


def default_tolerance(dtype) -> float:
    """Relative tolerance: 1e-5 for float32, 1e-10 for float64."""
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def sample_group_element(key, group: str, n_nodes: int, dim: int) -> dict:
    """A random element of ``group`` as a dict (``R: (dim, dim)``, ``perm: (n,)`` or ``t: (dim,)``)."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    if group in ("rotation", "reflection"):
        r = np.asarray(random_rotation(key, dim, reflection=group == "reflection"), dtype=np.float64)
        q, rr = np.linalg.qr(r)  # re-orthonormalise in float64
        q = q * np.sign(np.diag(rr))[None, :]
        return {"R": q}
    if group == "permutation":
        return {"perm": np.asarray(jax.random.permutation(key, n_nodes))}
    return {"t": np.asarray(jax.random.normal(key, (dim,)), dtype=np.float64)}


def act(g: dict, y):
    """Apply group element ``g`` to ``y: (..., n_nodes, dim)`` (in float64, cast back)."""
    arr = np.asarray(y, dtype=np.float64)
    if "R" in g:
        out = arr @ g["R"].T
    elif "perm" in g:
        out = arr[..., g["perm"], :]
    else:
        out = arr + g["t"]
    return jnp.asarray(out, dtype=jnp.asarray(y).dtype)


def _is_points(y, n, d):
    return hasattr(y, "shape") and len(y.shape) >= 2 and tuple(y.shape[-2:]) == (n, d)


def _rel_err(a, b, scale=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not a.size:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(b)))) if scale is None else max(1.0, float(scale))
    return float(np.max(np.abs(a - b)) / scale)


def _deviation(fn, args, key, group, n_trials, equivariant, scale=None):
    n, d = args[0].shape[-2:]
    ref = jax.tree_util.tree_leaves(fn(*args))
    worst = 0.0
    for k in jax.random.split(key, n_trials):
        g = sample_group_element(k, group, n, d)
        moved = [act(g, y) if _is_points(y, n, d) else y for y in args]
        out = jax.tree_util.tree_leaves(fn(*moved))
        for o, r in zip(out, ref):
            expected = act(g, r) if (equivariant and _is_points(r, n, d)) else r
            worst = max(worst, _rel_err(o, expected, scale))
    return worst


def invariance_error(fn, *args, key, group="rotation", n_trials=3, scale=None) -> float:
    """Largest ``|fn(g.x) - fn(x)| / max(1, scale)`` over ``n_trials`` random ``g``.

    ``scale`` defaults to ``|fn(x)|``.  For a log-density that is a sum of large terms of
    opposite sign (``log q = log q0(z) + log|det|``), pass the magnitude of the terms
    (``|log q0(z)| + |log det|``): float32 round-off is relative to the terms, not the sum.
    """
    return _deviation(fn, args, key, group, n_trials, equivariant=False, scale=scale)


def equivariance_error(fn, *args, key, group="rotation", n_trials=3, scale=None) -> float:
    """Largest relative deviation of ``fn(g.x)`` from ``g.fn(x)`` (point outputs) or ``fn(x)``."""
    return _deviation(fn, args, key, group, n_trials, equivariant=True, scale=scale)


def _tol(args, rtol):
    return rtol if rtol is not None else default_tolerance(jnp.asarray(args[0]).dtype)


def assert_invariant(fn, *args, key, group="rotation", n_trials=3, rtol=None, scale=None) -> float:
    """Raise ``AssertionError`` unless ``fn`` is invariant under ``group``; return the error."""
    err = invariance_error(fn, *args, key=key, group=group, n_trials=n_trials, scale=scale)
    tol = _tol(args, rtol)
    if not err <= tol:
        raise AssertionError(f"not {group}-invariant: relative error {err:.3g} > tolerance {tol:.1g}")
    return err


def assert_equivariant(fn, *args, key, group="rotation", n_trials=3, rtol=None, scale=None) -> float:
    """Raise ``AssertionError`` unless ``fn`` is equivariant under ``group``; return the error."""
    err = equivariance_error(fn, *args, key=key, group=group, n_trials=n_trials, scale=scale)
    tol = _tol(args, rtol)
    if not err <= tol:
        raise AssertionError(f"not {group}-equivariant: relative error {err:.3g} > tolerance {tol:.1g}")
    return err


def _to_coords(arrays, constrained):
    parts = []
    for i, y in enumerate(arrays):
        flat = jnp.reshape(y, (-1,))
        if i in constrained:
            flat = zero_com_basis(*y.shape, dtype=y.dtype).T @ flat
        parts.append(flat)
    return jnp.concatenate(parts)


def _from_coords(c, shapes, constrained, dtype):
    out, start = [], 0
    for i, s in enumerate(shapes):
        size = int(np.prod(s)) - (s[-1] if i in constrained else 0)
        piece = c[start:start + size]
        if i in constrained:
            piece = zero_com_basis(*s, dtype=dtype) @ piece
        out.append(jnp.reshape(piece, s))
        start += size
    return out


def check_bijection(forward, inverse, *args, zero_com_in=(), zero_com_out=(), rtol=None, jacobian=True) -> dict:
    """Check a bijection ``forward(*args) -> (*outs, log_det)`` and its ``inverse``.

    Checks: the round trip ``inverse(forward(args)) == args``; ``log_det(inverse) ==
    -log_det(forward)``; outputs listed in ``zero_com_out`` have zero CoM; and (``jacobian``)
    ``log_det == log|det J|`` with ``J`` from ``jax.jacfwd`` **in coordinates of the zero-CoM
    hyperplane** for the arguments/outputs listed in ``zero_com_in``/``zero_com_out`` (each
    an ``(n_nodes, dim)`` array; an orthonormal basis of the hyperplane is used), plain
    coordinates for the rest.  Returns the errors as a dict; raises ``AssertionError`` if
    any exceeds the tolerance (relative, scaled by ``max(1, |value|)``).
    """
    args = [jnp.asarray(a) for a in args]
    dtype = args[0].dtype
    tol = _tol(args, rtol)
    *outs, log_det = forward(*args)
    *back, log_det_inv = inverse(*outs)
    errors = {
        "round_trip": max(_rel_err(b, a) for a, b in zip(args, back)),
        "log_det_inverse": _rel_err(log_det_inv, -log_det),
        "zero_com_out": max([float(np.max(np.abs(np.mean(np.asarray(outs[i]), axis=-2)))) for i in zero_com_out] or [0.0]),
    }
    if jacobian:
        shapes = [a.shape for a in args]

        def coords_fn(c):
            *o, _ = forward(*_from_coords(c, shapes, set(zero_com_in), dtype))
            return _to_coords(o, set(zero_com_out))

        jac = jax.jacfwd(coords_fn)(_to_coords(args, set(zero_com_in)))
        if jac.shape[0] != jac.shape[1]:
            raise ValueError(f"Jacobian is not square ({jac.shape}): check zero_com_in/zero_com_out")
        sign, logabs = jnp.linalg.slogdet(jac)
        errors["log_det_jacobian"] = _rel_err(log_det, logabs) if sign != 0 else float("inf")
    bad = {k: v for k, v in errors.items() if not v <= tol * (100 if k == "log_det_jacobian" else 10)}
    if bad:
        raise AssertionError(f"bijection check failed (tolerance {tol:.1g}): {bad}")
    return errors
