"""Shared by the benchmark scripts: the machine description and the results writer."""

from __future__ import annotations

import json
import os
import platform
import sys

import jax

from eacf_lab.atomic import atomic_write


def machine() -> dict:
    """Where a benchmark ran: platform, CPU count, Python/JAX versions, backend and devices."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


def write_results(out: str, name: str, title: str, script: str, runs: list, table: str) -> str:
    """Atomically write ``out/name.json`` (machine, command, runs) and ``out/name.md`` (title,
    machine, command, ``table``); return the markdown."""
    result = {"machine": machine(), "argv": sys.argv[1:], "runs": runs}
    md = (f"# {title}\n\nMachine: {result['machine']}\n\n"
          f"Command: `python benchmarks/{script} {' '.join(sys.argv[1:])}`\n\n{table}\n")
    os.makedirs(out, exist_ok=True)
    for ext, text in (("json", json.dumps(result, indent=1, default=float)), ("md", md)):
        atomic_write(os.path.join(out, f"{name}.{ext}"), text)
    return md
