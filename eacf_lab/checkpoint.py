"""Checkpoints: one self-describing, verified file per saved flow (no pickle).

File layout (all integers little-endian)::

    offset 0   8 bytes   magic b"EACFLAB1"
    offset 8   8 bytes   uint64 n = length of the JSON header in bytes
    offset 16  32 bytes  sha256 of the header bytes (a flipped header byte is caught)
    offset 48  n bytes   UTF-8 JSON header (see below)
    then       payload = eqx.tree_serialise_leaves(flow) + [tree_serialise_leaves(train_state)]

The header holds ``format_version``, ``config`` (JSON; ``config["flow"]`` are the keyword
arguments of ``make_flow``), ``metrics``, ``versions``, ``created`` (UTC, ISO 8601),
``payload_bytes`` ``{"flow": int, "train_state": int}`` (0 = no train state),
``payload_sha256`` and ``structure`` ``{"flow": sig, "train_state": sig or None}``, where
``sig`` lists ``[shape, dtype]`` of every serialised leaf, in tree order.

PRNG keys: typed keys (``jax.random.key``) are stored as ``jax.random.key_data`` and
re-wrapped on load with the implementation of the key in ``train_state_like``; the
signature records their dtype, e.g. ``key<fry>``. Tuples in ``config`` come back as lists.
Non-finite metric values are stored as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

Writes are atomic (temp file in the same directory, fsync, ``os.replace``): a crash leaves
the previous checkpoint intact. Saving non-finite parameters is refused unless
``allow_nan=True``, so a diverged run cannot overwrite a good checkpoint by accident.
"""

import datetime
import hashlib
import io
import json
import math
import os
import platform
import struct

import equinox as eqx
import jax
import numpy as np

from eacf_lab.atomic import atomic_write

__all__ = ["save", "load", "peek", "MAGIC", "FORMAT_VERSION"]

MAGIC = b"EACFLAB1"
FORMAT_VERSION = 1
_PREFIX = 8 + 8 + 32
_JSON_SCALARS = (str, int, float, bool, type(None))


def _is_key(x) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _leaves(tree) -> list:
    """Leaves ``tree_serialise_leaves`` writes (arrays, Python/NumPy scalars), plus the
    ``jax.ShapeDtypeStruct`` leaves of an abstract skeleton (``eqx.filter_eval_shape``)."""
    return [
        x for x in jax.tree.leaves(tree)
        if eqx.is_array_like(x) or isinstance(x, jax.ShapeDtypeStruct)
    ]


def _signature(tree) -> list:
    """``[[shape], dtype]`` per serialised leaf; Python scalars get their type name."""
    sig = []
    for x in _leaves(tree):
        if isinstance(x, (bool, int, float, complex)):
            sig.append([[], type(x).__name__])
        else:
            sig.append([list(np.shape(x)), str(x.dtype)])
    return sig


def _key_data(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        raise ValueError("PRNG-key leaves of train_state_like must be real keys, not ShapeDtypeStruct")
    return jax.random.key_data(x)


def _unkey(tree):
    return jax.tree.map(lambda x: _key_data(x) if _is_key(x) else x, tree)


def _rekey(loaded, like):
    return jax.tree.map(
        lambda y, x: jax.random.wrap_key_data(y, impl=jax.random.key_impl(x)) if _is_key(x) else y,
        loaded, like,
    )


def _check_json(obj, where: str, *, metrics: bool = False):
    """Return a strict-JSON copy of ``obj`` or raise ValueError naming the bad item."""
    if metrics and not isinstance(obj, (dict, list, tuple)) and eqx.is_array_like(obj):
        if np.ndim(obj) == 0:  # 0-d jax/numpy scalars are fine in metrics
            obj = np.asarray(obj).item()
    if isinstance(obj, float) and not math.isfinite(obj):
        if metrics:
            return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
        raise ValueError(f"{where} is {obj!r}; expected a finite number (strict JSON)")
    if isinstance(obj, _JSON_SCALARS):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_check_json(v, f"{where}[{i}]", metrics=metrics) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has key {k!r} of type {type(k).__name__}; expected str keys")
            out[k] = _check_json(v, f"{where}[{k!r}]", metrics=metrics)
        return out
    raise ValueError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}; expected a JSON value "
        "(dict with str keys, list, str, int, float, bool, None)"
    )


def _versions() -> dict:
    try:
        from eacf_lab import __version__ as lab_version
    except ImportError:
        lab_version = None
    return {"eacf_lab": lab_version, "jax": jax.__version__, "equinox": eqx.__version__,
            "python": platform.python_version()}


def _serialise(tree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, _unkey(tree))
    return buf.getvalue()


def save(path, flow, config, metrics=None, *, train_state=None, allow_nan: bool = False) -> None:
    """Write ``flow`` (an ``eqx.Module``), its ``config`` and optional ``metrics`` and
    ``train_state`` (any pytree, e.g. ``{"opt_state": ..., "step": ..., "key": ...}``) to
    the single file ``path``, atomically. Raises ValueError for non-JSON config/metrics, a
    config without a ``"flow"`` dict, or non-finite parameters (unless ``allow_nan``)."""
    path = os.fspath(path)
    config = _check_json(config, "config")
    if not isinstance(config, dict) or not isinstance(config.get("flow"), dict):
        raise ValueError(f"config must be a dict with a dict config['flow'] (make_flow kwargs), got {config!r}")
    metrics = _check_json(metrics, "metrics", metrics=True)
    for what, tree in (("flow", flow), ("train_state", train_state)):
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in _leaves(tree)):
            raise ValueError(f"{what} has abstract ShapeDtypeStruct leaves; expected concrete arrays to save")
    if not allow_nan:
        for i, x in enumerate(_leaves(flow)):
            if eqx.is_inexact_array_like(x) and not np.all(np.isfinite(np.asarray(x))):
                raise ValueError(
                    f"refusing to save {path}: flow leaf {i} (shape {np.shape(x)}) has non-finite "
                    "values; pass allow_nan=True to save anyway"
                )
    flow_bytes = _serialise(flow)
    ts_bytes = b"" if train_state is None else _serialise(train_state)
    payload = flow_bytes + ts_bytes
    header = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "metrics": metrics,
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "payload_bytes": {"flow": len(flow_bytes), "train_state": len(ts_bytes)},
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "structure": {"flow": _signature(flow),
                      "train_state": None if train_state is None else _signature(train_state)},
    }
    hbytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    blob = MAGIC + struct.pack("<Q", len(hbytes)) + hashlib.sha256(hbytes).digest() + hbytes + payload

    atomic_write(path, blob)


def _read(path):
    """Read and verify ``path``; return ``(header, flow_bytes, train_state_bytes)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _PREFIX or data[:8] != MAGIC:
        raise ValueError(f"{path} is not an eacf_lab checkpoint: expected magic {MAGIC!r}, got {data[:8]!r}")
    (n,) = struct.unpack("<Q", data[8:16])
    if n > len(data) - _PREFIX:
        raise ValueError(f"{path} is truncated: header claims {n} bytes, only {len(data) - _PREFIX} follow")
    hbytes = data[_PREFIX:_PREFIX + n]
    if hashlib.sha256(hbytes).digest() != data[16:48]:
        raise ValueError(f"{path} is corrupted: header sha256 does not match")
    try:
        header = json.loads(hbytes.decode("utf-8"))
        version, sizes = header["format_version"], header["payload_bytes"]
        n_flow, n_ts, digest = int(sizes["flow"]), int(sizes["train_state"]), header["payload_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} has an invalid header: {type(e).__name__}: {e}") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}; this eacf_lab reads {FORMAT_VERSION}")
    payload = data[_PREFIX + n:]
    if len(payload) != n_flow + n_ts:
        raise ValueError(f"{path} is truncated or padded: expected {n_flow + n_ts} payload bytes, got {len(payload)}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{path} is corrupted: payload sha256 does not match the header")
    return header, payload[:n_flow], payload[n_flow:]


def peek(path) -> dict:
    """The verified JSON header of the checkpoint at ``path`` (magic, sizes, both sha256)."""
    return _read(path)[0]


def _default_builder(config):
    """``flow_from_config(config["flow"])`` (i.e. ``make_flow`` with the saved ``flow.config``),
    traced abstractly with ``eqx.filter_eval_shape`` (no compute: seconds instead of a full
    initialisation); falls back to a real build if it cannot be traced abstractly.
    A ``config["flow"]`` with ``"model": "ecnf"`` is the E-CNF baseline (``baselines/ecnf.py``)."""
    if config["flow"].get("model") == "ecnf":
        from eacf_lab.baselines.ecnf import ecnf_from_config  # a small EGNN: a real build takes < 1 s

        return ecnf_from_config(config["flow"])
    from eacf_lab.factory import flow_from_config  # lazy: the flow modules import much more

    try:
        return eqx.filter_eval_shape(flow_from_config, config["flow"])
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return flow_from_config(config["flow"])


def _deserialise(path, what, blob, like, expected):
    got = _signature(like)
    if got != expected:
        diff = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise ValueError(
            f"{path}: {what} structure mismatch: file has {len(expected)} leaves, skeleton "
            f"{len(got)}; first difference at leaf {diff}: file "
            f"{expected[diff] if diff < len(expected) else None}, skeleton {got[diff] if diff < len(got) else None}"
        )
    loaded = eqx.tree_deserialise_leaves(io.BytesIO(blob), _unkey(like))
    return _rekey(loaded, like)


def load(path, *, builder=None, train_state_like=None):
    """Load a checkpoint written by :func:`save`; return ``(flow, info)``.

    Arguments:
        path: checkpoint file.
        builder: ``config -> skeleton flow`` with the right structure; its array leaves may
            be ``jax.ShapeDtypeStruct`` (e.g. built with ``eqx.filter_eval_shape``, which
            costs no compute). Default: ``make_flow(jax.random.key(0), **config["flow"])``
            under ``eqx.filter_eval_shape``.
        train_state_like: optional pytree with the structure of the saved train state
            (e.g. a fresh ``optimizer.init(params)``); if given, the loaded train state is
            returned as ``info["train_state"]``.

    Returns:
        ``(flow, info)`` where ``info`` is the JSON header (a dict).

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` for a
    wrong magic, truncation, checksum failure or a skeleton that does not match the file.
    """
    path = os.fspath(path)
    header, flow_blob, ts_blob = _read(path)
    skeleton = (builder or _default_builder)(header["config"])
    flow = _deserialise(path, "flow", flow_blob, skeleton, header["structure"]["flow"])
    info = dict(header)
    if train_state_like is not None:
        if header["structure"].get("train_state") is None:
            raise ValueError(f"{path} has no train_state, but train_state_like was given")
        info["train_state"] = _deserialise(
            path, "train_state", ts_blob, train_state_like, header["structure"]["train_state"]
        )
    return flow, info
