"""Live training figures for the notebooks: callbacks that redraw a plotly figure in place.

``ml.fit`` and ``fab.fab`` call ``callback(step, row)`` after every step / iteration.  The
callbacks made here keep their own copy of the history (the one the trainers return arrives
only at the end), and redraw ``histograms.training_curves`` / ``histograms.fab_curves`` in the
same output area (``display(fig, display_id=True)`` and ``handle.update(fig)``):

    flow, history = ml.fit(flow, train, key=key, epochs=100, callback=live_training_plot(50, "DW4"))
    flow, history = fab.fab(flow, target, key=key, n_iterations=..., callback=live_fab_plot(10, "DW4"))

``time_estimate`` times a few ML steps (after compilation) and extrapolates to a whole run, so
a notebook can print an honest estimate before a long cell.  Each callback exposes its
``history`` and display ``handle`` as attributes (for tests and for re-plotting).
"""

from __future__ import annotations

import jax
from IPython.display import display

from eacf_lab.viz import histograms

__all__ = ["live_training_plot", "live_fab_plot", "time_estimate"]

ML_KEYS = ("step", "nll", "aux", "lr")
FAB_KEYS = ("iteration", "loss", "flow_ess", "time")
FAB_EVAL_KEYS = ("reverse_ess", "ais_ess", "forward_ess", "nll")


def live_training_plot(every: int, title: str):
    """A callback for ``ml.fit`` that redraws ``histograms.training_curves`` every ``every`` steps.

    Arguments:
        every: redraw period in steps (also redrawn at every validation).
        title: the figure's title.

    Returns ``callback(step, metrics)``; ``metrics`` must hold ``nll``, ``aux``, ``lr`` and, on
    validation steps, ``val_nll``.  ``callback.history`` (lists ``step``, ``nll``, ``aux``, ``lr``,
    ``val_step``, ``val_nll``) and ``callback.handle`` (the IPython display handle) are attached.
    """
    history = {k: [] for k in ML_KEYS + ("val_step", "val_nll")}
    handle = display(histograms.training_curves(history, title=title), display_id=True)

    def callback(step, metrics):
        history["step"].append(step)
        for k in ML_KEYS[1:]:
            history[k].append(metrics[k])
        if "val_nll" in metrics:
            history["val_step"].append(step)
            history["val_nll"].append(metrics["val_nll"])
        if step % every == 0 or "val_nll" in metrics:
            handle.update(histograms.training_curves(history, title=title))

    callback.history, callback.handle = history, handle
    return callback


def live_fab_plot(every: int, title: str = "FAB training"):
    """A callback for ``fab.fab`` that redraws ``histograms.fab_curves`` every ``every`` iterations.

    Arguments:
        every: redraw period in iterations (also redrawn at every evaluation).
        title: the figure's title.

    Returns ``callback(iteration, row)``; ``row`` is fab's per-iteration dict (``loss``,
    ``flow_ess``, ``time``, ... and ``eval_<metric>`` on evaluation iterations).  The callback
    never asks fab to stop.  ``callback.history`` (the keys ``fab_curves`` reads: ``iteration``,
    ``loss``, ``flow_ess``, ``time``, ``eval_iteration``, ``eval_reverse_ess``, ``eval_ais_ess``,
    ``eval_forward_ess``, ``eval_nll``) and ``callback.handle`` are attached.
    """
    history = {k: [] for k in FAB_KEYS + ("eval_iteration",) + tuple("eval_" + k for k in FAB_EVAL_KEYS)}
    handle = display(histograms.fab_curves(history, title=title), display_id=True)

    def callback(iteration, row):
        history["iteration"].append(iteration)
        for k in FAB_KEYS[1:]:
            history[k].append(row[k])
        evaluated = "eval_reverse_ess" in row
        if evaluated:
            history["eval_iteration"].append(iteration)
            for k in FAB_EVAL_KEYS:
                if "eval_" + k in row:
                    history["eval_" + k].append(row["eval_" + k])
        if iteration % every == 0 or evaluated:
            handle.update(histograms.fab_curves(history, title=title))
        return False

    callback.history, callback.handle = history, handle
    return callback


def time_estimate(flow, train_data, epochs: int, *, batch_size: int = 32, n_timed: int = 6, key=None, **fit_kwargs):
    """Time ``n_timed`` steps of ``ml.fit`` and extrapolate to ``epochs`` over ``train_data``.

    Arguments:
        flow: the flow to be trained (not changed: the timed steps train a copy).
        train_data: ``(N, n_nodes, dim)`` training set of the real run.
        epochs: epochs of the real run; batch_size: its minibatch size.
        n_timed: steps to time (at least 3: the first one compiles).
        key: PRNG key of the timed steps (default ``jax.random.key(99)``).
        **fit_kwargs: the other ``ml.fit`` arguments of the real run (``aux_weight``, ``rotate``...).

    Returns ``(n_steps, seconds, compile_seconds)``: ``n_steps = epochs * (N // batch_size)``,
    the estimated training time without compilation, and the time of the first (compiling) step.
    """
    from eacf_lab.train import ml  # deferred: importing the viz package never pulls in training

    if n_timed < 3:
        raise ValueError(f"n_timed must be >= 3 (the first step compiles), got {n_timed}")
    key = jax.random.key(99) if key is None else key
    _, h = ml.fit(flow, train_data, key=key, epochs=epochs, batch_size=batch_size, stop_at_step=n_timed,
                  progress=False, **fit_kwargs)
    n_steps = epochs * (len(train_data) // batch_size)
    return n_steps, n_steps / ml.steps_per_second(h), h["time"][0]
