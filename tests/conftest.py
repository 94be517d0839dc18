"""Test-wide JAX settings and the float32 / float64 split.

Strict JAX everywhere (STYLE.md): ``jax_debug_nans`` re-runs a jitted function op by op and
raises at the first NaN; ``jax_numpy_rank_promotion="raise"`` turns silent broadcasting of
arrays of different rank — a classic shape bug in (n_nodes, dim) code — into an error.

x64 is a global switch, so float64 tests run in a separate pytest process:

    pytest -q tests                          # float32 pass: unmarked tests
    JAX_ENABLE_X64=1 pytest -q -m x64 tests  # float64 pass: tests marked @pytest.mark.x64

JAX reads ``JAX_ENABLE_X64`` itself at import; nothing here sets ``jax_enable_x64``.
"""

import os

# Compile faster in tests: the XLA CPU backend's LLVM optimisation passes dominate compile
# time for these small graphs, and the tests check correctness, not speed.  (Set before
# jax is imported; an XLA_FLAGS from the environment wins.)
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_debug_nans", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = bool(jax.config.jax_enable_x64)


def pytest_report_header(config):
    return (
        f"jax {jax.__version__} ({jax.default_backend()}), "
        f"x64={'on' if X64 else 'off'}, debug_nans=on, rank_promotion=raise"
    )


def pytest_collection_modifyitems(config, items):
    """Run x64-marked tests only with x64 on, and unmarked tests only with it off."""
    skip_x64 = pytest.mark.skip(reason="float64 test: runs in the JAX_ENABLE_X64=1 pass")
    skip_f32 = pytest.mark.skip(reason="float32 test: runs in the pass without JAX_ENABLE_X64")
    for item in items:
        is_x64 = item.get_closest_marker("x64") is not None
        if is_x64 and not X64:
            item.add_marker(skip_x64)
        elif X64 and not is_x64:
            item.add_marker(skip_f32)


@pytest.fixture
def key():
    """A fresh typed PRNG key, ``jax.random.key(0)``; split it, never reuse it."""
    return jax.random.key(0)
