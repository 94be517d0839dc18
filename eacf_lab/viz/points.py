"""Plotly figures of point clouds, reference frames, splines and curves (notebooks 01-04).

Every function takes NumPy/JAX arrays of *one* example and returns a ``plotly``
``go.Figure`` (plain, not a ``FigureWidget``: no ``anywidget`` needed), so the notebooks can
``display`` it directly or redraw it from a slider (``eacf_lab.viz.widgets.slider_figure``).
Point clouds are ``(n_nodes, dim)`` with ``dim`` 2 (drawn as a 2D scatter) or 3 (3D scatter).
A reference frame is ``(origin: (dim,), F: (dim, dim))`` with the axes as the **rows** of
``F``, as returned by the projections' ``frame(x_c, vectors)``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "PALETTE", "AXIS_COLORS", "point_cloud_traces", "frame_traces", "point_cloud_figure",
    "spline_knots", "spline_figure", "line_figure",
]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
AXIS_COLORS = ("#d62728", "#2ca02c", "#1f77b4")  # x, y, z axes: red, green, blue


def _points(x, name="x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in (2, 3):
        raise ValueError(f"{name} must be (n_nodes, dim) with dim 2 or 3, got shape {x.shape}")
    return x


def point_cloud_traces(x, *, name="x", color=None, size=8, symbol="circle", labels=True, opacity=1.0):
    """One scatter trace for ``x: (n_nodes, dim)``; ``labels`` writes the node index as text."""
    x = _points(x, name)
    text = [str(i) for i in range(len(x))] if labels else None
    marker = dict(size=size, color=color, symbol=symbol, opacity=opacity)
    mode = "markers+text" if labels else "markers"
    if x.shape[1] == 2:
        return [go.Scatter(x=x[:, 0], y=x[:, 1], mode=mode, name=name, marker=marker, text=text,
                           textposition="top center")]
    marker["size"] = max(2, size // 2)
    return [go.Scatter3d(x=x[:, 0], y=x[:, 1], z=x[:, 2], mode=mode, name=name, marker=marker, text=text)]


def frame_traces(origin, frame, *, scale=1.0, name="frame", colors=AXIS_COLORS, width=6):
    """One line trace per axis: from ``origin`` along each row of ``frame``, length ``scale``."""
    origin = np.asarray(origin, dtype=np.float64)
    frame = np.asarray(frame, dtype=np.float64)
    dim = origin.shape[-1]
    if origin.shape != (dim,) or frame.shape != (dim, dim) or dim not in (2, 3):
        raise ValueError(f"frame must be origin (dim,) and F (dim, dim), got {origin.shape} and {frame.shape}")
    traces = []
    for k in range(dim):
        tip = origin + scale * frame[k]
        seg = np.stack([origin, tip])
        label = f"{name} axis {'xyz'[k]}"
        line = dict(color=colors[k % len(colors)], width=width)
        if dim == 2:
            traces.append(go.Scatter(x=seg[:, 0], y=seg[:, 1], mode="lines+markers", name=label, line=line,
                                     marker=dict(size=[0, 9], symbol="arrow", angleref="previous")))
        else:
            traces.append(go.Scatter3d(x=seg[:, 0], y=seg[:, 1], z=seg[:, 2], mode="lines", name=label, line=line))
    return traces


def point_cloud_figure(clouds, *, frames=None, frame_scale=1.0, title=None, axis_range=None, height=450,
                       labels=True):
    """Point clouds (``{name: (n, dim)}``) and frames (``{name: (origin, F)}``) in one figure.

    ``axis_range``: half-width of a fixed, equal-aspect box centred at 0 (so that rotating a
    cloud with a slider does not rescale the axes); default: plotly's automatic range.
    """
    if not clouds:
        raise ValueError("point_cloud_figure needs at least one point cloud")
    fig = go.Figure()
    dims = set()
    for i, (name, x) in enumerate(clouds.items()):
        x = _points(x, name)
        dims.add(x.shape[1])
        fig.add_traces(point_cloud_traces(x, name=name, color=PALETTE[i % len(PALETTE)], labels=labels))
    for name, (origin, frame) in (frames or {}).items():
        fig.add_traces(frame_traces(origin, frame, scale=frame_scale, name=name))
    if len(dims) != 1:
        raise ValueError(f"all point clouds must have the same dim, got {sorted(dims)}")
    dim = dims.pop()
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      legend=dict(itemsizing="constant"))
    if dim == 2:
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
        if axis_range is not None:
            fig.update_xaxes(range=[-axis_range, axis_range])
            fig.update_yaxes(range=[-axis_range, axis_range])
    else:
        scene = dict(aspectmode="cube")
        if axis_range is not None:
            box = dict(range=[-axis_range, axis_range], autorange=False)
            scene.update(xaxis=box, yaxis=dict(box), zaxis=dict(box))
        fig.update_layout(scene=scene, scene_camera=dict(eye=dict(x=1.4, y=1.4, z=1.0)))
    return fig


def spline_knots(params, lo, hi, *, circular=False):
    """Knots ``(x_k, y_k, slope_k)`` of the spline ``eacf_lab.splines.rqs(., params, lo, hi)``.

    Computed by ``eacf_lab.splines.rqs_knots``, the function ``rqs`` itself uses, so the
    picture shows exactly the spline the library applies.  ``params: (3 n_bins + 1,)``.
    Returns three ``(n_bins + 1,)`` NumPy arrays.
    """
    import jax.numpy as jnp

    from eacf_lab.splines import rqs_knots

    return tuple(np.asarray(a, dtype=np.float64) for a in rqs_knots(jnp.asarray(params), lo, hi, circular=circular))


def spline_figure(x, y, *, knots=None, lo=None, hi=None, title=None, height=400, name="spline"):
    """The curve ``y(x)`` with the identity (dashed), knots (with slope ticks) and the box ``[lo, hi]``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=x, mode="lines", name="identity", line=dict(dash="dash", color="grey")))
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line=dict(color=PALETTE[0], width=3)))
    if knots is not None:
        kx, ky, ks = (np.asarray(a, dtype=np.float64) for a in knots)
        fig.add_trace(go.Scatter(x=kx, y=ky, mode="markers", name="knots", marker=dict(size=10, color=PALETTE[3])))
        half = 0.04 * (x.max() - x.min())
        tx = np.stack([kx - half, kx + half, np.full_like(kx, np.nan)], axis=1).ravel()
        ty = np.stack([ky - half * ks, ky + half * ks, np.full_like(ky, np.nan)], axis=1).ravel()
        fig.add_trace(go.Scatter(x=tx, y=ty, mode="lines", name="knot slopes", line=dict(color=PALETTE[3])))
    if lo is not None and hi is not None:
        fig.add_shape(type="rect", x0=lo, x1=hi, y0=lo, y1=hi, line=dict(color="black", dash="dot"))
    fig.update_layout(title=title, height=height, xaxis_title="input", yaxis_title="output",
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def line_figure(x, ys, *, errors=None, title=None, xlabel=None, ylabel=None, log_x=False, log_y=False,
                height=380, mode="lines+markers"):
    """Curves ``{name: y}`` against ``x`` with optional error bars ``{name: err}``."""
    x = np.asarray(x, dtype=np.float64)
    fig = go.Figure()
    for i, (name, y) in enumerate(ys.items()):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"{name}: y must have the shape of x {x.shape}, got {y.shape}")
        err = None if not errors or name not in errors else dict(type="data", array=np.asarray(errors[name]))
        fig.add_trace(go.Scatter(x=x, y=y, mode=mode, name=name, error_y=err, line=dict(color=PALETTE[i % len(PALETTE)])))
    fig.update_layout(title=title, height=height, xaxis_title=xlabel, yaxis_title=ylabel,
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig
