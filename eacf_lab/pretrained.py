"""Shipped pretrained checkpoints, loaded by name.

    flow, info = eacf_lab.pretrained.load("dw4-spherical-ml")
    info["config"]["flow"]      # the make_flow arguments
    info["metrics"]             # training cost (steps, wall time, machine) and test metrics

Names are ``<target>-<projection>-<training>``; the files are ``eacf_lab/pretrained/<name>.eqx``
written by ``eacf-lab train`` (see ``eacf_lab/pretrained/README.md`` for how each was made).
"""

from __future__ import annotations

from pathlib import Path

from eacf_lab import checkpoint

__all__ = ["available", "load", "path", "PRETRAINED_DIR"]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def available() -> list[str]:
    """Names of the shipped checkpoints, sorted."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.eqx"))


def path(name: str) -> Path:
    """File of checkpoint ``name``; ``ValueError`` listing the available names if unknown."""
    if not isinstance(name, str) or name not in available():
        raise ValueError(f"unknown pretrained checkpoint {name!r}; available: {available()}")
    return PRETRAINED_DIR / f"{name}.eqx"


def load(name: str):
    """``(flow, info)`` of checkpoint ``name``: ``info`` is its verified JSON header."""
    return checkpoint.load(path(name))
