"""Alanine dipeptide (ACE-ALA-NME, 22 atoms) in implicit solvent: a pure-JAX force field.

Midgley et al., NeurIPS 2023 (arXiv 2308.10364), Sec. 4.2 and App. C.3.2; the Hamiltonian is
that of Stimper et al. 2022 / openmmtools ``AlanineDipeptideImplicit(constraints=None)``:
**"amber96-obc1"** = Amber ff96 + OBC1 generalised Born + ACE surface term, no cutoff, no
constraints.  (DESIGN.md names ff99SB-ILDN; the published target is ff96/OBC1, see
``aldp_openmm``.)  Every parameter comes from OpenMM's ``System`` through
``scripts/aldp_extract_params.py`` and ships as ``eacf_lab/datasets/aldp_forcefield.npz``, so
this file needs no OpenMM; ``tests/test_aldp.py`` checks it against OpenMM.

Positions ``x: (22, 3)`` in **nm**, atom order of ``datasets/aldp.pdb``.  ``energy_kj`` is

    U = U_bond + U_angle + U_torsion + U_coulomb + U_LJ + U_GB + U_SA          (kJ/mol)

* ``U_bond  = sum 1/2 k_b (r - r0)^2``,  ``U_angle = sum 1/2 k_a (theta - theta0)^2`` (Cornell
  et al., JACS 117, 5179 (1995), Eq. 1; OpenMM stores k without Amber's 1/2 folded in);
* ``U_torsion = sum k (1 + cos(n phi - phase))`` (Cornell Eq. 1);
* ``U_coulomb + U_LJ = sum_{i<j} k_e q_i q_j / r + 4 eps_ij [(s_ij/r)^12 - (s_ij/r)^6]``,
  Lorentz-Berthelot ``s_ij = (s_i + s_j)/2``, ``eps_ij = sqrt(eps_i eps_j)``; 1-2 and 1-3 pairs
  excluded and 1-4 pairs scaled (1/1.2 Coulomb, 1/2 LJ) through OpenMM's exception list;
* OBC generalised Born (Onufriev, Bashford & Case, Proteins 55, 383 (2004), Eqs. 6-7, "OBC1":
  alpha, beta, gamma = 0.8, 0, 2.909125), with the HCT pairwise descreening integral (Hawkins,
  Cramer & Truhlar, J. Phys. Chem. 100, 19824 (1996), Eq. 18 as written in OpenMM):
  ``I_i = sum_{j != i} 1/2 [1/L - 1/U + (r - s_j^2/r)(1/U^2 - 1/L^2)/4 + ln(L/U)/(2r)]``,
  ``U = r + s_j``, ``L = max(rho_i, |r - s_j|)``, zero when ``r + s_j < rho_i`` (``rho`` offset radius,
  ``s_j`` scaled offset radius); ``psi_i = rho_i I_i``; Born radius
  ``B_i = 1 / (1/rho_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / R_i)``, ``R_i = rho_i + 0.009``;
  ``U_GB = -1/2 k (1/eps_in - 1/eps_out) sum_{i,j} q_i q_j / f_ij`` (Still et al. 1990) with
  ``f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / 4 B_i B_j))`` (``f_ii = B_i``);
* ``U_SA = sum_i 28.3919551 (R_i + 0.14)^2 (R_i / B_i)^6`` (ACE approximation, Schaefer & Karplus
  1996, as in OpenMM's OBC: 2.25936 kJ/mol/nm^2 * 4 pi).

``energy(x) = energy_kj(x) / (k_B T)`` (kT units, ``k_B = 0.00831446261815324`` kJ/mol/K),
``log_prob = -energy``.  The energy is invariant to rotations and translations (not to
reflections' effect on chirality: a mirror image has the same energy, it is the D-form).

Coincident atoms: every distance is clamped from below at ``d_min = 0.02 nm`` (0.2 Angstrom,
far below any bond) with the double-where trick (``base.pair_distances``): closer pairs read
as 0.02 nm with zero gradient, so energies are huge but finite (~1e14 kJ/mol for an LJ pair,
fits float32) and forces finite.  Angles and torsions of collinear atoms (undefined) are
evaluated with guarded norms: theta in ``{0, pi}`` and phi = 0, with zero gradient, never NaN.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from eacf_lab.targets.base import check_shape, pair_distances

__all__ = ["AlanineDipeptide", "ForceField", "load_forcefield", "FORCEFIELD_FILE", "KB_KJ_PER_MOL_K"]

FORCEFIELD_FILE = Path(__file__).resolve().parents[1] / "datasets" / "aldp_forcefield.npz"
KB_KJ_PER_MOL_K = 0.00831446261815324
N_ATOMS = 22


class ForceField(NamedTuple):
    """The parameters as numpy float64 arrays (constants under ``jit``); pair tables are dense
    ``(22, 22)`` with the exceptions applied and zero on and below the diagonal."""

    bond_idx: np.ndarray; bond_r0: np.ndarray; bond_k: np.ndarray                         # noqa: E702
    angle_idx: np.ndarray; angle_theta0: np.ndarray; angle_k: np.ndarray                  # noqa: E702
    torsion_idx: np.ndarray; torsion_n: np.ndarray; torsion_phase: np.ndarray; torsion_k: np.ndarray  # noqa: E702
    qq: np.ndarray; sig: np.ndarray; eps: np.ndarray                                       # noqa: E702
    gb_q: np.ndarray; gb_or: np.ndarray; gb_sr: np.ndarray; gb_const: dict                 # noqa: E702


_KEYS = {"bond_idx": (None, 2), "bond_r0": (None,), "bond_k": (None,), "angle_idx": (None, 3),
         "angle_theta0": (None,), "angle_k": (None,), "torsion_idx": (None, 4), "torsion_n": (None,),
         "torsion_phase": (None,), "torsion_k": (None,), "charge": (22,), "sigma": (22,), "epsilon": (22,),
         "exc_idx": (None, 2), "exc_qq": (None,), "exc_sigma": (None,), "exc_epsilon": (None,),
         "gb_charge": (22,), "gb_or": (22,), "gb_sr": (22,), "coulomb_k": (), "hamiltonian": ()}
_GB = ("gb_alpha", "gb_beta", "gb_gamma", "gb_offset", "gb_prefactor", "gb_solute_dielectric",
       "gb_solvent_dielectric", "gb_surface", "gb_probe")


@functools.lru_cache(maxsize=4)
def load_forcefield(path: str = str(FORCEFIELD_FILE), hamiltonian: str = "amber96-obc1") -> ForceField:
    """Read and validate the shipped parameter file; build the dense pair tables (cached)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: expected the .npz written by scripts/aldp_extract_params.py ({e})") from None
    for k, shape in list(_KEYS.items()) + [(g, ()) for g in _GB]:
        if k not in raw:
            raise ValueError(f"{path}: missing array {k!r}; regenerate with scripts/aldp_extract_params.py")
        s = raw[k].shape
        if len(s) != len(shape) or any(w is not None and w != v for w, v in zip(shape, s)):
            raise ValueError(f"{path}: {k!r} must have shape {shape} (None = any), got {s}")
    if str(raw["hamiltonian"]) != hamiltonian:
        raise ValueError(f"{path}: holds hamiltonian {str(raw['hamiltonian'])!r}, expected {hamiltonian!r}")
    for k in ("bond_idx", "angle_idx", "torsion_idx", "exc_idx"):
        if raw[k].size and (raw[k].min() < 0 or raw[k].max() >= N_ATOMS):
            raise ValueError(f"{path}: {k!r} must index atoms 0..21")
    q, s, e, ke = raw["charge"], raw["sigma"], raw["epsilon"], float(raw["coulomb_k"])
    qq = ke * np.outer(q, q)
    sig = 0.5 * (s[:, None] + s[None, :])
    eps = np.sqrt(np.outer(e, e))
    for (i, j), a, b, c in zip(raw["exc_idx"], raw["exc_qq"], raw["exc_sigma"], raw["exc_epsilon"]):
        qq[i, j] = qq[j, i] = ke * a
        sig[i, j] = sig[j, i] = b
        eps[i, j] = eps[j, i] = c
    upper = np.triu(np.ones((N_ATOMS, N_ATOMS), bool), k=1)
    return ForceField(
        raw["bond_idx"], raw["bond_r0"], raw["bond_k"], raw["angle_idx"], raw["angle_theta0"], raw["angle_k"],
        raw["torsion_idx"], raw["torsion_n"], raw["torsion_phase"], raw["torsion_k"],
        np.where(upper, qq, 0.0), np.where(upper, sig, 1.0), np.where(upper, eps, 0.0),
        raw["gb_charge"], raw["gb_or"], raw["gb_sr"], {k[3:]: float(raw[k]) for k in _GB})


def _safe_norm(v: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """``|v|`` over the last axis and a mask ``|v| > eps``; ``eps`` where not (zero gradient)."""
    sq = jnp.sum(v**2, axis=-1)
    ok = sq > eps**2
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), eps), ok


def bonded_energy(ff: ForceField, x: jax.Array, d_min: float) -> jax.Array:
    """Bonds + angles + proper/improper torsions (kJ/mol).  ``x: (22, 3)`` -> scalar."""
    c = lambda a: jnp.asarray(a, x.dtype)  # noqa: E731
    b = ff.bond_idx
    r, _ = _safe_norm(x[b[:, 0]] - x[b[:, 1]], d_min)
    u_bond = 0.5 * jnp.sum(c(ff.bond_k) * (r - c(ff.bond_r0)) ** 2)
    a = ff.angle_idx
    u, v = x[a[:, 0]] - x[a[:, 1]], x[a[:, 2]] - x[a[:, 1]]
    sin_, _ = _safe_norm(jnp.cross(u, v), 1e-12)  # |u||v| sin(theta); guarded at 0 and pi
    theta = jnp.arctan2(sin_, jnp.sum(u * v, axis=-1))
    u_angle = 0.5 * jnp.sum(c(ff.angle_k) * (theta - c(ff.angle_theta0)) ** 2)
    t = ff.torsion_idx
    b1, b2, b3 = x[t[:, 1]] - x[t[:, 0]], x[t[:, 2]] - x[t[:, 1]], x[t[:, 3]] - x[t[:, 2]]
    n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
    b2n, _ = _safe_norm(b2, d_min)
    yx = jnp.stack([b2n * jnp.sum(b1 * n2, -1), jnp.sum(n1 * n2, -1)], axis=-1)
    _, ok = _safe_norm(yx, 1e-12)
    yx = jnp.where(ok[:, None], yx, jnp.array([0.0, 1.0], x.dtype))  # collinear: phi = 0, no gradient
    phi = jnp.arctan2(yx[:, 0], yx[:, 1])
    u_tors = jnp.sum(c(ff.torsion_k) * (1.0 + jnp.cos(c(ff.torsion_n) * phi - c(ff.torsion_phase))))
    return u_bond + u_angle + u_tors


def nonbonded_energy(ff: ForceField, r: jax.Array) -> jax.Array:
    """Coulomb + Lennard-Jones over pairs ``i < j`` with exceptions (kJ/mol); ``r: (22, 22)``."""
    c = lambda a: jnp.asarray(a, r.dtype)  # noqa: E731
    s6 = (c(ff.sig) / r) ** 6
    return jnp.sum(c(ff.qq) / r + 4.0 * c(ff.eps) * (s6**2 - s6))


def born_radii(ff: ForceField, r: jax.Array) -> jax.Array:
    """OBC1 effective Born radii ``B: (22,)`` (nm) from the clamped distances ``r: (22, 22)``."""
    c = lambda a: jnp.asarray(a, r.dtype)  # noqa: E731
    k = ff.gb_const
    rho_i, s_j = c(ff.gb_or)[:, None], c(ff.gb_sr)[None, :]
    upper = r + s_j
    lower = jnp.maximum(rho_i, jnp.abs(r - s_j))
    term = 0.5 * (1 / lower - 1 / upper + 0.25 * (r - s_j**2 / r) * (1 / upper**2 - 1 / lower**2)
                  + 0.5 * jnp.log(lower / upper) / r)
    off_diag = ~jnp.eye(N_ATOMS, dtype=bool)
    integral = jnp.sum(jnp.where(off_diag & (r + s_j >= rho_i), term, 0.0), axis=1)
    rho = c(ff.gb_or)
    psi = integral * rho
    radius = rho + k["offset"]
    return 1.0 / (1.0 / rho - jnp.tanh(k["alpha"] * psi - k["beta"] * psi**2 + k["gamma"] * psi**3) / radius)


def gb_energy(ff: ForceField, r: jax.Array) -> jax.Array:
    """OBC1 polarisation (self + pair) and ACE surface energy (kJ/mol); ``r: (22, 22)`` clamped."""
    c = lambda a: jnp.asarray(a, r.dtype)  # noqa: E731
    k = ff.gb_const
    b = born_radii(ff, r)
    q = c(ff.gb_q)
    pref = -k["prefactor"] * (1.0 / k["solute_dielectric"] - 1.0 / k["solvent_dielectric"])
    self_term = 0.5 * pref * jnp.sum(q**2 / b)
    bb = b[:, None] * b[None, :]
    f = jnp.sqrt(r**2 + bb * jnp.exp(-(r**2) / (4.0 * bb)))
    upper = jnp.triu(jnp.ones((N_ATOMS, N_ATOMS), bool), k=1)
    pair_term = pref * jnp.sum(jnp.where(upper, q[:, None] * q[None, :] / f, 0.0))
    radius = c(ff.gb_or) + k["offset"]
    surface = k["surface"] * jnp.sum((radius + k["probe"]) ** 2 * (radius / b) ** 6)
    return self_term + pair_term + surface


class AlanineDipeptide(eqx.Module):
    """Alanine dipeptide target (Hamiltonian "amber96-obc1").  One example per call; ``jax.vmap``.

    Arguments (keyword):
        temperature: in kelvin; ``energy`` is in units of ``k_B T`` (default 300 K, the paper's).
        hamiltonian: parameter set; only ``"amber96-obc1"`` ships.
        d_min: distance clamp (nm) that keeps coincident atoms finite.
    """

    temperature: float = eqx.field(static=True, default=300.0)
    hamiltonian: str = eqx.field(static=True, default="amber96-obc1")
    d_min: float = eqx.field(static=True, default=0.02)
    n_nodes: int = eqx.field(static=True, default=N_ATOMS)
    dim: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        if self.temperature <= 0 or self.d_min <= 0:
            raise ValueError(f"AlanineDipeptide: temperature and d_min must be > 0, got "
                             f"{self.temperature} and {self.d_min}")
        if (self.n_nodes, self.dim) != (N_ATOMS, 3):
            raise ValueError(f"AlanineDipeptide: (n_nodes, dim) must be (22, 3), got ({self.n_nodes}, {self.dim})")
        load_forcefield(hamiltonian=self.hamiltonian)  # fail at construction, not inside jit

    @property
    def name(self) -> str:
        return "aldp"

    @property
    def kt(self) -> float:
        """``k_B T`` in kJ/mol."""
        return KB_KJ_PER_MOL_K * self.temperature

    def energy_kj(self, x: jax.Array) -> jax.Array:
        """``x: (22, 3)`` in nm -> potential energy in kJ/mol (scalar)."""
        check_shape(x, N_ATOMS, 3, "AlanineDipeptide.energy")
        ff = load_forcefield(hamiltonian=self.hamiltonian)
        r = pair_distances(x, self.d_min)
        return bonded_energy(ff, x, self.d_min) + nonbonded_energy(ff, r) + gb_energy(ff, r)

    def energy(self, x: jax.Array) -> jax.Array:
        """``x: (22, 3)`` in nm -> potential energy in units of ``k_B T`` (scalar)."""
        return self.energy_kj(x) / self.kt

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Unnormalised log density ``-E(x)/k_B T``.  ``x: (22, 3)`` -> scalar."""
        return -self.energy(x)
