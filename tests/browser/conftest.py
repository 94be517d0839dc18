"""Browser-test fixtures: one JupyterLab server and one headless Chromium for the whole session.

Recipe (``DESIGN.md`` Sec. 5): JupyterLab on ``127.0.0.1`` with a free port, token auth, a
temporary ``JUPYTER_CONFIG_DIR`` / ``JUPYTER_DATA_DIR`` / settings and workspaces dirs (nothing
of the user's own set-up leaks in, nothing is written to it), ``--allow-root`` when root, and
``EACF_LAB_QUICK=1`` in the server's environment (the kernels inherit it). Chromium is the Debian
package driven by Playwright's Python API (``executable_path="/usr/bin/chromium"``; Playwright's
own browser download does not work offline), WebGL through SwiftShader for nglview.

The user settings written here:

* ``autoStartDefaultKernel`` -- otherwise a "Select Kernel" dialog blocks Run All;
* ``windowingMode: "none"`` -- JupyterLab 4 otherwise leaves off-screen cells out of the DOM, and
  their outputs could be neither checked nor screenshotted;
* no news / update checks -- the machine is offline, and the toasts would cover cells;
* no autosave -- and the server serves a temporary *copy* of ``notebooks/``, so a test run never
  writes outputs into the repository nor sees another edit of the files mid-run.

The browser tests are skipped, loudly, only when ``/usr/bin/chromium`` (or Playwright) is
absent; ``.ci/run`` installs chromium with apt-get when it is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("EACF_LAB_CHROMIUM", "/usr/bin/chromium")
# DESIGN.md Sec. 5: SwiftShader WebGL (nglview), no sandbox (root in CI), nothing that phones home.
CHROMIUM_ARGS = [
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox", "--disable-gpu",
    "--disable-dev-shm-usage", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"autoStartDefaultKernel": True, "windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
SERVER_START_TIMEOUT = 120.0


def _skip_reason() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"BROWSER TESTS SKIPPED: no Chromium at {CHROMIUM}. Install it with "
                "`apt-get install -y chromium` (as root; .ci/run does this) or set EACF_LAB_CHROMIUM.")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "BROWSER TESTS SKIPPED: playwright is not installed (pip install -e '.[test]')."
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    if reason is None:
        return
    print(f"\n{'#' * 78}\n# {reason}\n{'#' * 78}", file=sys.stderr)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings_dir: Path) -> None:
    for rel, value in USER_SETTINGS.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


class LabServer:
    """A running ``jupyter lab`` subprocess: ``url(path)`` builds authenticated URLs."""

    def __init__(self, tmp: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.log_path = tmp / "jupyterlab.log"
        dirs = {name: tmp / name for name in ("config", "data", "runtime", "settings", "workspaces", "root")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.root = dirs["root"]
        shutil.copytree(ROOT / "notebooks", self.root / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
        _write_settings(dirs["settings"])
        env = dict(os.environ, EACF_LAB_QUICK="1", JUPYTER_CONFIG_DIR=str(dirs["config"]),
                   JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
                   JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
                   JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]), PYTHONUNBUFFERED="1")
        # Same compile-time setting as tests/conftest.py: the kernels compile ~2x faster.
        env.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_ready()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{'&' if '?' in path else '?'}token={self.token}"

    def _wait_ready(self):
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_TIMEOUT:.0f} s; log:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # jupyter shuts its kernels down on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts_dir():
    """``artifacts/browser/`` (git-ignored), emptied at the start of the session."""
    path = ROOT / "artifacts" / "browser"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
