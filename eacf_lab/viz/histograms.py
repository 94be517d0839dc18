"""Plotly figures for training and evaluation: histograms (model vs data) and training curves.

The histogram figures read the dicts made by ``eacf_lab.evaluate.histogram`` (stored in
``evaluate(...)["energy_hist"]`` and ``["distance_hist"]``); ``training_curves`` reads the
``history`` returned by ``eacf_lab.train.ml.fit``. Every function returns a
``plotly.graph_objects.Figure``; show it in a notebook or ``fig.write_html(path)``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["histogram_figure", "energy_figure", "distance_figure", "training_curves"]


def _check_hist(hist):
    if not isinstance(hist, dict) or not {"edges", "model", "data"} <= set(hist):
        raise ValueError("hist must be a dict with 'edges', 'model' and 'data' (from eacf_lab.evaluate.histogram)")
    edges = np.asarray(hist["edges"], dtype=float)
    if len(hist["model"]) != len(edges) - 1 or len(hist["data"]) != len(edges) - 1:
        raise ValueError(f"hist needs len(edges) = len(model) + 1 = len(data) + 1, got {len(edges)}, "
                         f"{len(hist['model'])}, {len(hist['data'])}")
    return edges


def histogram_figure(hist: dict, *, xlabel: str, title: str = "", model_name: str = "flow") -> go.Figure:
    """Model vs data densities on shared bins (step lines, so both stay visible)."""
    edges = _check_hist(hist)
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=centres, y=hist["data"], mode="lines", line_shape="hvh", name="test data",
                             line=dict(color="black", width=2)))
    fig.add_trace(go.Scatter(x=centres, y=hist["model"], mode="lines", line_shape="hvh", name=model_name,
                             line=dict(color="crimson", width=2), fill="tozeroy", opacity=0.5))
    outside = hist.get("model_outside")
    if outside:
        title = f"{title} ({100 * outside:.1f} % of {model_name} values outside the axis)"
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title="density", template="plotly_white",
                      legend=dict(x=0.99, xanchor="right", y=0.99))
    return fig


def energy_figure(metrics: dict, **kwargs) -> go.Figure:
    """Energy histogram, model vs test set, from ``evaluate(...)`` output."""
    return histogram_figure(metrics["energy_hist"], xlabel="energy E(x)", title="Energy", **kwargs)


def distance_figure(metrics: dict, **kwargs) -> go.Figure:
    """Interatomic-distance histogram, model vs test set, from ``evaluate(...)`` output."""
    return histogram_figure(metrics["distance_hist"], xlabel="interatomic distance |x_i - x_j|",
                            title="Interatomic distances", **kwargs)


def _smooth(y, n):
    y = np.asarray(y, dtype=float)
    if n <= 1 or len(y) < n:
        return y
    ok = np.isfinite(y)
    y = np.where(ok, y, 0.0)
    k = np.ones(n)
    return np.convolve(y, k, "same") / np.maximum(np.convolve(ok.astype(float), k, "same"), 1)


def training_curves(history: dict, *, smooth: int = 0, title: str = "Maximum-likelihood training") -> go.Figure:
    """Loss (joint NLL of the minibatch, raw and smoothed), validation joint NLL and the
    learning rate against the step. ``smooth``: moving-average window (default ~1 % of steps)."""
    if not isinstance(history, dict) or "step" not in history or "nll" not in history:
        raise ValueError("history must be the dict returned by eacf_lab.train.ml.fit (needs 'step' and 'nll')")
    steps = np.asarray(history["step"])
    smooth = smooth or max(1, len(steps) // 100)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.05)
    fig.add_trace(go.Scatter(x=steps, y=history["nll"], mode="lines", name="train NLL (batch)",
                             line=dict(color="lightsteelblue", width=1)), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=_smooth(history["nll"], smooth), mode="lines",
                             name=f"train NLL (mean of {smooth})", line=dict(color="steelblue")), row=1, col=1)
    if history.get("val_step"):
        fig.add_trace(go.Scatter(x=history["val_step"], y=history["val_nll"], mode="lines+markers",
                                 name="validation joint NLL", line=dict(color="darkorange")), row=1, col=1)
    if any(history.get("aux", [])):
        fig.add_trace(go.Scatter(x=steps, y=_smooth(history["aux"], smooth), mode="lines", name="aux loss",
                                 line=dict(color="seagreen", dash="dot")), row=1, col=1)
    if history.get("lr"):
        fig.add_trace(go.Scatter(x=steps, y=history["lr"], mode="lines", name="learning rate",
                                 line=dict(color="gray")), row=2, col=1)
    finite = [v for v in history["nll"] if np.isfinite(v)]
    if finite:  # clip the y-range to the bulk so the first steps do not flatten the curve
        lo, hi = np.quantile(finite, [0.0, 0.98])
        fig.update_yaxes(range=[lo - 0.05 * (hi - lo + 1), hi + 0.05 * (hi - lo + 1)], row=1, col=1)
    fig.update_yaxes(title_text="nats", row=1, col=1)
    fig.update_yaxes(title_text="lr", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def fab_curves(history: dict, *, x: str = "iteration", title: str = "FAB training") -> go.Figure:
    """ESS during FAB training (``eacf_lab.train.fab.fab``'s history): the flow's reverse ESS and
    the ESS of AIS towards ``p`` at the evaluations, the per-iteration flow ESS of the AIS batch
    (noisy), and the loss. ``x="time"`` plots against wall time (seconds) instead."""
    if not isinstance(history, dict) or "iteration" not in history or "eval_reverse_ess" not in history:
        raise ValueError("history must be the dict returned by eacf_lab.train.fab.fab")
    if x not in ("iteration", "time"):
        raise ValueError(f"x must be 'iteration' or 'time', got {x!r}")
    it = np.asarray(history["iteration"])
    xs = it if x == "iteration" else np.asarray(history["time"])
    ev = np.asarray(history["eval_iteration"], dtype=int)
    ev_x = ev if x == "iteration" else np.interp(ev, it, xs) if len(it) else ev
    smooth = max(1, len(it) // 50)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.06)
    fig.add_trace(go.Scatter(x=xs, y=100 * _smooth(history["flow_ess"], smooth), mode="lines",
                             name=f"flow ESS, AIS batch (mean of {smooth})", line=dict(color="lightsteelblue")),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=ev_x, y=100 * np.asarray(history["eval_reverse_ess"]), mode="lines+markers",
                             name="flow reverse ESS (eval)", line=dict(color="steelblue")), row=1, col=1)
    fig.add_trace(go.Scatter(x=ev_x, y=100 * np.asarray(history["eval_ais_ess"]), mode="lines+markers",
                             name="AIS ESS towards p (eval)", line=dict(color="darkorange")), row=1, col=1)
    if history.get("eval_forward_ess"):
        fig.add_trace(go.Scatter(x=ev_x, y=100 * np.asarray(history["eval_forward_ess"]), mode="lines+markers",
                                 name="forward ESS (test set)", line=dict(color="seagreen", dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=xs, y=_smooth(history["loss"], smooth), mode="lines", name="loss",
                             line=dict(color="gray")), row=2, col=1)
    fig.update_yaxes(title_text="ESS (%)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=2, col=1)
    fig.update_xaxes(title_text="iteration" if x == "iteration" else "wall time (s)", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white")
    return fig
