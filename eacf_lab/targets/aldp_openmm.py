"""Alanine dipeptide in OpenMM: the reference Hamiltonian the pure-JAX energy is tested against.

Needs the optional extra ``md`` (``pip install eacf_lab[md]``); OpenMM is imported lazily, so
importing this module is free, and every function raises one clear ``ImportError`` line when
OpenMM is missing.  Nothing here is needed to *evaluate* the JAX energy
(``eacf_lab.targets.aldp``), which reads the shipped parameters.

Hamiltonian ``"amber96-obc1"`` (Midgley et al. 2023, App. C.3.2, follow Stimper et al. 2022,
whose target is ``openmmtools.testsystems.AlanineDipeptideImplicit(constraints=None)``):
Amber ff96 + OBC1 generalised-Born implicit solvent (Onufriev, Bashford & Case, Proteins 55,
383 (2004), "model I": alpha, beta, gamma = 0.8, 0, 2.909125) with the ACE surface-area term,
no cutoff, no constraints, built from OpenMM's own ``amber96.xml`` + ``implicit/obc1.xml`` and
the ACE-ALA-NME structure ``eacf_lab/datasets/aldp.pdb`` (copied verbatim from openmmtools'
``data/alanine-dipeptide-gbsa/alanine-dipeptide.pdb`` by ``scripts/aldp_extract_params.py``).

Note: ``import openmmtools`` imports pymbar, which switches JAX to float64 globally; this
module therefore never imports openmmtools (``openmmtools_pdb_path`` only *locates* its file).
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np

__all__ = ["HAMILTONIANS", "SHIPPED_PDB", "openmmtools_pdb_path", "build_system", "make_context",
           "energy_and_forces", "KJ_PER_MOL"]

SHIPPED_PDB = Path(__file__).resolve().parents[1] / "datasets" / "aldp.pdb"
# name -> OpenMM force-field files.  "amber96-obc1" is the papers' target.
HAMILTONIANS = {"amber96-obc1": ("amber96.xml", "implicit/obc1.xml")}
KJ_PER_MOL = "kJ/mol"


def _openmm():
    try:
        import openmm
        import openmm.app
        import openmm.unit
    except ImportError:
        raise ImportError("OpenMM is needed for the alanine dipeptide reference: "
                          "pip install 'eacf_lab[md]' (or pip install openmm)") from None
    return openmm


def openmmtools_pdb_path() -> Path:
    """Path of openmmtools' ``alanine-dipeptide.pdb`` (without importing openmmtools)."""
    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("openmmtools is needed to (re)extract the alanine dipeptide structure: "
                          "pip install openmmtools")
    path = Path(spec.submodule_search_locations[0]) / "data" / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected openmmtools to ship this file")
    return path


def build_system(hamiltonian: str = "amber96-obc1", pdb_text: str | None = None):
    """Build the OpenMM ``(system, topology, positions_nm)`` of alanine dipeptide.

    Arguments:
        hamiltonian: key of ``HAMILTONIANS``.
        pdb_text: PDB text of the structure; default the shipped ``aldp.pdb``.

    Returns:
        ``system`` (``openmm.System``, NoCutoff, no constraints), ``topology``,
        ``positions``: ``(22, 3)`` float64 numpy array in nm (the PDB's coordinates).
    """
    mm = _openmm()
    app, unit = mm.app, mm.unit
    if hamiltonian not in HAMILTONIANS:
        raise ValueError(f"unknown hamiltonian {hamiltonian!r}; expected one of {sorted(HAMILTONIANS)}")
    text = SHIPPED_PDB.read_text() if pdb_text is None else pdb_text
    pdb = app.PDBFile(io.StringIO(text))
    ff = app.ForceField(*HAMILTONIANS[hamiltonian])
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None,
                             rigidWater=False, removeCMMotion=True)
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    return system, pdb.topology, pos


def make_context(system, platform: str = "Reference", integrator=None, threads: int | None = None):
    """An ``openmm.Context`` on ``platform`` (``"Reference"``: double precision, for tests;
    ``"CPU"`` with ``threads=1``: fastest for 22 atoms).  Default integrator: Verlet 1 fs."""
    mm = _openmm()
    integ = integrator if integrator is not None else mm.VerletIntegrator(0.001)
    props = {"Threads": str(threads)} if (threads is not None and platform == "CPU") else {}
    return mm.Context(system, integ, mm.Platform.getPlatformByName(platform), props)


def energy_and_forces(context, x_nm: np.ndarray) -> tuple[float, np.ndarray]:
    """Potential energy (kJ/mol) and forces (kJ/mol/nm, ``(22, 3)``) of ``x_nm: (22, 3)``."""
    mm = _openmm()
    x = np.asarray(x_nm, dtype=np.float64)
    context.setPositions(x)
    st = context.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(mm.unit.kilojoule_per_mole)
    f = np.asarray(st.getForces(asNumpy=True).value_in_unit(mm.unit.kilojoule_per_mole / mm.unit.nanometer))
    return float(e), f
