"""Alanine dipeptide geometry: backbone dihedrals phi/psi, C-alpha chirality, peptide-bond cis/trans.

Atom order is that of ``eacf_lab/datasets/aldp.pdb`` (ACE-ALA-NME, 22 atoms, 0-based)::

    0 H1  1 CH3  2 H2  3 H3  4 C  5 O        (ACE)
    6 N   7 H    8 CA  9 HA  10 CB  11-13 HB  14 C  15 O   (ALA)
    16 N  17 H   18 C  19-21 H                (NME)

* ``phi = dihedral(C_ACE 4, N 6, CA 8, C 14)``, ``psi = dihedral(N 6, CA 8, C 14, N_NME 16)``
  (the Ramachandran angles; Midgley et al. 2023, Fig. 5 and App. C.3.2).
* Peptide bonds ``omega_1 = dihedral(CH3_ACE 1, C 4, N 6, CA 8)`` and
  ``omega_2 = dihedral(CA 8, C 14, N 16, CH3_NME 18)``: *trans* when ``|omega| > pi/2``
  (near pi), *cis* otherwise.  MD at 300 K almost never makes cis bonds, but a flow can.
* Chirality at CA: the signed volume ``V = (N - CA) . [(C - CA) x (CB - CA)]`` is positive for
  the natural L-alanine of ``aldp.pdb`` (CORN rule: seen from HA, CO -> CB -> N runs clockwise)
  and negative for the D-form (its mirror image; both checked in ``tests/test_aldp.py``).
  A flow trained on L data but blind to parity (E(3)) can produce D-forms; the SE(3)-equivariant
  E-ACF flows (Cartesian/Spherical projections) need not.

Dihedral convention: IUPAC/OpenMM, ``atan2(|b2| b1.(b2 x b3), (b1 x b2).(b2 x b3))`` with
``b_k = x_{k} - x_{k-1}``, in ``(-pi, pi]``.  Collinear atoms (undefined dihedral) give
``atan2(0, 0) = 0``; these are analysis functions, not meant to be differentiated there.
One example per call: ``x: (22, 3)``; ``jax.vmap`` for batches (or plain numpy through
``jnp.asarray``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["PHI", "PSI", "OMEGA", "CHIRAL", "dihedral", "phi_psi", "omegas", "chirality_volume",
           "is_l_form", "is_trans", "is_valid"]

PHI = (4, 6, 8, 14)
PSI = (6, 8, 14, 16)
OMEGA = ((1, 4, 6, 8), (8, 14, 16, 18))
CHIRAL = (8, 6, 14, 10)  # CA, N, C, CB


def _check(x):
    if tuple(x.shape) != (22, 3):
        raise ValueError(f"alanine dipeptide: x must be (n_nodes, dim) = (22, 3) for one example "
                         f"(use jax.vmap for batches), got {tuple(x.shape)}")


def dihedral(p0: jax.Array, p1: jax.Array, p2: jax.Array, p3: jax.Array) -> jax.Array:
    """Dihedral angle (radians, in ``(-pi, pi]``) of four points ``p_k: (3,)``."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
    y = jnp.linalg.norm(b2) * jnp.dot(b1, n2)
    return jnp.arctan2(y, jnp.dot(n1, n2))


def _dih(x, idx):
    return dihedral(*(x[i] for i in idx))


def phi_psi(x: jax.Array) -> jax.Array:
    """``x: (22, 3)`` -> ``(2,)`` array ``[phi, psi]`` in radians."""
    _check(x)
    x = jnp.asarray(x)
    return jnp.stack([_dih(x, PHI), _dih(x, PSI)])


def omegas(x: jax.Array) -> jax.Array:
    """``x: (22, 3)`` -> ``(2,)`` peptide-bond dihedrals ``[omega_1, omega_2]`` in radians."""
    _check(x)
    x = jnp.asarray(x)
    return jnp.stack([_dih(x, OMEGA[0]), _dih(x, OMEGA[1])])


def chirality_volume(x: jax.Array) -> jax.Array:
    """``x: (22, 3)`` -> scalar signed volume at CA (nm^3 for nm input); positive = L-form."""
    _check(x)
    x = jnp.asarray(x)
    ca, n, c, cb = (x[i] for i in CHIRAL)
    return jnp.dot(n - ca, jnp.cross(c - ca, cb - ca))


def is_l_form(x: jax.Array) -> jax.Array:
    """``x: (22, 3)`` -> bool: the C-alpha has the natural L chirality."""
    return chirality_volume(x) > 0


def is_trans(x: jax.Array) -> jax.Array:
    """``x: (22, 3)`` -> bool: both peptide bonds are trans (``|omega| > pi/2``)."""
    return jnp.all(jnp.abs(omegas(x)) > jnp.pi / 2)


def is_valid(x: jax.Array) -> jax.Array:
    """``x: (22, 3)`` -> bool: L-form and both peptide bonds trans (the filter of the shipped data)."""
    return is_l_form(x) & is_trans(x)
