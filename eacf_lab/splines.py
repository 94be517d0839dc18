"""Elementwise (inner) bijections: rational-quadratic splines and the affine map.

* Rational-quadratic spline (RQS): Durkan et al., "Neural Spline Flows", NeurIPS 2019,
  Eq. 4; on an interval ``[lo, hi]`` with ``n_bins`` bins; outside it continues linearly
  with the slope of the end knot (identity slope only at initialisation).
  We use ``distrax.RationalQuadraticSpline``.  Its unconstrained parameters have length
  ``3 * n_bins + 1`` (widths, heights, knot slopes); **all-zero parameters give the
  identity** (equal bins and unit slopes), which is how every coupling starts.
* Circular RQS: Rezende et al., "Normalizing Flows on Tori and Spheres", ICML 2020: the
  slope at ``lo`` equals the slope at ``hi`` so the map is C^1 on the circle
  (``boundary_slopes="circular"`` in distrax).  Used for the azimuth ``phi`` on ``[-pi, pi]``.
* Affine: ``y = x * softplus(s + softplus^-1(1)) + t`` (RealNVP-style, E-ACF App. B.3);
  zero ``(s, t)`` gives the identity.

Every function transforms one scalar or an array elementwise with matching parameters and
returns ``(y, log|dy/dx|)`` elementwise.  Inverses return the log-det of the inverse.
"""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp

__all__ = ["n_spline_params", "rqs", "affine", "N_AFFINE_PARAMS"]

N_AFFINE_PARAMS = 2
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus^-1(1)


def n_spline_params(n_bins: int) -> int:
    """Number of unconstrained parameters of one RQS with ``n_bins`` bins: ``3 n_bins + 1``."""
    return 3 * n_bins + 1


def rqs(
    x: jax.Array,
    params: jax.Array,
    lo: float,
    hi: float,
    *,
    circular: bool = False,
    inverse: bool = False,
    min_bin_size: float = 1e-4,
    min_knot_slope: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Rational-quadratic spline on ``[lo, hi]`` (linear outside, with the end knots' slopes).

    Arguments:
        x: ``(...)`` values to transform.
        params: ``(..., 3 * n_bins + 1)`` unconstrained parameters (zeros -> identity);
            broadcast against ``x`` (one parameter vector may serve a whole array).
        lo, hi: the interval; ``lo`` and ``hi`` are fixed points of the spline.
        circular: tie the boundary slopes (circular spline for angles).
        inverse: apply the inverse map instead.

    Returns:
        ``(y, log_det)``, both of shape ``(...)``.
    """
    x = jnp.asarray(x)
    params = jnp.broadcast_to(params, x.shape + params.shape[-1:])
    boundary = "circular" if circular else "unconstrained"
    bij = distrax.RationalQuadraticSpline(
        params,
        range_min=lo,
        range_max=hi,
        boundary_slopes=boundary,
        min_bin_size=min_bin_size,
        min_knot_slope=min_knot_slope,
    )
    if inverse:
        return bij.inverse_and_log_det(x)
    return bij.forward_and_log_det(x)


def affine(x: jax.Array, params: jax.Array, *, inverse: bool = False) -> tuple[jax.Array, jax.Array]:
    """Elementwise affine map ``y = x * scale + shift`` with ``scale = softplus(s + softplus^-1(1))``.

    ``x: (...)``, ``params: (..., 2)`` holding ``(s, shift)``.  Zero parameters: identity.
    """
    scale = jax.nn.softplus(params[..., 0] + _SOFTPLUS_INV_1)
    shift = params[..., 1]
    log_scale = jnp.log(scale)
    if inverse:
        return (x - shift) / scale, -log_scale
    return x * scale + shift, log_scale
