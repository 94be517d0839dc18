"""E-CNF: an E(n)-equivariant continuous normalising flow, trained by flow matching (baseline).

The E-ACF paper's selling point is speed: its coupling flow samples and evaluates densities in
one network pass, where an equivariant CNF (E-CNF; Satorras et al., NeurIPS 2021, "E(n)
equivariant normalizing flows"; Klein et al., NeurIPS 2023, "Equivariant flow matching")
solves an ODE.  This module is that baseline, small enough to read in one sitting.

**Model.**  A time-dependent vector field ``v_t(x)`` on the zero-CoM hyperplane,

    dx/dt = v_t(x),   x(0) = z ~ q0 (zero-CoM Gaussian),   x(1) = x ~ q,

with ``v_t`` the kit's EGNN (``eacf_lab/egnn.py``; Satorras et al. 2021, Eq. 3-6) reading
``remove_com(x)`` and the time as a node feature (``t`` and ``sin/cos(pi k t)``); its output
vectors are translation-invariant and rotation/permutation-equivariant, and we subtract their
mean over nodes so the flow never leaves the hyperplane.

**Density** (instantaneous change of variables; Chen et al. 2018, Thm. 1; Satorras et al.
2021, Eq. 8):

    log q(x(1)) = log q0(x(0)) - int_0^1 div v_t(x(t)) dt.

The divergence is exact: the trace of the ``(n d, n d)`` Jacobian of
``x -> v_t(remove_com(x))`` (``jax.linearize`` + one JVP per coordinate: 8 for DW4, 39 for
LJ13).  With ``P = I - (1/n) 1 1^T`` the projection onto the hyperplane and ``Q`` an orthonormal
basis of it (``P = Q Q^T``), that full trace is ``tr(P J P) = tr(Q^T J Q)``: exactly the
divergence *on* the hyperplane, the measure of ``zero_com_gaussian_log_prob``.  The ODE for
``(x, int div)`` is solved with diffrax ``Dopri5`` and ``PIDController(rtol=1e-5, atol=1e-5)``
(adaptive), or with ``n_steps`` fixed steps when asked (tests).

**Training** (conditional flow matching; Lipman et al., ICLR 2023, Eq. 9, 20-23, with
``sigma_min = 0``, i.e. the linear / "OT" path; Tong et al. 2023):

    x_t = (1 - t) x0 + t x1,  u_t = x1 - x0,  L = E_{t, x0, x1} |v_t(x_t) - u_t|^2 / (n d),

``t ~ U[0, 1]``, ``x0 ~ q0``, ``x1 ~ data``.  Optional equivariant alignment (``align=True``,
Klein et al. 2023, Sec. 4): before building the path, ``x0`` is rotated by the proper rotation
that best matches ``x1`` (Kabsch).  This shortens and straightens the paths (fewer solver steps)
and keeps the objective valid *for an equivariant* ``v``: the regression target averaged over a
common random rotation of ``(x0, x1)`` is the one for a coupling whose ``x0``-marginal is the
rotation-average of the aligned ``x0``, which is ``q0`` again (the alignment only moves ``x0``
along its own orbit, and ``q0`` is isotropic).  No permutation or minibatch OT (Hungarian)
alignment: DW4/LJ13 particles are identical, but it costs a CPU assignment per batch.

Shapes: one configuration ``x: (n_nodes, dim)`` per call; ``jax.vmap`` outside.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from eacf_lab import checks
from eacf_lab.egnn import EGNN
from eacf_lab.geometry import remove_com, sample_zero_com_gaussian, zero_com_gaussian_log_prob

__all__ = ["ECNF", "make_ecnf", "ecnf_from_config", "flow_matching_loss", "kabsch_align"]

MODEL_NAME = "ecnf"  # config["flow"]["model"]: how checkpoint.load recognises an E-CNF


class ECNF(eqx.Module):
    """E(n)-equivariant CNF on the zero-CoM hyperplane of ``(n_nodes, dim)`` configurations.

    Fields: ``egnn`` (the vector field network), static sizes and solver tolerances.
    Build with :func:`make_ecnf`; ``config`` holds its JSON-able arguments.
    """

    egnn: EGNN
    n_nodes: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    n_freq: int = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    config_items: tuple = eqx.field(static=True)

    def __init__(self, n_nodes, dim, *, key, n_layers=3, n_hidden=32, width=32, depth=2, n_freq=2,
                 rtol=1e-5, atol=1e-5, max_steps=4096):
        self.egnn = EGNN(1, 1, 1, n_layers=n_layers, n_hidden=n_hidden, width=width, depth=depth,
                         n_features=1 + 2 * n_freq, key=key)
        self.n_nodes, self.dim, self.n_freq = n_nodes, dim, n_freq
        self.rtol, self.atol, self.max_steps = float(rtol), float(atol), int(max_steps)
        cfg = dict(model=MODEL_NAME, n_nodes=n_nodes, dim=dim, n_layers=n_layers, n_hidden=n_hidden,
                   width=width, depth=depth, n_freq=n_freq, rtol=float(rtol), atol=float(atol),
                   max_steps=int(max_steps))
        self.config_items = tuple(sorted(cfg.items()))

    @property
    def config(self) -> dict:
        return dict(self.config_items)

    def n_params(self) -> int:
        """Number of trainable scalars."""
        return int(sum(p.size for p in jax.tree_util.tree_leaves(eqx.filter(self, eqx.is_inexact_array))))

    # ---- the vector field ------------------------------------------------------------------
    def time_features(self, t):
        """``t: ()`` -> ``(1 + 2 n_freq,)``: ``[t, sin(pi k t), cos(pi k t)]``, ``k = 1..n_freq``."""
        k = jnp.arange(1, self.n_freq + 1, dtype=jnp.result_type(t, jnp.float32))
        return jnp.concatenate([t[None], jnp.sin(math.pi * k * t), jnp.cos(math.pi * k * t)])

    def vector_field(self, t, x):
        """``v_t(x)``: ``t: ()``, ``x: (n, d)`` -> ``(n, d)``, zero mean over nodes.

        E(n)-equivariant in ``x``, translation-invariant (reads ``remove_com(x)``).
        """
        x = remove_com(x)
        t = jnp.asarray(t, x.dtype)
        feats = jnp.broadcast_to(self.time_features(t), (self.n_nodes, 1 + 2 * self.n_freq))
        vectors, _ = self.egnn(x[:, None, :], feats)
        return remove_com(vectors[:, 0, :])

    def vector_field_and_divergence(self, t, x):
        """``(v_t(x): (n, d), div v_t(x): ())``, the divergence exact on the hyperplane."""
        shape = x.shape
        flat = lambda y: self.vector_field(t, y.reshape(shape)).reshape(-1)  # noqa: E731
        v, jvp = jax.linearize(flat, x.reshape(-1))
        eye = jnp.eye(v.shape[0], dtype=v.dtype)
        jac_cols = jax.vmap(jvp, out_axes=1)(eye)  # column j = J e_j
        return v.reshape(shape), jnp.trace(jac_cols)

    # ---- the ODE ----------------------------------------------------------------------------
    def integrate(self, x, *, t0, t1, n_steps=None):
        """Solve ``d(x, l)/dt = (v_t(x), div v_t(x))`` from ``t0`` to ``t1`` with ``l(t0) = 0``.

        ``x: (n, d)`` zero-CoM; returns ``(x(t1): (n, d), l(t1): (), num_steps: ())``.
        Adaptive Dopri5 with ``PIDController(rtol, atol)``; ``n_steps``: that many fixed steps.
        """
        term = diffrax.ODETerm(_dynamics)  # one module-level function: eager calls reuse the compiled solve
        if n_steps is None:
            controller, dt0 = diffrax.PIDController(rtol=self.rtol, atol=self.atol), None
        else:
            controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / n_steps
        y0 = (x, jnp.zeros((), x.dtype))
        sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0, t1, dt0, y0, args=self, stepsize_controller=controller,
                                  max_steps=self.max_steps if n_steps is None else n_steps,
                                  saveat=diffrax.SaveAt(t1=True))
        return sol.ys[0][0], sol.ys[1][0], sol.stats["num_steps"]

    def _check(self, x, name="x"):
        checks.check_shape(x, (self.n_nodes, self.dim), name)
        checks.check_finite(x, name)
        checks.check_zero_com(x, name)

    def inverse(self, x, *, n_steps=None):
        """Data -> base: ``x: (n, d)`` zero-CoM -> ``(z: (n, d), log|det dz/dx|: ())``."""
        self._check(x)
        z, int_div, _ = self.integrate(remove_com(x), t0=1.0, t1=0.0, n_steps=n_steps)
        return z, int_div  # int_1^0 div dt = -int_0^1 div dt = log|det dz/dx|

    def forward(self, z, *, n_steps=None):
        """Base -> data: ``z: (n, d)`` zero-CoM -> ``(x: (n, d), log|det dx/dz|: ())``."""
        self._check(z, "z")
        x, int_div, _ = self.integrate(remove_com(z), t0=0.0, t1=1.0, n_steps=n_steps)
        return x, int_div

    def log_prob(self, x, *, n_steps=None):
        """``log q(x) = log q0(z) + log|det dz/dx|``; ``x: (n, d)`` zero-CoM -> scalar."""
        z, log_det = self.inverse(x, n_steps=n_steps)
        return zero_com_gaussian_log_prob(z) + log_det

    def sample_and_log_prob(self, *, key, n_steps=None):
        """``(x: (n, d) zero-CoM, log q(x): ())``, one ODE solve with the divergence."""
        dtype = jax.tree_util.tree_leaves(eqx.filter(self, eqx.is_inexact_array))[0].dtype
        z = sample_zero_com_gaussian(key, self.n_nodes, self.dim, dtype=dtype)
        x, log_det = self.forward(z, n_steps=n_steps)
        return x, zero_com_gaussian_log_prob(z) - log_det

    def sample(self, *, key, n_steps=None):
        """``x: (n, d)`` (the divergence is computed too; the cost is the solve)."""
        return self.sample_and_log_prob(key=key, n_steps=n_steps)[0]


def _dynamics(t, y, model):
    """ODE right-hand side for ``y = (x, l)``: ``(v_t(x), div v_t(x))``."""
    return model.vector_field_and_divergence(t, y[0])


def make_ecnf(key, n_nodes, dim, **kwargs) -> ECNF:
    """Build an :class:`ECNF` with validated sizes (defaults: Klein et al.'s DW4 EGNN, 3 x 32)."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 2:
        raise ValueError(f"n_nodes must be an int >= 2, got {n_nodes!r}")
    if dim not in (2, 3) or isinstance(dim, bool):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    valid = {"n_layers", "n_hidden", "width", "depth", "n_freq", "rtol", "atol", "max_steps"}
    unknown = set(kwargs) - valid
    if unknown:
        raise ValueError(f"unknown E-CNF arguments {sorted(unknown)}; valid: {sorted(valid)}")
    for name in ("rtol", "atol"):
        if name in kwargs and not float(kwargs[name]) > 0:
            raise ValueError(f"{name} must be positive, got {kwargs[name]!r}")
    return ECNF(n_nodes, dim, key=key, **kwargs)


def ecnf_from_config(config: dict, key=None) -> ECNF:
    """Rebuild an E-CNF skeleton from ``model.config`` (``checkpoint.load`` calls this)."""
    cfg = dict(config)
    if cfg.pop("model", None) != MODEL_NAME:
        raise ValueError(f"config['model'] must be {MODEL_NAME!r} for an E-CNF, got {config.get('model')!r}")
    return make_ecnf(jax.random.key(0) if key is None else key, **cfg)


def kabsch_align(x0, x1):
    """Rotate ``x0`` onto ``x1``: ``x0 @ R.T`` with ``R = argmin_{R in SO(d)} |x0 R^T - x1|``.

    ``x0, x1: (n, d)`` zero-CoM -> ``(n, d)``.  Kabsch: ``H = x0^T x1 = U S V^T``,
    ``R = V diag(1, .., det(V U^T)) U^T`` (the sign fix excludes reflections).
    """
    h = x0.T @ x1
    u, _, vt = jnp.linalg.svd(h)
    sign = jnp.sign(jnp.linalg.det(vt.T @ u.T))
    fix = jnp.ones((x0.shape[1],), x0.dtype).at[-1].set(sign)
    r = vt.T @ (fix[:, None] * u.T)
    return x0 @ r.T


def flow_matching_loss(model: ECNF, x1, *, key, align=True):
    """Conditional flow matching loss of one example (Lipman et al. 2023, Eq. 23, sigma_min = 0).

    ``x1: (n, d)`` zero-CoM data -> scalar ``|v_t(x_t) - (x1 - x0)|^2 / (n d)``.
    """
    k0, kt = jax.random.split(key)
    x0 = sample_zero_com_gaussian(k0, model.n_nodes, model.dim, dtype=x1.dtype)
    if align:
        x0 = jax.lax.stop_gradient(kabsch_align(x0, x1))
    t = jax.random.uniform(kt, (), dtype=x1.dtype)
    xt = (1 - t) * x0 + t * x1
    return jnp.mean((model.vector_field(t, xt) - (x1 - x0)) ** 2)
