"""Molecules in 3D: PDB text from coordinates, Kabsch alignment, an nglview trajectory of samples.

    from eacf_lab.viz import molecule
    view = molecule.trajectory_view(samples_nm)        # (n_frames, 22, 3) -> NGLWidget with a frame slider
    view                                               # in JupyterLab

* ``pdb_text(coords_nm, topology_pdb)``: the topology's ATOM lines (names, residues,
  elements) with new coordinates (nm in, Angstrom out, as PDB wants); several frames become
  several ``MODEL`` records.  ``read_pdb_coords`` parses them back (round trip in the tests).
* ``kabsch_align(x, ref)``: the proper rotation + translation that best superimposes ``x`` on
  ``ref`` (Kabsch, Acta Cryst. A32, 922 (1976)), with the sign fix so it never reflects --
  a mirror image (a D-form) stays a mirror image, and stays visible as such.
* ``trajectory_view(samples)``: an ``nglview.NGLWidget`` (nglview 3.1.4; 4.0.1's front end
  does not register in JupyterLab 4) holding all frames as one trajectory, so the widget
  shows its frame slider / player; frames are aligned to ``align_to`` (default the first).
  Bonds are drawn by NGL from distances, so a flow sample with a broken geometry *looks*
  broken -- on purpose.

Default topology: alanine dipeptide, ``eacf_lab/datasets/aldp.pdb``.  nglview is imported
only by ``trajectory_view``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["ALDP_PDB", "pdb_text", "read_pdb_coords", "kabsch_align", "trajectory_view"]

ALDP_PDB = Path(__file__).resolve().parents[1] / "datasets" / "aldp.pdb"


def _atom_lines(topology_pdb: str | None) -> list[str]:
    text = ALDP_PDB.read_text() if topology_pdb is None else topology_pdb
    lines = [ln for ln in text.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    if not lines:
        raise ValueError("topology_pdb must contain ATOM/HETATM records, found none")
    return lines


def pdb_text(coords_nm, topology_pdb: str | None = None) -> str:
    """PDB text of ``coords_nm: (n_atoms, 3)`` or ``(n_frames, n_atoms, 3)`` (nm) on a topology.

    Arguments:
        coords_nm: positions in nm, in the topology's atom order.
        topology_pdb: PDB text whose ATOM lines give names/residues; default ``aldp.pdb``.

    Returns:
        PDB text in Angstrom; one ``MODEL``/``ENDMDL`` block per frame when a batch is given.
    """
    lines = _atom_lines(topology_pdb)
    x = np.asarray(coords_nm, dtype=np.float64)
    single = x.ndim == 2
    x = x[None] if single else x
    if x.ndim != 3 or x.shape[1:] != (len(lines), 3):
        raise ValueError(f"coords_nm must be (n_atoms, 3) or (n_frames, n_atoms, 3) with n_atoms = "
                         f"{len(lines)} (the topology), got {np.shape(coords_nm)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("coords_nm must be finite")
    if np.abs(x).max(initial=0.0) * 10 >= 1e4:
        raise ValueError("coords_nm too large for the PDB format (|x| * 10 must be < 10000 Angstrom)")
    out = []
    for k, frame in enumerate(10.0 * x):
        if not single:
            out.append(f"MODEL     {k + 1:4d}")
        for ln, (a, b, c) in zip(lines, frame):
            ln = ln.ljust(54)
            out.append(f"{ln[:30]}{a:8.3f}{b:8.3f}{c:8.3f}{ln[54:]}".rstrip())
        out.append("TER" if single else "ENDMDL")
    out.append("END")
    return "\n".join(out) + "\n"


def read_pdb_coords(text: str) -> np.ndarray:
    """Coordinates of every MODEL of PDB text: ``(n_models, n_atoms, 3)`` in nm."""
    models, cur = [], []
    for ln in text.splitlines():
        if ln.startswith(("ATOM", "HETATM")):
            cur.append([float(ln[30:38]), float(ln[38:46]), float(ln[46:54])])
        elif ln.startswith("ENDMDL") and cur:
            models.append(cur)
            cur = []
    if cur:
        models.append(cur)
    if not models or len({len(m) for m in models}) != 1:
        raise ValueError("expected PDB text with ATOM records and the same atom count in every MODEL")
    return np.asarray(models) / 10.0


def kabsch_align(x, ref, weights=None) -> np.ndarray:
    """Rotate + translate ``x: (n, 3)`` onto ``ref: (n, 3)`` (least squares, proper rotation only).

    Returns ``x @ R.T + t`` with ``R`` in SO(3) minimising ``sum_i w_i |R x_i + t - ref_i|^2``.
    """
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.ndim != 2 or x.shape != ref.shape or x.shape[1] != 3:
        raise ValueError(f"x and ref must both be (n, 3), got {x.shape} and {ref.shape}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(x),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be ({len(x)},), non-negative, not all zero")
    w = w / w.sum()
    cx, cr = w @ x, w @ ref
    h = (x - cx).T @ ((ref - cr) * w[:, None])
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return (x - cx) @ rot.T + cr


@functools.lru_cache(maxsize=1)
def _trajectory_class():
    import nglview

    class SampleTrajectory(nglview.Structure, nglview.Trajectory):
        """nglview adaptor: a topology's PDB text plus ``(n_frames, n_atoms, 3)`` Angstrom frames."""

        def __init__(self, pdb: str, xyz_angstrom: np.ndarray):
            nglview.Structure.__init__(self)
            nglview.Trajectory.__init__(self)
            self.ext, self.params = "pdb", {}
            self._pdb, self._xyz = pdb, np.asarray(xyz_angstrom, np.float32)

        def get_structure_string(self):
            return self._pdb

        def get_coordinates(self, index):
            return self._xyz[index]

        @property
        def n_frames(self):
            return len(self._xyz)

    return SampleTrajectory


def trajectory_view(samples_nm, topology_pdb: str | None = None, *, align_to=None, representation="ball+stick"):
    """An ``nglview.NGLWidget`` showing ``samples_nm: (n_frames, n_atoms, 3)`` (nm) as a trajectory.

    Arguments:
        samples_nm: frames (e.g. flow samples), in the topology's atom order.
        topology_pdb: PDB text of the topology; default alanine dipeptide.
        align_to: ``(n_atoms, 3)`` nm reference for Kabsch alignment; default the first frame;
            ``False`` to show the frames as they are.
        representation: NGL representation (``"ball+stick"``, ``"licorice"``, ...).
    """
    import nglview

    x = np.asarray(samples_nm, np.float64)
    if x.ndim == 2:
        x = x[None]
    n_atoms = len(_atom_lines(topology_pdb))
    if x.ndim != 3 or x.shape[1:] != (n_atoms, 3) or len(x) == 0:
        raise ValueError(f"samples_nm must be (n_frames >= 1, {n_atoms}, 3), got {np.shape(samples_nm)}")
    if align_to is not False:
        ref = x[0] if align_to is None else np.asarray(align_to, np.float64)
        x = np.stack([kabsch_align(f, ref) for f in x])
    traj = _trajectory_class()(pdb_text(x[0], topology_pdb), 10.0 * x)
    view = nglview.NGLWidget(traj, default_representation=False)
    view.add_representation(representation)
    return view
