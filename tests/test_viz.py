"""eacf_lab.viz: figures carry the expected traces; widgets build and redraw (no browser needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go
import pytest

import eacf_lab as el
from eacf_lab.viz import points, widgets


def test_point_cloud_figure_3d_with_frames():
    x = np.arange(15.0).reshape(5, 3)
    frame = (np.zeros(3), np.eye(3))
    fig = points.point_cloud_figure({"x": x, "u": x + 1}, frames={"node 0": frame}, axis_range=4)
    assert isinstance(fig, go.Figure)
    kinds = [type(t).__name__ for t in fig.data]
    assert kinds == ["Scatter3d"] * 5  # two clouds + three axes
    assert [t.name for t in fig.data[2:]] == ["node 0 axis x", "node 0 axis y", "node 0 axis z"]
    np.testing.assert_allclose(fig.data[0].x, x[:, 0])
    np.testing.assert_allclose([fig.data[3].x[1], fig.data[3].y[1], fig.data[3].z[1]], [0, 1, 0])
    assert fig.layout.scene.xaxis.range == (-4, 4)


def test_point_cloud_figure_2d_and_bad_shapes():
    fig = points.point_cloud_figure({"x": jnp.ones((4, 2))}, frames={"f": (np.zeros(2), np.eye(2))})
    assert [type(t).__name__ for t in fig.data] == ["Scatter"] * 3
    with pytest.raises(ValueError, match="n_nodes, dim"):
        points.point_cloud_figure({"x": np.ones((4, 5))})
    with pytest.raises(ValueError, match="same dim"):
        points.point_cloud_figure({"a": np.ones((4, 2)), "b": np.ones((4, 3))})
    with pytest.raises(ValueError, match="frame"):
        points.frame_traces(np.zeros(3), np.eye(2))


@pytest.mark.parametrize("circular", [False, True])
def test_spline_knots_and_figure(circular):
    k = 4
    params = jnp.linspace(-1.0, 1.0, 3 * k + 1)
    kx, ky, ks = points.spline_knots(params, -3.0, 3.0, circular=circular)
    assert kx.shape == ky.shape == ks.shape == (k + 1,)
    np.testing.assert_allclose([kx[0], kx[-1], ky[0], ky[-1]], [-3, 3, -3, 3], atol=1e-5)
    assert np.all(np.diff(kx) > 0) and np.all(np.diff(ky) > 0) and np.all(ks > 0)
    if circular:
        assert ks[0] == pytest.approx(ks[-1])
    # The knots lie on the library's spline.
    inner = jnp.asarray(kx[1:-1])
    y, _ = el.splines.rqs(inner, jnp.broadcast_to(params, inner.shape + params.shape), -3.0, 3.0, circular=circular)
    np.testing.assert_allclose(y, ky[1:-1], atol=1e-4)
    grid = np.linspace(-4, 4, 50)
    fig = points.spline_figure(grid, grid, knots=(kx, ky, ks), lo=-3, hi=3)
    assert [t.name for t in fig.data] == ["identity", "spline", "knots", "knot slopes"]
    assert len(fig.layout.shapes) == 1


def test_line_figure():
    fig = points.line_figure([1, 2, 4], {"a": [1, 2, 3], "b": [3, 2, 1]}, errors={"a": [0.1, 0.1, 0.1]}, log_x=True)
    assert [t.name for t in fig.data] == ["a", "b"]
    assert fig.data[0].error_y.array is not None and fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="shape"):
        points.line_figure([1, 2], {"a": [1, 2, 3]})


def test_rotations_are_rotations():
    for r in (widgets.euler_rotation(30, 60, -45), widgets.planar_rotation(37)):
        np.testing.assert_allclose(r @ r.T, np.eye(len(r)), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(widgets.euler_rotation(90, 0, 0) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(widgets.rotation_from_angles(3), np.eye(3))
    with pytest.raises(ValueError):
        widgets.rotation_from_angles(4)


def test_slider_figure_redraws():
    pytest.importorskip("ipywidgets")
    calls = []

    def make(theta):
        calls.append(theta)
        x = np.array([[1.0, 0.0], [-1.0, 0.0]]) @ widgets.planar_rotation(theta).T
        return points.point_cloud_figure({"x": x})

    controls = widgets.rotation_sliders(2)
    box = widgets.slider_figure(make, controls)
    assert calls == [0.0]
    controls["theta"].value = 45.0
    assert calls == [0.0, 45.0]
    assert box.output is box.children[-1] and set(box.controls) == {"theta"}
    assert set(widgets.rotation_sliders(3)) == {"alpha", "beta", "gamma"}


def test_fab_curves_plots_ess_in_percent_against_iteration_or_time():
    from eacf_lab.viz.histograms import fab_curves
    it = list(range(1, 11))
    history = {"iteration": it, "time": [2.0 * i for i in it], "loss": [5.0 - 0.1 * i for i in it],
               "flow_ess": [0.01 * i for i in it], "eval_iteration": [1, 10], "eval_reverse_ess": [0.01, 0.2],
               "eval_ais_ess": [0.05, 0.4], "eval_forward_ess": [0.02, 0.3]}
    fig = fab_curves(history)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["flow reverse ESS (eval)"].y) == pytest.approx([1.0, 20.0])  # percent
    assert list(by_name["AIS ESS towards p (eval)"].x) == [1, 10]
    assert "forward ESS (test set)" in by_name and "loss" in by_name
    fig_t = fab_curves(history, x="time")
    assert list({t.name: t for t in fig_t.data}["flow reverse ESS (eval)"].x) == pytest.approx([2.0, 20.0])
    with pytest.raises(ValueError, match="fab.fab"):
        fab_curves({"step": [1]})
    with pytest.raises(ValueError, match="'iteration' or 'time'"):
        fab_curves(history, x="epoch")


class _FakeHandle:
    """Stands in for IPython's DisplayHandle: records the figures shown."""

    def __init__(self, fig):
        self.figures = [fig]

    def update(self, fig):
        self.figures.append(fig)


@pytest.fixture
def fake_display(monkeypatch):
    from eacf_lab.viz import live
    handles = []

    def display(fig, display_id=False):
        assert display_id is True, "live figures must be displayed with a display id to be updated"
        handles.append(_FakeHandle(fig))
        return handles[-1]

    monkeypatch.setattr(live, "display", display)
    return handles


def test_live_training_plot_accumulates_history_and_redraws(fake_display):
    from eacf_lab.viz import live
    cb = live.live_training_plot(every=2, title="demo")
    for step in range(1, 6):
        metrics = dict(nll=10.0 - step, aux=0.0, lr=1e-3)
        if step == 5:
            metrics["val_nll"] = 4.5
        cb(step, metrics)
    (handle,) = fake_display
    assert cb.handle is handle and cb.history["step"] == [1, 2, 3, 4, 5]
    assert cb.history["nll"] == [9.0, 8.0, 7.0, 6.0, 5.0]
    assert cb.history["val_step"] == [5] and cb.history["val_nll"] == [4.5]
    assert len(handle.figures) == 1 + 3  # initial + steps 2, 4 and the validation step 5
    last = {t.name: t for t in handle.figures[-1].data}
    assert list(last["validation joint NLL"].y) == [4.5] and len(last["train NLL (batch)"].y) == 5


def test_live_fab_plot_accumulates_what_fab_curves_reads(fake_display):
    from eacf_lab.viz import live
    cb = live.live_fab_plot(every=3, title="fab demo")
    for it in range(1, 7):
        row = dict(loss=5.0 - 0.1 * it, flow_ess=0.01 * it, time=2.0 * it, ais_ess=0.5, accept=0.7)
        if it in (1, 6):
            row.update(eval_reverse_ess=0.01 * it, eval_ais_ess=0.02 * it)
        assert not cb(it, row), "the callback must never stop fab"
    (handle,) = fake_display
    h = cb.history
    assert h["iteration"] == list(range(1, 7)) and h["time"] == [2.0 * i for i in range(1, 7)]
    assert h["eval_iteration"] == [1, 6] and h["eval_reverse_ess"] == pytest.approx([0.01, 0.06])
    assert h["eval_forward_ess"] == []  # fab evaluated without test data
    assert len(handle.figures) == 1 + 3  # initial + iterations 1 (eval), 3 (period), 6 (eval and period)
    last = {t.name: t for t in handle.figures[-1].data}
    assert list(last["flow reverse ESS (eval)"].y) == pytest.approx([1.0, 6.0])  # percent
    assert "forward ESS (test set)" not in last


def test_time_estimate_counts_steps_of_the_real_run():
    from eacf_lab import data
    from eacf_lab.cli import QUICK_SIZES
    from eacf_lab.viz import live
    flow = el.make_flow(jax.random.key(0), 4, 2, "cartesian", **QUICK_SIZES)
    train = data.load("dw4", "train")[:70]
    n_steps, seconds, compile_s = live.time_estimate(flow, train, epochs=3, batch_size=16, n_timed=4)
    assert n_steps == 3 * (70 // 16) == 12
    assert np.isfinite(seconds) and seconds > 0 and compile_s > 0
    with pytest.raises(ValueError, match="n_timed"):
        live.time_estimate(flow, train, epochs=3, n_timed=2)
