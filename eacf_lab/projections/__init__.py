"""Projections: how a coupling moves one point in an invariant frame (paper Sec. 3.3).

``make_projection(name, dim, ...)`` builds one by name: ``"spherical"``, ``"cartesian"``,
``"vector"`` or ``"none"`` (the Non-E-ACF baseline).
"""

from eacf_lab.projections.base import Projection
from eacf_lab.projections.cartesian import CartesianProjection
from eacf_lab.projections.none import NoProjection
from eacf_lab.projections.spherical import SphericalProjection
from eacf_lab.projections.vector import VectorProjection

PROJECTIONS = {
    "spherical": SphericalProjection,
    "cartesian": CartesianProjection,
    "vector": VectorProjection,
    "none": NoProjection,
}

__all__ = ["Projection", "make_projection", "PROJECTIONS"] + [c.__name__ for c in PROJECTIONS.values()]


def make_projection(name: str, dim: int, *, n_bins: int = 8, r_max: float = 10.0, inner: str = "affine") -> Projection:
    """Build a projection by name; ``inner`` applies to ``"cartesian"`` and ``"none"`` only."""
    if name not in PROJECTIONS:
        raise ValueError(f"projection must be one of {sorted(PROJECTIONS)}, got {name!r}")
    if name in ("cartesian", "none"):
        if inner not in ("affine", "spline"):
            raise ValueError(f"inner must be 'affine' or 'spline', got {inner!r}")
        return PROJECTIONS[name](dim=dim, inner=inner, n_bins=n_bins, r_max=r_max)
    return PROJECTIONS[name](dim=dim, n_bins=n_bins, r_max=r_max)
