"""Ramachandran histograms of alanine dipeptide and their KL divergence (paper Sec. 4.2, App. C.3.2).

Following Stimper et al. 2022 (as the paper does): flow samples, flow samples *reweighted* to
the Boltzmann distribution, and MD data are compared through 2D histograms of the backbone
dihedrals (phi, psi) on ``[-pi, pi]^2`` and the KL divergence between those histograms.

* ``angles(x)``: ``(n, 22, 3)`` nm -> ``(n, 2)`` radians, with ``eacf_lab.targets.aldp_geometry``.
* ``importance_weights(log_w, clip_fraction=0.002)``: self-normalised weights with the largest
  0.2 % clipped to the 99.8 % quantile (the paper's reweighting recipe), summing to 1.
* ``ramachandran_kld(p, q, weights=None, bins=100)``: ``KL(p || q)`` between 2D histograms of
  ``p`` (reference, e.g. test data) and ``q`` (model samples, optionally weighted):
  ``sum_b  P_b log((P_b + eps) / (Q_b + eps))`` on ``bins x bins`` equal cells of ``[-pi, pi]^2``
  (default 100 x 100, as in Stimper et al.'s code), ``P_b, Q_b`` the normalised (weighted) bin
  masses, ``eps = 1e-10``, no smoothing.  In nats.  Zero iff the histograms are equal; empty
  model cells where the data has mass cost ``P_b log(P_b / eps)`` (large, by design).

NumPy only (no plotting): ``eacf_lab.viz.ramachandran`` draws these histograms.
"""

from __future__ import annotations

import numpy as np

__all__ = ["angles", "check_angles", "importance_weights", "histogram2d", "ramachandran_kld", "RANGE"]

RANGE = ((-np.pi, np.pi), (-np.pi, np.pi))


def angles(x) -> np.ndarray:
    """``x: (n, 22, 3)`` positions (nm) -> ``(n, 2)`` ``[phi, psi]`` in radians."""
    import jax

    from eacf_lab.targets import aldp_geometry

    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != (22, 3):
        raise ValueError(f"x must be (n_samples, 22, 3) alanine dipeptide positions, got {x.shape}")
    return np.asarray(jax.vmap(aldp_geometry.phi_psi)(x))


def importance_weights(log_w, clip_fraction: float = 0.002) -> np.ndarray:
    """Normalised weights from ``log_w: (n,)``; the top ``clip_fraction`` clipped to its quantile."""
    lw = np.asarray(log_w, np.float64)
    if lw.ndim != 1 or len(lw) == 0:
        raise ValueError(f"log_w must be (n_samples,) with n >= 1, got {lw.shape}")
    if not 0 <= clip_fraction < 1:
        raise ValueError(f"clip_fraction must be in [0, 1), got {clip_fraction}")
    finite = np.isfinite(lw)
    if not finite.any():
        raise ValueError("log_w has no finite entry")
    lw = np.where(finite, lw, -np.inf)  # NaN/inf samples get weight 0
    lw = np.minimum(lw, np.quantile(lw[finite], 1.0 - clip_fraction))
    w = np.exp(lw - lw.max())
    return w / w.sum()


def check_angles(a, name="phi_psi") -> np.ndarray:
    """``a`` as a float64 ``(n, 2)`` array of ``[phi, psi]``; ``ValueError`` naming ``name`` otherwise."""
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be (n_samples, 2) [phi, psi] in radians, got {a.shape}")
    return a


def histogram2d(phi_psi, weights=None, bins: int = 100) -> np.ndarray:
    """Normalised ``(bins, bins)`` bin masses of ``phi_psi: (n, 2)`` on ``[-pi, pi]^2`` (sum 1)."""
    a = check_angles(phi_psi, "phi_psi")
    w = None if weights is None else np.asarray(weights, np.float64)
    if w is not None and (w.shape != (len(a),) or np.any(w < 0) or not np.all(np.isfinite(w))):
        raise ValueError(f"weights must be ({len(a)},), finite and non-negative")
    h, _, _ = np.histogram2d(a[:, 0], a[:, 1], bins=bins, range=RANGE, weights=w)
    if h.sum() <= 0:
        raise ValueError("histogram is empty (no samples, or all weights zero)")
    return h / h.sum()


def ramachandran_kld(p_angles, q_angles, weights=None, bins: int = 100, eps: float = 1e-10) -> float:
    """``KL(p || q)`` in nats between the phi/psi histograms of ``p_angles`` and ``q_angles``.

    Arguments:
        p_angles: ``(n, 2)`` reference angles (e.g. test data).
        q_angles: ``(m, 2)`` model angles.
        weights: optional ``(m,)`` importance weights of the model samples.
        bins: cells per axis; eps: added to both bin masses.
    """
    p = histogram2d(p_angles, bins=bins)
    q = histogram2d(q_angles, weights, bins=bins)
    return float(np.sum(p * np.log((p + eps) / (q + eps))))
