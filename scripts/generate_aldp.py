"""Alanine dipeptide reference data: resumable OpenMM parallel tempering at 300 K.

    nice -n 10 python scripts/generate_aldp.py run --work runs/aldp_pt --minutes 40   # run / resume
    # the shipped aldp.npz (2-core shared machine, 40 min, 0.42 ns per replica): both `run` and
    # `finish` with  --n-replicas 6 --t-max 800 --save-every 20 --burn-rounds 100  (see aldp.json)
    python scripts/generate_aldp.py finish --work runs/aldp_pt                        # write the dataset
    python scripts/generate_aldp.py run --quick --work /tmp/pt --minutes 1            # seconds (tests)

Why tempering: plain MD at 300 K almost never crosses to phi > 0 (the C7ax / alpha_L basins);
replicas at higher temperatures cross often and hand their configurations down by swaps.

Recipe (Hamiltonian ``"amber96-obc1"``, ``eacf_lab.targets.aldp_openmm``):
* ``n_replicas`` temperatures geometric in ``[t_min, t_max]`` (default 10, 300-1300 K), one
  OpenMM ``Context`` each (CPU platform, ``Threads=1``: fastest for 22 atoms), Langevin
  middle integrator, 1 fs, friction 1/ps, no constraints.  Start: energy-minimised PDB
  structure, Maxwell-Boltzmann velocities.
* One *round* = ``swap_every`` MD steps on every replica, then swap attempts between
  neighbours (even pairs on even rounds, odd pairs on odd rounds), accepted with
  ``min(1, exp[(beta_i - beta_j)(E_i - E_j)])``; on acceptance the two configurations trade
  places and the velocities are rescaled by ``sqrt(T_new / T_old)``.
* After ``burn_rounds`` rounds, the 300 K replica records a frame every ``save_every`` steps
  (positions in nm, float32) with its OpenMM potential energy.
* ``run`` stops after ``--minutes`` of wall time or at ``n_frames`` frames, and writes
  ``<work>/state.npz`` (atomically) every ``checkpoint_s`` seconds and at the end: all replica
  positions/velocities, the numpy RNG state, round counter, swap statistics, frames.  Running
  it again continues from there (settings must match, except the budget ``n_frames`` and
  ``checkpoint_s``; they are stored in the checkpoint).
* ``finish`` drops frames with D-chirality or a cis peptide bond (``aldp_geometry.is_valid``),
  removes each frame's (unweighted) centre of mass, splits the frames *in time order* into
  contiguous blocks train / val / test (60 / 10 / 30 %), and writes ``aldp.npz`` + ``aldp.json``
  (provenance: force field, temperatures, steps, swap acceptance per pair, seed, dropped
  frames, tau_int of the energy and of cos(phi) in frames, energy statistics in kT).

Units: nm, float32, zero centre of mass (the flow models zero-CoM coordinates; the
orientation is the MD one, not aligned).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eacf_lab.atomic import atomic_write  # noqa: E402
from eacf_lab.targets import aldp_openmm  # noqa: E402

KB = 0.00831446261815324  # kJ/mol/K (molar gas constant)
SETTINGS = dict(hamiltonian="amber96-obc1", n_replicas=10, t_min=300.0, t_max=1300.0, timestep_fs=1.0,
                friction_per_ps=1.0, swap_every=200, save_every=100, burn_rounds=250, n_frames=20000,
                checkpoint_s=60.0, seed=0)
QUICK = dict(n_replicas=3, t_max=600.0, swap_every=20, save_every=10, burn_rounds=2, n_frames=60,
             checkpoint_s=0.0)
SPLIT_FRACTIONS = dict(train=0.6, val=0.1, test=0.3)
BUDGET_KEYS = ("n_frames", "checkpoint_s")  # may change between sittings; everything else must match


def temperatures(cfg) -> np.ndarray:
    return np.geomspace(cfg["t_min"], cfg["t_max"], cfg["n_replicas"])


class ParallelTempering:
    """The replicas and all the state a checkpoint needs."""

    def __init__(self, cfg: dict, state: dict | None = None):
        import openmm as mm

        self.mm, self.cfg = mm, cfg
        self.temps = temperatures(cfg)
        system, _, x0 = aldp_openmm.build_system(cfg["hamiltonian"])
        self.rng = np.random.default_rng(cfg["seed"])
        if state is not None:
            self.rng.bit_generator.state = json.loads(str(state["rng_state"]))
        self.contexts = []
        for t in self.temps:
            integ = mm.LangevinMiddleIntegrator(t, cfg["friction_per_ps"], cfg["timestep_fs"] * 1e-3)
            integ.setRandomNumberSeed(int(self.rng.integers(1, 2**31 - 1)))
            self.contexts.append(aldp_openmm.make_context(system, "CPU", integ, threads=1))
        n = cfg["n_replicas"]
        if state is None:
            ctx = self.contexts[0]
            ctx.setPositions(x0)
            mm.LocalEnergyMinimizer.minimize(ctx)
            xmin = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(mm.unit.nanometer)
            for c, t in zip(self.contexts, self.temps):
                c.setPositions(xmin)
                c.setVelocitiesToTemperature(t, int(self.rng.integers(1, 2**31 - 1)))
            self.round, self.attempts, self.accepts = 0, np.zeros(n - 1, np.int64), np.zeros(n - 1, np.int64)
            self.frames, self.energies, self.wall_s = [], [], 0.0
        else:
            for i, c in enumerate(self.contexts):
                c.setPositions(state["positions"][i])
                c.setVelocities(state["velocities"][i])
            self.round = int(state["round"])
            self.attempts, self.accepts = state["attempts"].copy(), state["accepts"].copy()
            self.frames, self.energies = list(state["frames"]), list(state["energies"])
            self.wall_s = float(state["wall_s"])

    def _read(self, i):
        st = self.contexts[i].getState(getPositions=True, getVelocities=True, getEnergy=True)
        u = self.mm.unit
        return (st.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                st.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond),
                st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))

    def step_round(self):
        """``swap_every`` MD steps on every replica, then one sweep of neighbour swaps."""
        cfg = self.cfg
        record = self.round >= cfg["burn_rounds"]
        for i, c in enumerate(self.contexts):
            if i == 0 and record:
                for _ in range(cfg["swap_every"] // cfg["save_every"]):
                    c.getIntegrator().step(cfg["save_every"])
                    st = c.getState(getPositions=True, getEnergy=True)
                    self.frames.append(np.asarray(st.getPositions(asNumpy=True).value_in_unit(
                        self.mm.unit.nanometer), np.float32))
                    self.energies.append(st.getPotentialEnergy().value_in_unit(self.mm.unit.kilojoule_per_mole))
            else:
                c.getIntegrator().step(cfg["swap_every"])
        states = [self._read(i) for i in range(len(self.contexts))]
        beta = 1.0 / (KB * self.temps)
        for i in range(self.round % 2, len(self.temps) - 1, 2):
            j = i + 1
            log_acc = (beta[i] - beta[j]) * (states[i][2] - states[j][2])
            self.attempts[i] += 1
            if math.log(self.rng.uniform()) < min(0.0, log_acc):
                self.accepts[i] += 1
                (xi, vi, ei), (xj, vj, ej) = states[i], states[j]
                states[i] = (xj, vj * math.sqrt(self.temps[i] / self.temps[j]), ej)
                states[j] = (xi, vi * math.sqrt(self.temps[j] / self.temps[i]), ei)
                for k in (i, j):
                    self.contexts[k].setPositions(states[k][0])
                    self.contexts[k].setVelocities(states[k][1])
        self.round += 1

    def state(self) -> dict:
        states = [self._read(i) for i in range(len(self.contexts))]
        return dict(positions=np.stack([s[0] for s in states]), velocities=np.stack([s[1] for s in states]),
                    rng_state=np.array(json.dumps(self.rng.bit_generator.state)), round=np.array(self.round),
                    attempts=self.attempts, accepts=self.accepts, wall_s=np.array(self.wall_s),
                    frames=np.asarray(self.frames, np.float32).reshape(-1, 22, 3),
                    energies=np.asarray(self.energies, np.float64),
                    config=np.array(json.dumps(self.cfg, sort_keys=True)))


def load_state(path: Path, cfg: dict) -> dict | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    stored = {k: v for k, v in json.loads(str(state["config"])).items() if k not in BUDGET_KEYS}
    want = {k: v for k, v in json.loads(json.dumps(cfg, sort_keys=True)).items() if k not in BUDGET_KEYS}
    if stored != want:
        raise ValueError(f"{path}: checkpoint was made with settings {stored}, not {want}; use another --work")
    if state["positions"].shape != (cfg["n_replicas"], 22, 3):
        raise ValueError(f"{path}: expected positions ({cfg['n_replicas']}, 22, 3), got {state['positions'].shape}")
    return state


def run(cfg: dict, work: Path, minutes: float) -> ParallelTempering:
    """Run or resume until ``minutes`` of wall time pass or ``n_frames`` frames are recorded."""
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "state.npz"
    pt = ParallelTempering(cfg, load_state(ckpt, cfg))
    t_start = last = time.time()
    print(f"start at round {pt.round}, {len(pt.frames)} frames", flush=True)

    def save():
        pt.wall_s += time.time() - save.t
        save.t = time.time()
        st = pt.state()
        atomic_write(ckpt, lambda f: np.savez(f, **st))
        acc = pt.accepts / np.maximum(pt.attempts, 1)
        print(f"round {pt.round}: {len(pt.frames)} frames, {pt.wall_s:.0f} s, swap acc {np.round(acc, 2).tolist()}",
              flush=True)
    save.t = t_start
    while len(pt.frames) < cfg["n_frames"] and time.time() - t_start < 60.0 * minutes:
        pt.step_round()
        if time.time() - last > cfg["checkpoint_s"]:
            save()
            last = time.time()
    save()
    return pt


def tau_int(series) -> float:
    from eacf_lab.mcmc import integrated_autocorr_time
    return float(integrated_autocorr_time(np.asarray(series, np.float64)))


def finish(cfg: dict, work: Path, out: Path) -> dict:
    """Filter, centre, split; write ``aldp.npz`` + ``aldp.json`` into ``out``; return the provenance."""
    import jax
    import openmm

    from eacf_lab.data import sha256_of
    from eacf_lab.targets import aldp_geometry as geo

    state = load_state(work / "state.npz", cfg)
    if state is None or len(state["frames"]) == 0:
        raise ValueError(f"{work / 'state.npz'}: no frames recorded yet; run `generate_aldp.py run` first")
    frames, energies = state["frames"], state["energies"]
    l_form = np.asarray(jax.vmap(geo.is_l_form)(frames))
    trans = np.asarray(jax.vmap(geo.is_trans)(frames))
    keep = l_form & trans
    phi = np.asarray(jax.vmap(geo.phi_psi)(frames))[:, 0]
    x = frames[keep].astype(np.float64)
    x = (x - x.mean(axis=1, keepdims=True)).astype(np.float32)
    e_kt = energies[keep] / (KB * cfg["t_min"])
    n = len(x)
    bounds = np.cumsum([0] + [int(round(f * n)) for f in SPLIT_FRACTIONS.values()])
    bounds[-1] = n
    splits = {k: x[bounds[i]:bounds[i + 1]] for i, k in enumerate(SPLIT_FRACTIONS)}
    e_split = {k: e_kt[bounds[i]:bounds[i + 1]] for i, k in enumerate(SPLIT_FRACTIONS)}
    qs = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    acc = state["accepts"] / np.maximum(state["attempts"], 1)
    info = dict(
        name="aldp", n_nodes=22, dim=3, dtype="float32", units="nm", zero_com=True,
        hamiltonian=cfg["hamiltonian"],
        force_field="Amber ff96 (OpenMM amber96.xml) + OBC1 implicit solvent with ACE surface term "
                    "(OpenMM implicit/obc1.xml); NoCutoff, no constraints; = openmmtools "
                    "AlanineDipeptideImplicit(constraints=None)",
        topology="eacf_lab/datasets/aldp.pdb", temperature_K=cfg["t_min"],
        sampler="parallel tempering (OpenMM LangevinMiddleIntegrator, CPU platform, Threads=1)",
        settings=cfg, temperatures_K=temperatures(cfg).tolist(),
        md_steps_per_replica=int(state["round"]) * cfg["swap_every"],
        simulated_ns_per_replica=int(state["round"]) * cfg["swap_every"] * cfg["timestep_fs"] * 1e-6,
        rounds=int(state["round"]), swap_attempts=state["attempts"].tolist(), swap_acceptance=acc.tolist(),
        frame_interval_fs=cfg["save_every"] * cfg["timestep_fs"],
        frames_recorded=int(len(frames)), dropped_d_form=int(np.sum(~l_form)),
        dropped_cis=int(np.sum(l_form & ~trans)), frames_kept=int(n),
        split_fractions=SPLIT_FRACTIONS, split_order="contiguous blocks in simulation time",
        sizes={k: int(len(v)) for k, v in splits.items()},
        tau_int_frames=dict(energy=tau_int(energies), cos_phi=tau_int(np.cos(phi)),
                            phi_positive=tau_int((phi > 0).astype(np.float64)) if 0 < np.mean(phi > 0) < 1 else None),
        fraction_phi_positive=float(np.mean(phi[keep] > 0)),
        energy_kT={k: dict(mean=float(v.mean()), std=float(v.std()),
                           quantiles={str(q): float(np.quantile(v, q)) for q in qs}) for k, v in e_split.items()},
        energy_source="OpenMM CPU platform (mixed precision) potential energy / kT at 300 K",
        sha256={k: sha256_of(v) for k, v in splits.items()},
        seed=cfg["seed"], wall_time_s=round(float(state["wall_s"]), 1),
        versions=dict(openmm=openmm.__version__, numpy=np.__version__, python=sys.version.split()[0]),
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "aldp.npz", lambda f: np.savez_compressed(f, **splits))
    atomic_write(out / "aldp.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["run", "finish"])
    ap.add_argument("--work", type=Path, default=Path("runs/aldp_pt"), help="checkpoint folder")
    ap.add_argument("--out", type=Path, default=aldp_openmm.SHIPPED_PDB.parent, help="dataset folder (finish)")
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-time budget of this sitting (run)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, seconds (tests)")
    overrides = dict(n_replicas=int, n_frames=int, seed=int, burn_rounds=int, save_every=int, swap_every=int,
                     t_max=float)
    for k, typ in overrides.items():
        ap.add_argument("--" + k.replace("_", "-"), type=typ, default=None,
                        help=f"override {k} (default {SETTINGS[k]})")
    args = ap.parse_args(argv)
    cfg = dict(SETTINGS, **(QUICK if args.quick else {}))
    cfg.update({k: getattr(args, k) for k in overrides if getattr(args, k) is not None})
    if cfg["swap_every"] % cfg["save_every"]:
        raise ValueError(f"swap_every ({cfg['swap_every']}) must be a multiple of save_every ({cfg['save_every']})")
    if args.command == "run":
        run(cfg, args.work, args.minutes)
    else:
        info = finish(cfg, args.work, args.out)
        print(json.dumps({k: info[k] for k in ("sizes", "swap_acceptance", "tau_int_frames", "dropped_d_form",
                                                "dropped_cis", "fraction_phi_positive")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
