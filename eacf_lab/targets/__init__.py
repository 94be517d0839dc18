"""Target (unnormalised Boltzmann) densities: ``DW4``, ``LJ13`` and ``AlanineDipeptide`` ("aldp").

Each target has ``.energy(x)``, ``.log_prob(x) = -energy(x)``, ``.n_nodes``, ``.dim`` and
``.name``, for one example ``x: (n_nodes, dim)``.  ``get(name)`` builds one by name.
"""

from __future__ import annotations

from eacf_lab.targets.aldp import AlanineDipeptide
from eacf_lab.targets.dw4 import DW4
from eacf_lab.targets.lj13 import LJ13

__all__ = ["DW4", "LJ13", "AlanineDipeptide", "get", "TARGETS"]

TARGETS = {"dw4": DW4, "lj13": LJ13, "aldp": AlanineDipeptide}


def get(name: str):
    """Return the target with default (published) parameters: ``"dw4"``, ``"lj13"`` or ``"aldp"`` (300 K)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[name]()
