"""Data-parallel training with ``jax.sharding``: batch split across devices, parameters replicated.

The recipe (the "SPMD" way: one program, many devices):

    mesh  = make_mesh(4)                       # a 1-D Mesh over 4 devices, axis "batch"
    flow  = replicate(flow, mesh)              # every device holds all parameters
    state = replicate(opt_state, mesh)         # ... and all optimizer state
    x     = shard_batch(x, mesh)               # x: (B, n, d) -> each device holds (B / 4, n, d)
    flow, state, stats = train_step(flow, state, x, key)   # the SAME jitted function

Nothing in the training step changes.  ``jax.jit`` sees where its inputs live and propagates
those shardings through the computation: the per-example work (``jax.vmap`` over the batch)
runs on each device's own slice, and the mean over the batch in the loss becomes a local
sum plus an all-reduce across devices, inserted by the compiler.  The gradients are
therefore the full-batch gradients on every device, the optimizer update is identical
everywhere, and the parameters stay replicated.  Random numbers drawn inside the step
(``jax.random.split(key, B)``) do not depend on how the batch is split, so a sharded step
equals the single-device step up to the order of floating-point sums.

FAB (``fab.py``) creates its batches inside jitted functions (AIS chains from per-chain keys,
minibatches drawn from the replay buffer), where no input sharding exists to propagate;
``constrain_batch`` marks them as split across the mesh, so that the chains and examples
run on their own devices too.

Several hosts: call ``jax.distributed.initialize()`` first in every process, run the same
script with the same seed and data everywhere, and pass ``make_mesh()`` (all devices of all
hosts).  ``shard_batch`` builds each array from the full batch that every process holds
(``jax.make_array_from_callback``), so each host uploads only its own devices' slices;
``to_local`` turns replicated results back into arrays the host can read.

All functions take any pytree (an ``eqx.Module``, a dict, an optax state, ...); leaves that
are not arrays (static fields, functions, Python numbers) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "make_mesh", "batch_sharding", "replicated_sharding", "shard_batch", "replicate",
           "constrain_batch", "to_local", "gather", "check_divisible", "mesh_for_training"]

BATCH_AXIS = "batch"


def make_mesh(devices: int | Sequence | None = None) -> Mesh:
    """A 1-D ``Mesh`` with axis ``"batch"``.

    Arguments:
        devices: ``None`` for all devices (``jax.devices()``, every host's after
            ``jax.distributed.initialize``), an int ``k`` for the first ``k`` of them, or a
            sequence of ``jax.Device``.
    """
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices must be between 1 and the {len(available)} available device(s), got {devices}")
        chosen = available[:int(devices)]
    elif isinstance(devices, Sequence) and len(devices) > 0 and all(isinstance(d, jax.Device) for d in devices):
        chosen = list(devices)
        if len({d.id for d in chosen}) != len(chosen):
            raise ValueError(f"devices must not repeat a device, got {[d.id for d in chosen]}")
    else:
        raise ValueError(f"devices must be None, a positive int or a non-empty list of jax.Device, got {devices!r}")
    return Mesh(np.asarray(chosen, dtype=object), (BATCH_AXIS,))


def mesh_for_training(devices, batch_size: int) -> Mesh | None:
    """The ``devices`` argument of ``fit`` / ``fab`` -> a mesh (``None`` stays ``None``: one device;
    ``"all"``, an int or a list as in :func:`make_mesh`), checking that ``batch_size`` splits evenly."""
    if devices is None:
        return None
    mesh = make_mesh(None if devices == "all" else devices)
    check_divisible(batch_size, mesh, "batch_size")
    return mesh


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh, every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh, name: str = "batch size") -> None:
    """Raise a one-line ``ValueError`` unless ``batch_size`` splits evenly over the mesh (no padding)."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{name} {batch_size} must be divisible by the number of devices {n} "
                         f"(data parallel splits every batch evenly; try {max(n, batch_size // n * n)})")


def shard_batch(batch, mesh: Mesh):
    """Split the leading axis of every array leaf of ``batch`` across ``mesh``.

    ``batch``: any pytree of arrays with a common leading size ``B``, divisible by the number
    of devices (else ``ValueError``).  Every process must pass the same full batch; each
    device receives its ``(B / n_devices, ...)`` slice.
    """
    arrays, rest = eqx.partition(batch, eqx.is_array)
    leaves = jax.tree_util.tree_leaves(arrays)
    if not leaves:
        raise ValueError("shard_batch needs at least one array in the batch")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every batch array must have the same leading (batch) axis, got leading sizes {sorted(map(str, sizes))}")
    check_divisible(sizes.pop(), mesh)
    sharding = batch_sharding(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.device_put(leaf, sharding)  # typed keys: no host round trip
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return eqx.combine(jax.tree_util.tree_map(put, arrays), rest)


def replicate(tree, mesh: Mesh):
    """Copy every array leaf of ``tree`` (parameters, optimizer state, keys) to all devices of ``mesh``.

    With several processes, every process must pass the same values.
    """
    arrays, rest = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, replicated_sharding(mesh)), rest)


def constrain_batch(tree, mesh: Mesh | None, axis: int = 0):
    """Inside ``jax.jit``: split axis ``axis`` of every array leaf of ``tree`` across ``mesh``.

    For batches that are *created* inside a jitted function (AIS chains drawn from per-chain
    keys, minibatches drawn from the replay buffer): there is no input sharding to propagate,
    so without this hint the compiler would run all of them on every device.  ``mesh=None``
    returns ``tree`` unchanged (the one-device program).  The values do not change, only where
    they are computed.
    """
    if mesh is None:
        return tree
    spec = PartitionSpec(*([None] * axis), BATCH_AXIS)
    arrays, rest = eqx.partition(tree, eqx.is_array)
    constrained = jax.tree_util.tree_map(lambda t: jax.lax.with_sharding_constraint(t, NamedSharding(mesh, spec)), arrays)
    return eqx.combine(constrained, rest)


def to_local(tree):
    """Replicated arrays that span several hosts -> this host's copy (a no-op on one host).

    Use before reading values on the host (``float(...)``, saving a checkpoint).  Only valid
    for replicated arrays: a sharded array's local piece is not the whole array.
    """
    def local(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.sharding.is_fully_replicated:
                raise ValueError(f"to_local needs replicated arrays, got one sharded as {leaf.sharding}")
            return leaf.addressable_data(0)
        return leaf

    return jax.tree_util.tree_map(local, tree)


def gather(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-host) array as one NumPy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
