"""``make_flow``: build any of the four flows with the published defaults (paper App. C).

Defaults (DW4/LJ13 in the paper): 12 blocks, ``n_aug = 1``, ``eta = 0.1``; EGNN with 3 layers,
MLP width 64 (2 hidden layers), 128 invariant features; splines with 8 bins on
``[0, 10]`` for radii.  Alanine dipeptide uses 20 blocks and ``eta = 0.5``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eacf_lab.flow import AugmentedFlow
from eacf_lab.projections import PROJECTIONS

__all__ = ["make_flow", "flow_from_config", "DEFAULT_SIZES"]

DEFAULT_SIZES = dict(
    n_invariant=128, mlp_width=64, mlp_depth=2, egnn_layers=3, egnn_hidden=64,
    transformer_layers=3, transformer_size=64, transformer_heads=4,
)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def make_flow(key, n_nodes, dim, projection="spherical", n_aug=1, n_blocks=12, *, eta=0.1, n_bins=8,
              r_max=10.0, inner="affine", node_features=None, **sizes) -> AugmentedFlow:
    """Build an augmented coupling flow.

    Arguments:
        key: a JAX PRNG key (``jax.random.key(0)``).
        n_nodes, dim: number of points and their dimension (2 or 3).
        projection: ``"spherical"`` | ``"cartesian"`` | ``"vector"`` (E-ACF) or ``"none"``
            (the Non-E-ACF baseline with a transformer conditioner).
        n_aug: number of augmented sets ``k`` (odd, so both coupling halves hold
            ``(k + 1) / 2`` arrays).
        n_blocks: number of blocks (two couplings each).
        eta: std of the augmented Gaussian ``pi(a | x) = N(x, eta^2 I)``.
        n_bins, r_max: spline bins and radial range ``[0, r_max]``.
        inner: ``"affine"`` or ``"spline"``, the inner bijection of ``"cartesian"``/``"none"``.
        node_features: optional ``(n_nodes, F)`` per-atom features (e.g. one-hot atom types).
        **sizes: network sizes, defaults in ``DEFAULT_SIZES``.

    Returns an ``AugmentedFlow`` that starts as the identity map on top of its base.
    """
    n_nodes = _positive_int(n_nodes, "n_nodes")
    if n_nodes < 2:
        raise ValueError(f"n_nodes must be at least 2, got {n_nodes}")
    if dim not in (2, 3) or isinstance(dim, bool):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {sorted(PROJECTIONS)}, got {projection!r}")
    n_aug = _positive_int(n_aug, "n_aug")
    if n_aug % 2 == 0:
        raise ValueError(f"n_aug must be odd (1, 3, 5, ...) so the coupling halves are equal, got {n_aug}")
    n_blocks = _positive_int(n_blocks, "n_blocks")
    if not float(eta) > 0:
        raise ValueError(f"eta must be positive, got {eta!r}")
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(f"unknown size arguments {sorted(unknown)}; valid: {sorted(DEFAULT_SIZES)}")
    if inner not in ("affine", "spline"):
        raise ValueError(f"inner must be 'affine' or 'spline', got {inner!r}")
    if node_features is not None:
        node_features = jnp.asarray(node_features)
        if node_features.ndim != 2 or node_features.shape[0] != n_nodes:
            raise ValueError(f"node_features must have shape ({n_nodes}, F), got {tuple(node_features.shape)}")
    sizes = {**DEFAULT_SIZES, **{k: _positive_int(v, k) for k, v in sizes.items()}}
    config = dict(n_nodes=n_nodes, dim=dim, projection=projection, n_aug=n_aug, n_blocks=n_blocks,
                  eta=float(eta), n_bins=int(n_bins), r_max=float(r_max), inner=inner, **sizes,
                  node_features_shape=None if node_features is None else list(node_features.shape))
    return AugmentedFlow(
        key=key, n_nodes=n_nodes, dim=dim, projection=projection, n_aug=n_aug, n_blocks=n_blocks, eta=eta,
        proj_kwargs=dict(n_bins=int(n_bins), r_max=float(r_max), inner=inner), sizes=sizes,
        node_features=node_features, config_items=tuple(sorted((k, _hashable(v)) for k, v in config.items())),
    )


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def flow_from_config(config: dict, key=None) -> AugmentedFlow:
    """Rebuild a flow's skeleton from ``flow.config`` (used to load checkpoints)."""
    cfg = dict(config)
    shape = cfg.pop("node_features_shape", None)
    features = None if shape is None else jnp.zeros(tuple(shape))
    return make_flow(jax.random.key(0) if key is None else key, node_features=features, **cfg)
