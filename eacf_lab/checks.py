"""Input checks at the door: clear one-line errors before any computation.

Shape checks always run (shapes are static, even under ``jit``/``vmap``).  Value checks
(finiteness, zero CoM) need concrete arrays, so they run on eager calls -- the way a
learner calls the flow in a notebook -- and are skipped inside traced code, where the
training loop has already validated its data when loading it.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["check_shape", "check_finite", "check_zero_com", "is_concrete"]


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def check_shape(x, shape: tuple, name: str) -> None:
    """Raise ``ValueError`` unless ``x.shape == shape`` (``None`` in ``shape`` matches anything)."""
    got = getattr(x, "shape", None)
    if got is None:
        raise ValueError(f"{name} must be an array of shape {shape}, got {type(x).__name__}")
    ok = len(got) == len(shape) and all(s is None or s == g for s, g in zip(shape, got))
    if not ok:
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(got)}")


def check_finite(x, name: str) -> None:
    """Raise ``ValueError`` if a concrete ``x`` holds NaN or inf."""
    if is_concrete(x):
        arr = np.asarray(x)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(arr)))} NaN/inf entries")


def check_zero_com(x, name: str = "x", rtol: float = 1e-4) -> None:
    """Raise ``ValueError`` if a concrete ``x: (..., n_nodes, dim)`` is not zero-CoM.

    Tolerance: ``|mean_i x_i| <= rtol * (1 + max |x|)`` (float32 round-off is ~1e-7 relative).
    """
    if is_concrete(x):
        arr = np.asarray(x, dtype=np.float64)
        com = np.abs(arr.mean(axis=-2)).max()
        tol = rtol * (1.0 + np.abs(arr).max())
        if com > tol:
            raise ValueError(
                f"{name} must have zero centre of mass (|CoM| <= {tol:.2g}), got |CoM| = {com:.3g}; "
                "use eacf_lab.remove_com(x) first"
            )


def check_dataset(data, n_nodes: int, dim: int, name: str) -> np.ndarray:
    """``data`` as float32 ``(N, n_nodes, dim)``; one-line ``ValueError`` unless finite and zero-CoM."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3 or data.shape[1:] != (n_nodes, dim):
        raise ValueError(f"{name} must have shape (N, {n_nodes}, {dim}), got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} holds NaN/inf values")
    if np.abs(data.mean(axis=1)).max() > 1e-4 * (1 + np.abs(data).max()):
        raise ValueError(f"{name} must be zero-CoM; use eacf_lab.remove_com first")
    return data
