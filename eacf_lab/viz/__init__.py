"""Figures and widgets for the notebooks (plotly + ipywidgets); presentation only.

Submodules are imported explicitly, so ``import eacf_lab`` never pulls in plotly or
ipywidgets:

    from eacf_lab.viz import points, widgets
    fig = points.point_cloud_figure({"x": x}, frames={"node 0": (origin, F)})
    box = widgets.slider_figure(make_figure, widgets.rotation_sliders(3))

* ``points``   -- point clouds in 2D/3D, reference frames as arrows, spline curves with
  their knots, line plots (e.g. an estimator against the number of samples);
* ``widgets``  -- rotation sliders (Euler angles -> rotation matrix) and a slider-driven
  figure that redraws a plain ``plotly`` figure on every change;
* ``histograms`` -- distance / energy histograms, ML training curves and FAB's ESS curves
  (training notebooks);
* ``live``     -- callbacks for ``ml.fit`` and ``fab.fab`` that redraw the training curves in
  place while training runs, and a time estimate from a few timed steps;
* ``molecule`` -- PDB text from coordinates, Kabsch alignment, an nglview trajectory of flow
  samples with a frame slider (alanine dipeptide);
* ``ramachandran`` -- Ramachandran heat maps (model / data / reweighted); the histograms, weights
  and KLD are computed by ``eacf_lab.ramachandran``.

Every function here only *draws* what the library computed; none of them computes a flow,
a frame or a spline itself (that would be a second copy of library code).
"""
