"""Every notebook, Run All in a real browser (JupyterLab 4 + headless Chromium), in quick mode.

For each ``notebooks/*.ipynb`` (one test each) we open it in JupyterLab, run all cells and
assert what nbval cannot see, because nbval never renders anything:

* every code cell executed, no error output, no traceback on stderr;
* no browser console error and no uncaught page error (the known-harmless ones are listed in
  ``HARMLESS_CONSOLE`` with the reason);
* every ipywidget view rendered (no "Loading widget...", no "Error displaying widget");
* every plotly figure rendered (``.js-plotly-plot .main-svg``);
* every nglview canvas non-blank (pixel variance of its screenshot).

One server and one browser serve all notebooks; ``EACF_LAB_BROWSER_PARALLEL`` (default 2, the
CPU cores of CI) notebooks run at once, each in its own page and JupyterLab workspace.
Per-cell screenshots and a ``summary.json`` land in ``artifacts/browser/`` (git-ignored).

Run: ``EACF_LAB_QUICK=1 pytest -p no:xdist tests/browser`` (``make test`` pass 4).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import pytest

from eacf_lab.atomic import atomic_write

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb"))
PARALLEL = max(1, int(os.environ.get("EACF_LAB_BROWSER_PARALLEL", "2")))
RUN_TIMEOUT = float(os.environ.get("EACF_LAB_BROWSER_TIMEOUT", "600"))  # s per notebook, Run All to idle
RENDER_TIMEOUT = 30.0     # s for widgets / figures / nglview to finish drawing after the kernel is idle
MIN_CANVAS_STD = 3.0      # std of the grey levels (0-255) of a non-blank nglview canvas
# Console messages that are not failures, each as (pattern, reason).  Empty: none was seen on the
# reference machine (JupyterLab 4.6, Chromium 156); add one only with the reason it is harmless.
HARMLESS_CONSOLE: list[tuple[re.Pattern, str]] = []

# Notebook state from JupyterLab's own model (window.jupyterapp: --LabApp.expose_app_in_browser):
# execution counts, error outputs, and the MIME types each cell displayed.
STATE_JS = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  if (!w || !w.content || !w.content.model || !w.sessionContext) return {ready: false};
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.model.cells;
  let code = 0, executed = 0;
  const errors = [], mimes = {};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    code++;
    if (c.executionCount !== null && c.executionCount !== undefined) executed++;
    mimes[i] = [];
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
      if (o.data) mimes[i].push(...Object.keys(o.data));
    }
  }
  return {ready: true, kernel: kernel ? kernel.status : null, code, executed, errors, mimes};
}"""

# What each cell shows in the DOM (same order as the model: windowingMode "none").
RENDER_JS = """() => {
  const q = (sel, root) => Array.from(root.querySelectorAll(sel));
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  return q('.jp-Cell', nb).map(c => {
    const outs = q('.jp-OutputArea-output', c);
    const plots = q('.js-plotly-plot', c);
    return {
      // ipywidgets' renderer swaps its 'Loading widget...' text for the view's Lumino widget;
      // nglview's view carries only 'lm-Widget', the standard controls also 'jupyter-widgets'.
      widgetViews: outs.filter(o => Array.from(o.children).some(
        ch => ch.classList.contains('jupyter-widgets') || ch.classList.contains('lm-Widget'))).length,
      loading: outs.filter(o => o.textContent.includes('Loading widget...')).length,
      widgetErrors: outs.filter(o => /Error displaying widget|model not found/i.test(o.textContent))
                        .map(o => o.textContent.slice(0, 200)),
      outputClasses: outs.map(o => o.className + ' > ' + Array.from(o.children).map(ch => ch.className).join(' | ')),
      plots: plots.length,
      plotsRendered: plots.filter(p => p.querySelector('.main-svg')).length,
      tracebacks: q('[data-mime-type="application/vnd.jupyter.stderr"]', c)
                    .filter(o => /Traceback \\(most recent call last\\)/.test(o.textContent))
                    .map(o => o.textContent.slice(0, 500)),
    };
  });
}"""
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def render_problems(mimes: dict, cells: list) -> list[str]:
    """Compare what the model says each cell displayed with what its DOM shows."""
    problems = []
    for i, c in enumerate(cells):
        shown = mimes.get(str(i), mimes.get(i, []))
        n_widgets, n_plotly = shown.count(WIDGET_MIME), shown.count(PLOTLY_MIME)
        if c["widgetViews"] < n_widgets:
            problems.append(f"cell {i}: {n_widgets} widget view(s) displayed, {c['widgetViews']} rendered "
                            f"(output elements: {c['outputClasses']})")
        if c["loading"]:
            problems.append(f"cell {i}: {c['loading']} widget(s) still 'Loading widget...'")
        if c["widgetErrors"]:
            problems.append(f"cell {i}: {c['widgetErrors']}")
        if c["plotsRendered"] < max(c["plots"], n_plotly):
            problems.append(f"cell {i}: {max(c['plots'], n_plotly)} plotly figure(s), {c['plotsRendered']} drawn")
        if c["tracebacks"]:
            problems.append(f"cell {i}: traceback on stderr: {c['tracebacks']}")
    return problems


# Grey-level standard deviation of a PNG (decoded by the browser: no imaging library needed).
PIXEL_STD_JS = """async (b64) => {
  const img = new Image();
  img.src = 'data:image/png;base64,' + b64;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let s = 0, s2 = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const g = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    s += g; s2 += g * g; n++;
  }
  const m = s / n;
  return Math.sqrt(Math.max(s2 / n - m * m, 0));
}"""


def _harmless(text: str) -> bool:
    return any(p.search(text) for p, _ in HARMLESS_CONSOLE)


class NotebookRun:
    """One notebook in one page: open -> kernel idle -> Run All -> executed -> checks."""

    def __init__(self, browser, server, nb: Path, index: int, out_dir: Path):
        self.nb, self.name, self.out_dir = nb, nb.stem, out_dir / nb.stem
        self.result = dict(notebook=self.name, console_errors=[], page_errors=[], errors=[], timed_out=False)
        # One browser context per notebook: JupyterLab tabs sharing localStorage fight over their
        # window names ("Window name candidate ... already exists"), which is not what we test.
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.result["page_errors"].append(str(e)))
        rel = f"notebooks/{nb.name}"  # in the server's temporary copy of notebooks/
        self.page.goto(server.url(f"lab/workspaces/browser-{index}/tree/{rel}?reset"), wait_until="domcontentloaded")
        self.t0, self.phase, self.last = time.monotonic(), "kernel", {}
        self.idle_polls, self.run_all_at = 0, 0.0

    def _on_console(self, msg):
        if msg.type == "error" and not _harmless(msg.text):
            loc = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
            self.result["console_errors"].append(f"{msg.text} ({loc})" if loc else msg.text)

    def poll(self) -> bool:
        """Advance; True when finished (executed, failed or timed out)."""
        state = self.page.evaluate(STATE_JS)
        self.last = state
        if time.monotonic() - self.t0 > RUN_TIMEOUT:
            self.result["timed_out"] = True
            return True
        if not state.get("ready"):
            return False
        idle = state["kernel"] == "idle"
        if self.phase == "kernel" or (idle and not state["executed"] and time.monotonic() - self.run_all_at > 20):
            if idle:  # what a learner does: focus the notebook, menu Run > Run All Cells
                self.page.bring_to_front()
                self.page.click(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
                self.page.click('.lm-MenuBar-itemLabel:text-is("Run")')
                self.page.click('.lm-Menu-itemLabel:text-is("Run All Cells")')
                self.phase, self.run_all_at = "running", time.monotonic()
            return False
        self.idle_polls = self.idle_polls + 1 if idle else 0
        if idle and state["executed"] == state["code"]:
            return True
        # A failing cell aborts the queue: the kernel goes idle with unexecuted cells left.
        return bool(state["errors"]) and self.idle_polls >= 3

    def finish(self):
        r = self.result
        r["seconds_to_idle"] = round(time.monotonic() - self.t0, 1)
        r["code_cells"], r["executed"] = self.last.get("code"), self.last.get("executed")
        r["errors"] = self.last.get("errors", [])
        mimes = self.last.get("mimes", {})
        deadline = time.monotonic() + RENDER_TIMEOUT
        while True:  # widgets and figures render asynchronously after the kernel replies
            problems = render_problems(mimes, self.page.evaluate(RENDER_JS))
            if not problems or time.monotonic() > deadline:
                break
            self.page.wait_for_timeout(500)
        r["render_problems"] = problems
        r["displayed"] = {m: sum(v.count(m) for v in mimes.values()) for m in (WIDGET_MIME, PLOTLY_MIME)}
        r["canvas_std"] = self._canvas_stds()
        r["screenshots"] = self._screenshots()
        r["seconds"] = round(time.monotonic() - self.t0, 1)
        self.context.close()

    def _canvas_stds(self):
        """Pixel std of every nglview canvas (not plotly's), retried while NGL is still drawing."""
        stds = []
        canvases = [c for c in self.page.query_selector_all(".jp-OutputArea-output canvas")
                    if not c.evaluate("c => !!c.closest('.js-plotly-plot')")]
        for c in canvases:
            c.scroll_into_view_if_needed()
            deadline, std = time.monotonic() + RENDER_TIMEOUT, 0.0
            while std < MIN_CANVAS_STD and time.monotonic() < deadline:
                self.page.wait_for_timeout(500)
                std = self.page.evaluate(PIXEL_STD_JS, base64.b64encode(c.screenshot()).decode())
            stds.append(round(std, 2))
        return stds

    def _screenshots(self) -> int:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cells = self.page.query_selector_all(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
        for i, cell in enumerate(cells):
            cell.screenshot(path=str(self.out_dir / f"cell-{i:02d}.png"), timeout=15_000)
        return len(cells)


def _run_notebooks(browser, server, notebooks, out_dir) -> dict:
    """Run ``notebooks``, ``PARALLEL`` at a time (heaviest first); results by notebook stem."""
    queue = sorted(notebooks, key=lambda p: -p.stat().st_size)
    running, results = [], {}
    try:
        while queue or running:
            while queue and len(running) < PARALLEL:
                running.append(NotebookRun(browser, server, queue.pop(0), len(results) + len(running), out_dir))
            for run in list(running):
                if run.poll():
                    run.finish()
                    results[run.name] = run.result
                    running.remove(run)
            time.sleep(1.0)
    finally:
        for run in running:
            run.context.close()
    return results


@pytest.fixture(scope="session")
def notebook_results(request, browser, lab_server, artifacts_dir):
    """Results of every collected notebook, computed on first use (in parallel pages).

    Under pytest-xdist each worker cannot know which notebooks it will get, so there each
    notebook runs on its own when its test asks for it.
    """
    cache = {}
    wanted = [nb for nb in NOTEBOOKS if any(f"[{nb.stem}]" in item.nodeid for item in request.session.items)]
    batch = os.environ.get("PYTEST_XDIST_WORKER") is None

    def get(nb: Path) -> dict:
        if nb.stem not in cache:
            cache.update(_run_notebooks(browser, lab_server, wanted if batch else [nb], artifacts_dir))
            summary = {"server_log_tail": lab_server.log()[-2000:], "results": cache}
            atomic_write(artifacts_dir / "summary.json", json.dumps(summary, indent=1))
        return cache[nb.stem]

    return get


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_renders_in_browser(nb, notebook_results):
    r = notebook_results(nb)
    where = f"{nb.name} (screenshots: artifacts/browser/{nb.stem}/)"
    assert not r["timed_out"], f"{where}: not finished within {RUN_TIMEOUT:.0f} s ({r['executed']}/{r['code_cells']} cells)"
    assert not r["errors"], f"{where}: error outputs: {r['errors']}"
    assert r["executed"] == r["code_cells"] > 0, f"{where}: {r['executed']}/{r['code_cells']} code cells executed"
    assert not r["page_errors"], f"{where}: uncaught page errors: {r['page_errors']}"
    assert not r["console_errors"], f"{where}: browser console errors: {r['console_errors']}"
    assert not r["render_problems"], f"{where}: not rendered:\n" + "\n".join(r["render_problems"])
    assert all(s > MIN_CANVAS_STD for s in r["canvas_std"]), f"{where}: blank nglview canvas (pixel std {r['canvas_std']})"
    assert r["screenshots"] > 0
