"""Run a test script in a fresh Python process (tests that need their own XLA flags)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_child(script: str, *args, xla_flags: str | None = None, timeout: int = 600) -> dict:
    """``python -c script *args`` in float32 with ``xla_flags`` (XLA's defaults when None);
    returns the JSON the script printed on its last ``RESULT {...}`` line."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"the child printed no RESULT line; its output ends: {proc.stdout[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])
