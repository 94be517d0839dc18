"""Ramachandran plots (phi/psi of alanine dipeptide): plotly heat maps.

``ramachandran_figure({"model": (phi, psi), "data": ..., "reweighted": (phi, psi, w)})``: one
plotly heat map per entry, log density, shared colour scale.  The histograms, importance
weights and the KL divergence are computed by ``eacf_lab.ramachandran`` (re-exported here, so
``viz.ramachandran.ramachandran_kld`` and friends keep working).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from eacf_lab.ramachandran import angles, histogram2d, importance_weights, ramachandran_kld

__all__ = ["angles", "importance_weights", "histogram2d", "ramachandran_kld", "ramachandran_figure"]


def ramachandran_figure(panels: dict, *, bins: int = 60, title: str = "Ramachandran plot",
                        height: int = 380) -> go.Figure:
    """Heat maps of ``log`` density for each ``name -> (phi, psi)`` or ``(phi, psi, weights)``.

    Arrays are 1D radians; ``weights`` (e.g. ``importance_weights(log_w)``) reweight that panel.
    """
    if not isinstance(panels, dict) or not panels:
        raise ValueError("panels must be a non-empty dict name -> (phi, psi) or (phi, psi, weights)")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), horizontal_spacing=0.06)
    centres = np.linspace(-np.pi, np.pi, bins + 1)
    centres = 0.5 * (centres[1:] + centres[:-1])
    logs = {}
    for name, entry in panels.items():
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(f"panel {name!r} must be (phi, psi) or (phi, psi, weights)")
        a = np.stack([np.asarray(entry[0], np.float64).ravel(), np.asarray(entry[1], np.float64).ravel()], -1)
        h = histogram2d(a, entry[2] if len(entry) == 3 else None, bins=bins) / (2 * np.pi / bins) ** 2
        logs[name] = np.where(h > 0, np.log(np.where(h > 0, h, 1.0)), np.nan)
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for k, (name, z) in enumerate(logs.items()):
        fig.add_trace(go.Heatmap(x=centres, y=centres, z=z.T, zmin=zmin, zmax=zmax, colorscale="Viridis",
                                 showscale=k == len(logs) - 1, colorbar=dict(title="log density"),
                                 name=name, hovertemplate="phi %{x:.2f}<br>psi %{y:.2f}<br>log p %{z:.2f}"),
                      row=1, col=k + 1)
        fig.update_xaxes(title_text="phi (rad)", range=[-np.pi, np.pi], row=1, col=k + 1)
        fig.update_yaxes(title_text="psi (rad)" if k == 0 else None, range=[-np.pi, np.pi], row=1, col=k + 1)
    fig.update_layout(title=title, template="plotly_white", height=height)
    return fig
