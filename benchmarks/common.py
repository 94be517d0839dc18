"""Shared by the benchmark scripts: the machine description and the results writer."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time

import jax

from eacf_lab import checkpoint
from eacf_lab.atomic import atomic_write


def command(script: str) -> str:
    """This process's command line for ``benchmarks/<script>``, with the XLA_FLAGS it ran under
    (they can set the CPU device count, so the arguments alone would not rerun it)."""
    flags = os.environ.get("XLA_FLAGS", "")
    line = f"python benchmarks/{script} {shlex.join(sys.argv[1:])}"
    return f"XLA_FLAGS={shlex.quote(flags)} {line}" if flags else line


def machine() -> dict:
    """Where a benchmark ran: platform, CPU count, Python/JAX versions, backend, devices, XLA flags."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "n_devices": jax.device_count(), "devices": [str(d) for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


class Clock:
    """Wall and CPU seconds of a block: ``with Clock() as c: ...; c.wall, c.cpu``."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


SMOKE_SIZES = dict(n_blocks=1, n_invariant=8, mlp_width=16, mlp_depth=1, egnn_layers=1, egnn_hidden=16,
                   transformer_layers=1, transformer_size=16, transformer_heads=2)


def flow_sizes(args) -> dict:
    """``make_flow`` sizes from the ``--n-blocks`` / ``--size`` / ``--smoke`` options of the quality benchmarks."""
    sizes = {}
    if args.n_blocks:
        sizes["n_blocks"] = args.n_blocks
    if args.size:
        sizes.update(n_invariant=args.size, mlp_width=args.size, egnn_hidden=args.size, transformer_size=args.size)
    if args.smoke:
        sizes.update(SMOKE_SIZES)
    return sizes


def size_label(run: dict) -> str:
    """A run record's flow size as the tables print it: ``"blocks x width"`` from its ``flow_config``."""
    c = run["flow_config"]
    return f"{c['n_blocks']} x {c['mlp_width']}"


def export_flow(run_path: str, flow, metrics: dict) -> str:
    """Next to a run's training checkpoint ``run_path`` (``x.eqx``), write ``x-flow.eqx``: the
    trained flow alone (no optimizer or buffer state) with the run's config and ``metrics`` --
    the layout of ``eacf-lab train``'s ``flow.eqx``, so a run worth keeping ships as it is."""
    out = run_path.replace(".eqx", "-flow.eqx")
    checkpoint.save(out, flow, checkpoint.peek(run_path)["config"], metrics)
    return out


def add_results_options(parser) -> None:
    """The quality benchmarks' ``--merge``, ``--note`` and ``--drop-notes`` options."""
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="train nothing: write one results file from the runs (and notes) of these results "
                             "files (e.g. runs made in separate processes, side by side)")
    parser.add_argument("--note", action="append", default=[],
                        help="a note for the results file (repeatable; with --merge, after the merged files' notes)")
    parser.add_argument("--drop-notes", action="store_true",
                        help="with --merge: do not carry the merged files' notes over (to rewrite them with --note)")


def merge_runs(paths: list, script: str, error) -> tuple[list, list]:
    """The runs and notes of several results files that ``benchmarks/<script>`` wrote (e.g. runs
    made side by side in separate processes): each run tagged with the command that made it, each
    note once, in order; a run without its own ``machine`` gets its file's, unless that file was
    itself a merge (whose machine is only where it was merged). ``error`` is called with a
    one-line message (``argparse``'s ``parser.error``) for a file it cannot use."""
    runs, notes = [], []
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
            file_runs, argv, file_notes = doc["runs"], doc["argv"], doc.get("notes", [])
            if not isinstance(file_runs, list) or not all(isinstance(r, dict) for r in file_runs):
                raise TypeError("'runs' is not a list of runs")
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise TypeError("'argv' is not a list of arguments")
            if not isinstance(file_notes, list) or not all(isinstance(n, str) for n in file_notes):
                raise TypeError("'notes' is not a list of strings")
        except (OSError, ValueError, KeyError, TypeError) as e:
            error(f"--merge needs {os.path.splitext(script)[0]}.json files written by {script}; {path}: {e!r}")
        for r in file_runs:
            r.setdefault("command", f"python benchmarks/{script} {shlex.join(argv)}")
            if "--merge" not in argv and isinstance(doc.get("machine"), dict):
                r.setdefault("machine", doc["machine"])  # a file a run wrote names the run's machine
            runs.append(r)
        notes += [n for n in file_notes if n not in notes]
    return runs, notes


def merged_results(args, script: str, error) -> list | None:
    """``--merge``: the merged runs; ``args.note`` becomes the merged files' notes (unless
    ``--drop-notes``) followed by the new ones, each once. ``None`` without ``--merge`` (where
    ``--drop-notes`` is an error)."""
    if not args.merge:
        if args.drop_notes:
            error("--drop-notes needs --merge")
        return None
    runs, notes = merge_runs(args.merge, script, error)
    args.note = list(dict.fromkeys(([] if args.drop_notes else notes) + args.note))
    return runs


def machine_line(runs: list, here: dict) -> str:
    """The results file's machine line: ``Machine: ...`` when every run ran on ``here`` (this
    process's machine); otherwise (a ``--merge`` of runs made elsewhere, or with other XLA flags)
    where the file was written, and where to find each run's own machine."""
    if all(r.get("machine") == here for r in runs):
        return f"Machine: {here}"
    return (f"Written on: {here}. The runs were made elsewhere or with other XLA flags: each run's machine is "
            f"its `machine` in the JSON (where recorded), its XLA flags are in its command.")


def write_results(out: str, name: str, title: str, script: str, runs: list, table: str, notes=()) -> str:
    """Atomically write ``out/name.json`` (machine, command, runs, notes) and ``out/name.md`` (title,
    machine, command, ``table``, notes); return the markdown."""
    result = {"machine": machine(), "argv": sys.argv[1:], "runs": runs, "notes": list(notes)}
    md = (f"# {title}\n\n{machine_line(runs, result['machine'])}\n\n"
          f"Command: `{command(script)}`\n\n{table}\n")
    if notes:
        md += "\nNotes:\n\n" + "".join(f"* {n}\n" for n in notes)
    os.makedirs(out, exist_ok=True)
    for ext, text in (("json", json.dumps(result, indent=1, default=float)), ("md", md)):
        atomic_write(os.path.join(out, f"{name}.{ext}"), text)
    return md
