"""Extract the alanine dipeptide force field from OpenMM into a small ``.npz`` for the JAX energy.

    python scripts/aldp_extract_params.py            # writes eacf_lab/datasets/aldp_forcefield.npz + aldp.pdb
    python scripts/aldp_extract_params.py --check    # rebuild, compare with the shipped files

The Hamiltonian is ``"amber96-obc1"`` (see ``eacf_lab/targets/aldp_openmm.py``): OpenMM's
``amber96.xml`` + ``implicit/obc1.xml`` on openmmtools' ``alanine-dipeptide.pdb``, no cutoff,
no constraints.  Every parameter the energy needs is read from the OpenMM ``System``:

* ``HarmonicBondForce``   -> ``bond_idx (nb, 2)``, ``bond_r0`` (nm), ``bond_k`` (kJ/mol/nm^2)
* ``HarmonicAngleForce``  -> ``angle_idx (na, 3)``, ``angle_theta0`` (rad), ``angle_k`` (kJ/mol/rad^2)
* ``PeriodicTorsionForce``-> ``torsion_idx (nt, 4)``, ``torsion_n``, ``torsion_phase`` (rad), ``torsion_k`` (kJ/mol)
* ``NonbondedForce``      -> ``charge`` (e), ``sigma`` (nm), ``epsilon`` (kJ/mol) per atom, and the
  exceptions ``exc_idx (ne, 2)``, ``exc_qq``, ``exc_sigma``, ``exc_epsilon`` (1-2, 1-3 zeroed,
  1-4 scaled); ``coulomb_k``: OpenMM's 1/(4 pi eps0) in kJ nm/mol/e^2, *measured* from a
  two-charge system so the JAX energy uses the very same constant.
* ``CustomGBForce`` (OBC1) -> ``gb_charge``, ``gb_or`` (offset radius, nm), ``gb_sr`` (scaled
  offset radius, nm) per atom; the constants of its expressions (``gb_alpha, gb_beta, gb_gamma,
  gb_offset, gb_prefactor, gb_solute_dielectric, gb_solvent_dielectric, gb_surface, gb_probe``)
  are checked against the expression strings so a change in OpenMM fails loudly here.
* ``masses`` (dalton), ``elements`` (atomic numbers), for reference.

``aldp.pdb`` is openmmtools' file copied verbatim (OpenMM's ``PDBFile`` reads it; its atom
order is the order of every array in the kit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eacf_lab.atomic import atomic_write  # noqa: E402
from eacf_lab.targets import aldp_openmm  # noqa: E402

OUT = Path(aldp_openmm.SHIPPED_PDB).parent
# The OBC1 expressions of OpenMM's implicit/obc1.xml, with the constants we hard-code in JAX.
GB_CONSTANTS = dict(gb_alpha=0.8, gb_beta=0.0, gb_gamma=2.909125, gb_offset=0.009, gb_prefactor=138.935485,
                    gb_solute_dielectric=1.0, gb_solvent_dielectric=78.5, gb_surface=28.3919551, gb_probe=0.14)
GB_EXPRESSIONS = (
    "select(step(r+sr2-or1), 0.5*(1/L-1/U+0.25*(r-sr2^2/r)*(1/(U^2)-1/(L^2))+0.5*log(L/U)/r), 0);"
    "U=r+sr2;L=max(or1, D);D=abs(r-sr2)",
    "1/(1/or-tanh(0.8*psi+2.909125*psi^3)/radius);psi=I*or; radius=or+offset; offset=0.009",
    "-0.5*138.935485*(1/soluteDielectric-1/solventDielectric)*charge^2/B; solventDielectric=78.5; "
    "soluteDielectric=1; kappa=0; offset=0.008999999999999999",
    "28.3919551*(radius+0.14)^2*(radius/B)^6; radius=or+offset; solventDielectric=78.5; "
    "soluteDielectric=1; kappa=0; offset=0.008999999999999999",
    "-138.935485*(1/soluteDielectric-1/solventDielectric)*charge1*charge2/f;f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2))); "
    "solventDielectric=78.5; soluteDielectric=1; kappa=0; offset=0.008999999999999999",
)


def coulomb_constant(mm) -> float:
    """OpenMM's Coulomb constant: energy of charges +1, +1 at 1 nm (Reference platform)."""
    s = mm.System()
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.NoCutoff)
    for _ in range(2):
        s.addParticle(1.0)
        nb.addParticle(1.0, 0.1, 0.0)
    s.addForce(nb)
    ctx = aldp_openmm.make_context(s)
    ctx.setPositions(np.array([[0.0, 0, 0], [1.0, 0, 0]]))
    return float(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(mm.unit.kilojoule_per_mole))


def extract(hamiltonian: str = "amber96-obc1", pdb_text: str | None = None) -> tuple[dict, str]:
    """Return ``(params: dict of numpy arrays, pdb_text)``."""
    import openmm as mm

    if pdb_text is None:
        pdb_text = aldp_openmm.openmmtools_pdb_path().read_text()
    system, topology, _ = aldp_openmm.build_system(hamiltonian, pdb_text=pdb_text)
    kj, nm, rad = mm.unit.kilojoule_per_mole, mm.unit.nanometer, mm.unit.radian
    p: dict[str, np.ndarray] = {}
    seen = set()
    for f in system.getForces():
        kind = type(f).__name__
        seen.add(kind)
        if isinstance(f, mm.HarmonicBondForce):
            rows = [f.getBondParameters(i) for i in range(f.getNumBonds())]
            p["bond_idx"] = np.array([[r[0], r[1]] for r in rows], np.int32)
            p["bond_r0"] = np.array([r[2].value_in_unit(nm) for r in rows])
            p["bond_k"] = np.array([r[3].value_in_unit(kj / nm**2) for r in rows])
        elif isinstance(f, mm.HarmonicAngleForce):
            rows = [f.getAngleParameters(i) for i in range(f.getNumAngles())]
            p["angle_idx"] = np.array([r[:3] for r in rows], np.int32)
            p["angle_theta0"] = np.array([r[3].value_in_unit(rad) for r in rows])
            p["angle_k"] = np.array([r[4].value_in_unit(kj / rad**2) for r in rows])
        elif isinstance(f, mm.PeriodicTorsionForce):
            rows = [f.getTorsionParameters(i) for i in range(f.getNumTorsions())]
            p["torsion_idx"] = np.array([r[:4] for r in rows], np.int32)
            p["torsion_n"] = np.array([r[4] for r in rows], np.float64)
            p["torsion_phase"] = np.array([r[5].value_in_unit(rad) for r in rows])
            p["torsion_k"] = np.array([r[6].value_in_unit(kj) for r in rows])
        elif isinstance(f, mm.NonbondedForce):
            if f.getNonbondedMethod() != mm.NonbondedForce.NoCutoff:
                raise ValueError("expected NonbondedForce.NoCutoff")
            rows = [f.getParticleParameters(i) for i in range(f.getNumParticles())]
            p["charge"] = np.array([r[0].value_in_unit(mm.unit.elementary_charge) for r in rows])
            p["sigma"] = np.array([r[1].value_in_unit(nm) for r in rows])
            p["epsilon"] = np.array([r[2].value_in_unit(kj) for r in rows])
            ex = [f.getExceptionParameters(i) for i in range(f.getNumExceptions())]
            p["exc_idx"] = np.array([[e[0], e[1]] for e in ex], np.int32)
            p["exc_qq"] = np.array([e[2].value_in_unit(mm.unit.elementary_charge**2) for e in ex])
            p["exc_sigma"] = np.array([e[3].value_in_unit(nm) for e in ex])
            p["exc_epsilon"] = np.array([e[4].value_in_unit(kj) for e in ex])
        elif isinstance(f, mm.CustomGBForce):
            exprs = tuple(f.getComputedValueParameters(i)[1] for i in range(f.getNumComputedValues())) + \
                tuple(f.getEnergyTermParameters(i)[0] for i in range(f.getNumEnergyTerms()))
            if exprs != GB_EXPRESSIONS or f.getNumExclusions() != 0:
                raise ValueError("the OBC1 CustomGBForce of this OpenMM differs from the one the JAX energy "
                                 f"implements; expected {GB_EXPRESSIONS}, got {exprs}")
            names = [f.getPerParticleParameterName(i) for i in range(f.getNumPerParticleParameters())]
            if names != ["charge", "or", "sr"]:
                raise ValueError(f"expected OBC1 per-particle parameters ['charge', 'or', 'sr'], got {names}")
            rows = np.array([f.getParticleParameters(i) for i in range(f.getNumParticles())], np.float64)
            p["gb_charge"], p["gb_or"], p["gb_sr"] = rows[:, 0], rows[:, 1], rows[:, 2]
            p.update({k: np.array(v) for k, v in GB_CONSTANTS.items()})
        elif not isinstance(f, mm.CMMotionRemover):
            raise ValueError(f"unexpected force {kind} in the {hamiltonian} system")
    need = {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "CustomGBForce"}
    if not need <= seen:
        raise ValueError(f"expected forces {sorted(need)}, found {sorted(seen)}")
    p["coulomb_k"] = np.array(coulomb_constant(mm))
    p["masses"] = np.array([system.getParticleMass(i).value_in_unit(mm.unit.dalton)
                            for i in range(system.getNumParticles())])
    p["elements"] = np.array([a.element.atomic_number for a in topology.atoms()], np.int32)
    p["hamiltonian"] = np.array(hamiltonian)  # a unicode scalar: loads without pickle
    return p, pdb_text


def save(params: dict, path: Path) -> None:
    atomic_write(path, lambda f: np.savez(f, **params))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the files in --out")
    args = ap.parse_args(argv)
    params, pdb_text = extract()
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
        save(params, args.out / "aldp_forcefield.npz")
        atomic_write(args.out / "aldp.pdb", pdb_text)
        print(f"wrote {args.out / 'aldp_forcefield.npz'} ({len(params)} arrays) and {args.out / 'aldp.pdb'}")
        return 0
    ok = (args.out / "aldp.pdb").read_text() == pdb_text
    with np.load(args.out / "aldp_forcefield.npz", allow_pickle=False) as z:
        shipped = {k: z[k] for k in z.files}
    ok &= sorted(shipped) == sorted(params)
    bad = [k for k in params if k not in shipped or shipped[k].dtype != params[k].dtype
           or not np.array_equal(shipped[k], params[k])]
    print("OK, identical" if ok and not bad else f"MISMATCH in {bad or 'file list / pdb'}")
    return 0 if ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
