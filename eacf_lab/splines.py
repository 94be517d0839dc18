"""Elementwise (inner) bijections: rational-quadratic splines and the affine map.

* Rational-quadratic spline (RQS): Durkan et al., "Neural Spline Flows", NeurIPS 2019,
  Eq. 4 (forward) and App. A (inverse: the root of a quadratic); on an interval
  ``[lo, hi]`` with ``n_bins`` bins; outside it the map continues linearly with the slope
  of the end knot (identity slope only at initialisation).  Its unconstrained parameters
  have length ``3 * n_bins + 1`` (bin widths, bin heights, knot slopes); **all-zero
  parameters give the identity** (equal bins and unit slopes), which is how every coupling
  starts.  The parameterisation (softmax bin sizes with a minimum, softplus slopes shifted
  so that 0 -> 1) is the one of ``distrax.RationalQuadraticSpline``, and the tests check
  that the two agree; ours is written out here so that one call transforms several
  coordinates, each with its own interval (Spherical-proj transforms ``(r, theta, phi)``
  in one call), which keeps the traced program -- and so the compile time -- small.
* Circular RQS: Rezende et al., "Normalizing Flows on Tori and Spheres", ICML 2020: the
  slope at ``lo`` equals the slope at ``hi`` so the map is C^1 on the circle.  Used for the
  azimuth ``phi`` on ``[-pi, pi]``.
* Affine: ``y = x * softplus(s + softplus^-1(1)) + t`` (RealNVP-style, E-ACF App. B.3);
  zero ``(s, t)`` gives the identity.

Every function transforms an array elementwise with matching parameters and returns
``(y, log|dy/dx|)`` elementwise.  Inverses return the log-det of the inverse.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["n_spline_params", "rqs", "rqs_knots", "affine", "N_AFFINE_PARAMS"]

N_AFFINE_PARAMS = 2
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus^-1(1)


def n_spline_params(n_bins: int) -> int:
    """Number of unconstrained parameters of one RQS with ``n_bins`` bins: ``3 n_bins + 1``."""
    return 3 * n_bins + 1


def rqs_knots(params, lo, hi, *, circular=False, min_bin_size: float = 1e-4, min_knot_slope: float = 1e-4):
    """The knots of the spline: ``(x_k, y_k, slope_k)``, each ``(..., n_bins + 1)``.

    ``params: (..., 3 n_bins + 1)``; ``lo``, ``hi``, ``circular``: scalars or arrays that
    broadcast against ``params.shape[:-1]``.  Bin sizes are ``softmax * (width - n_bins *
    min_bin_size) + min_bin_size`` (each at least ``min_bin_size``, summing to the width);
    slopes are ``softplus(d + c) + min_knot_slope`` with ``c`` such that ``d = 0`` gives 1.
    """
    params = jnp.asarray(params)
    n_bins = (params.shape[-1] - 1) // 3
    if params.shape[-1] != 3 * n_bins + 1 or n_bins < 1:
        raise ValueError(f"spline parameters must have last axis 3 * n_bins + 1 >= 4, got {params.shape[-1]}")
    dtype = params.dtype
    lo, hi = jnp.asarray(lo, dtype)[..., None], jnp.asarray(hi, dtype)[..., None]

    def edges(unnormalised):  # (..., n_bins) -> knot positions (..., n_bins + 1) from lo to hi
        sizes = jax.nn.softmax(unnormalised, axis=-1) * (hi - lo - n_bins * min_bin_size) + min_bin_size
        inner = lo + jnp.cumsum(sizes[..., :-1], axis=-1)
        return jnp.concatenate([jnp.broadcast_to(lo, inner.shape[:-1] + (1,)), inner,
                                jnp.broadcast_to(hi, inner.shape[:-1] + (1,))], axis=-1)

    offset = math.log(math.expm1(1.0 - min_knot_slope))  # softplus(offset) + min_knot_slope = 1
    slopes = jax.nn.softplus(params[..., 2 * n_bins:] + offset) + min_knot_slope
    circular = jnp.asarray(circular)[..., None]
    slopes = jnp.where(circular, jnp.concatenate([slopes[..., :-1], slopes[..., :1]], axis=-1), slopes)
    return edges(params[..., :n_bins]), edges(params[..., n_bins:2 * n_bins]), slopes


def rqs(
    x: jax.Array,
    params: jax.Array,
    lo,
    hi,
    *,
    circular=False,
    inverse: bool = False,
    min_bin_size: float = 1e-4,
    min_knot_slope: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Rational-quadratic spline on ``[lo, hi]`` (linear outside, with the end knots' slopes).

    Arguments:
        x: ``(...)`` values to transform.
        params: ``(..., 3 * n_bins + 1)`` unconstrained parameters (zeros -> identity);
            broadcast against ``x`` (one parameter vector may serve a whole array).
        lo, hi: the interval, scalars or ``(...)`` arrays (one interval per element);
            ``lo`` and ``hi`` are fixed points of the spline.
        circular: tie the boundary slopes (circular spline for angles); a bool or a
            ``(...)`` bool array.
        inverse: apply the inverse map instead.

    Returns:
        ``(y, log_det)``, both of shape ``(...)``.
    """
    x = jnp.asarray(x)
    shape = jnp.broadcast_shapes(x.shape, params.shape[:-1], jnp.shape(lo), jnp.shape(hi), jnp.shape(circular))
    x = jnp.broadcast_to(x, shape)
    params = jnp.broadcast_to(params, shape + params.shape[-1:])
    xk, yk, sk = rqs_knots(params, jnp.broadcast_to(lo, shape), jnp.broadcast_to(hi, shape),
                           circular=jnp.broadcast_to(circular, shape), min_bin_size=min_bin_size,
                           min_knot_slope=min_knot_slope)
    # The bin holding x, found on the input axis (the y-knots for the inverse), as a one-hot
    # mask (no gather); outside [lo, hi) the first bin stands in and the linear tails below
    # replace its result.
    edges_in = yk if inverse else xk
    in_bin = (x[..., None] >= edges_in[..., :-1]) & (x[..., None] < edges_in[..., 1:])
    in_bin = in_bin.at[..., 0].set(in_bin[..., 0] | ~jnp.any(in_bin, axis=-1))

    def pick(a):  # (a[k], a[k + 1]) for the bin k holding x
        return jnp.sum(jnp.where(in_bin, a[..., :-1], 0.0), -1), jnp.sum(jnp.where(in_bin, a[..., 1:], 0.0), -1)

    (x0, x1), (y0, y1), (d0, d1) = pick(xk), pick(yk), pick(sk)
    w, h = x1 - x0, y1 - y0
    s = h / w  # the bin's mean slope
    k = d0 + d1 - 2.0 * s
    if inverse:
        # Solve x - y0 = h (s z^2 + d0 z (1 - z)) / (s + k z (1 - z)) for z in [0, 1]: a z^2 + b z + c = 0
        # with the root 2c / (-b - sqrt(b^2 - 4ac)), which is stable and never 0/0 here (App. A).
        # The clip keeps the unused branch finite outside [lo, hi] (finite gradients through where).
        delta = jnp.clip(x - y0, 0.0, h)
        a, b, c = h * (s - d0) + delta * k, h * d0 - delta * k, -s * delta
        disc = jnp.maximum(b * b - 4.0 * a * c, jnp.finfo(x.dtype).tiny)
        z = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
        inside = x0 + w * z
    else:
        z = jnp.clip((x - x0) / w, 0.0, 1.0)
    zz = z * (1.0 - z)
    denom = s + k * zz
    if not inverse:
        inside = y0 + h * (s * z * z + d0 * zz) / denom  # Eq. 4 of Durkan et al.
    # dy/dx = s^2 (d1 z^2 + 2 s z (1 - z) + d0 (1 - z)^2) / denom^2                     (Eq. 5)
    log_slope = 2.0 * jnp.log(s) + jnp.log(d1 * z * z + 2.0 * s * zz + d0 * (1.0 - z) ** 2) - 2.0 * jnp.log(denom)
    # Linear tails outside [lo, hi] with the end knots' slopes (lo, hi are knots of both axes).
    lo, hi, d_lo, d_hi = xk[..., 0], xk[..., -1], sk[..., 0], sk[..., -1]
    below, above = x <= lo, x >= hi
    sign = -1.0 if inverse else 1.0
    scale_lo, scale_hi = (1.0 / d_lo, 1.0 / d_hi) if inverse else (d_lo, d_hi)
    out = jnp.where(below, lo + (x - lo) * scale_lo, jnp.where(above, hi + (x - hi) * scale_hi, inside))
    log_det = sign * jnp.where(below, jnp.log(d_lo), jnp.where(above, jnp.log(d_hi), log_slope))
    return out, log_det


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
