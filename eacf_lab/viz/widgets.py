"""ipywidgets helpers for the notebooks: rotation sliders and slider-driven plotly figures.

``slider_figure(make_figure, controls)`` lays out the controls above an ``Output`` area and
redraws ``make_figure(**values)`` (a plain ``go.Figure``) whenever a control changes.  It
uses only ipywidgets and plotly's regular renderer -- no ``FigureWidget`` (which needs the
extra ``anywidget`` package with plotly >= 6) -- so it renders in JupyterLab 4, on Binder
and in headless test browsers alike.  Sliders use ``continuous_update=False``: the figure
is redrawn when the slider is released, which keeps 3D scenes responsive.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["planar_rotation", "euler_rotation", "rotation_from_angles", "angle_slider", "rotation_sliders",
           "slider_figure"]


def planar_rotation(theta_deg: float) -> np.ndarray:
    """2D rotation by ``theta_deg`` degrees (counter-clockwise): ``(2, 2)``."""
    t = math.radians(theta_deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def euler_rotation(alpha_deg: float, beta_deg: float, gamma_deg: float) -> np.ndarray:
    """3D rotation ``R = Rz(alpha) Ry(beta) Rz(gamma)`` (ZYZ Euler angles in degrees): ``(3, 3)``.

    Fine for turning a cloud with three sliders; *not* a way to draw random rotations (uniform
    Euler angles are not Haar-uniform -- use ``eacf_lab.random_rotation`` for that).
    """
    def rz(t):
        c, s = math.cos(math.radians(t)), math.sin(math.radians(t))
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    c, s = math.cos(math.radians(beta_deg)), math.sin(math.radians(beta_deg))
    ry = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return rz(alpha_deg) @ ry @ rz(gamma_deg)


def rotation_from_angles(dim: int, **angles) -> np.ndarray:
    """``planar_rotation(theta)`` for ``dim == 2``, ``euler_rotation(alpha, beta, gamma)`` for 3."""
    if dim == 2:
        return planar_rotation(angles.get("theta", 0.0))
    if dim == 3:
        return euler_rotation(angles.get("alpha", 0.0), angles.get("beta", 0.0), angles.get("gamma", 0.0))
    raise ValueError(f"dim must be 2 or 3, got {dim}")


def angle_slider(description: str, value: float = 0.0, lo: float = -180.0, hi: float = 180.0, step: float = 5.0):
    """A ``FloatSlider`` in degrees that updates on release."""
    import ipywidgets as w

    return w.FloatSlider(value=value, min=lo, max=hi, step=step, description=description, continuous_update=False,
                         readout_format=".0f", style={"description_width": "initial"})


def rotation_sliders(dim: int = 3) -> dict:
    """``{"theta": slider}`` in 2D, ``{"alpha", "beta", "gamma": sliders}`` (ZYZ, degrees) in 3D."""
    if dim == 2:
        return {"theta": angle_slider("θ (deg)")}
    if dim == 3:
        return {"alpha": angle_slider("α (deg)"), "beta": angle_slider("β (deg)", lo=0.0, hi=180.0),
                "gamma": angle_slider("γ (deg)")}
    raise ValueError(f"dim must be 2 or 3, got {dim}")


def slider_figure(make_figure, controls: dict, *, columns: int = 3):
    """Controls + an output area showing ``make_figure(**values)``; redrawn on every change.

    Arguments:
        make_figure: called with one keyword per control; returns a plotly figure (or any
            object IPython can display).
        controls: ``{name: ipywidget}`` (sliders, dropdowns, ...).

    Returns an ``ipywidgets.VBox``; display it (or leave it as the cell's last expression).
    It has the attributes ``controls`` and ``output``; ``box.redraw()`` draws again.
    """
    import ipywidgets as w
    from IPython.display import display

    out = w.Output()

    def redraw(*_):
        fig = make_figure(**{k: c.value for k, c in controls.items()})
        out.clear_output(wait=True)
        with out:
            display(fig)

    for c in controls.values():
        c.observe(redraw, names="value")
    items = list(controls.values())
    rows = [w.HBox(items[i:i + columns]) for i in range(0, len(items), columns)]
    box = w.VBox(rows + [out])
    box.controls, box.output, box.redraw = controls, out, redraw
    redraw()
    return box
