"""Generate the shipped DW4 / LJ13 datasets from the energies, reproducibly from a seed.

    python scripts/generate_datasets.py --target all            # writes eacf_lab/datasets/
    python scripts/generate_datasets.py --target dw4 --check    # regenerate, compare sha256s
    python scripts/generate_datasets.py --target lj13 --quick --out /tmp/d   # seconds (tests)

Recipe (DESIGN.md Sec. 3), per target, with ``eacf_lab.mcmc.run_chains``:
1. ``n_adapt`` transitions from a spread-out start with step sizes adapting (burn-in, discarded);
2. a pilot run at fixed step sizes (discarded) measures the integrated autocorrelation time
   of the energy and of the mean pair distance (a slow coordinate: the DW4 energy is blind to
   which of the two symmetric wells a pair sits in); thin = ceil(safety * max of the two);
3. production: every chain keeps one state every ``thin`` transitions; states are projected
   to zero CoM, cast to float32, shuffled across chains with the seed and split
   train / val / test.  DW4 uses MALA + parallel tempering (pair barriers of ~4.4 kT);
   LJ13 (a liquid-like cluster at tau = 1) uses HMC without tempering.
The .npz holds ``train``, ``val``, ``test`` (each ``(n, n_nodes, dim)`` float32); the .json
holds the provenance, including the sha256 of each split's bytes (C order, little-endian
float32), which ``--check`` compares and ``eacf_lab.data.load`` verifies.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eacf_lab import data, targets  # noqa: E402
from eacf_lab.atomic import atomic_write  # noqa: E402
from eacf_lab.mcmc import integrated_autocorr_time, run_chains  # noqa: E402

SETTINGS = {
    "dw4": dict(sampler="MALA + parallel tempering", n_chains=256, betas=np.geomspace(1.0, 0.25, 6).tolist(),
                n_leapfrog=1, step_size=0.02, n_adapt=2000, n_pilot=2000, safety=3.0, init_scale=2.0,
                splits=dict(train=1000, val=1000, test=10000)),
    "lj13": dict(sampler="HMC", n_chains=256, betas=None, n_leapfrog=10, step_size=0.03, n_adapt=1000,
                 n_pilot=500, safety=3.0, init_scale=1.1, splits=dict(train=1000, val=1000, test=10000)),
}
QUICK = dict(n_chains=8, n_adapt=40, n_pilot=60, splits=dict(train=16, val=16, test=32))


def initial_state(name, key, n_temps, n_chains, scale):
    """DW4: Gaussian with std ``scale``.  LJ13: 13 random sites of a 3x3x3 grid of spacing ``scale``
    plus small noise, so no two particles start on top of each other."""
    t = targets.get(name)
    if name == "dw4":
        return scale * jax.random.normal(key, (n_temps, n_chains, t.n_nodes, t.dim))
    grid = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3) * scale
    k_site, k_noise = jax.random.split(key)
    pick = jax.vmap(lambda k: jax.random.permutation(k, 27)[: t.n_nodes])
    idx = pick(jax.random.split(k_site, n_temps * n_chains)).reshape(n_temps, n_chains, t.n_nodes)
    return jnp.asarray(grid, jnp.float32)[idx] + 0.05 * jax.random.normal(k_noise, idx.shape + (3,))


def mean_pair_distance(x: np.ndarray) -> np.ndarray:
    """``x: (..., n_nodes, dim)`` -> ``(...)`` mean over all pairs i != j of |x_i - x_j|."""
    n = x.shape[-2]
    d = np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)
    return d.sum(axis=(-1, -2)) / (n * (n - 1))


def generate(name: str, seed: int = 0, quick: bool = False):
    """Run the recipe; return ``(splits: dict[str, (n, n_nodes, dim) float32], info: dict)``."""
    cfg = dict(SETTINGS[name], **(QUICK if quick else {}))
    target = targets.get(name)
    t0 = time.time()
    k_init, k_adapt, k_pilot, k_prod = jax.random.split(jax.random.key(seed), 4)
    betas = cfg["betas"]
    n_t = 1 if betas is None else len(betas)
    x0 = initial_state(name, k_init, n_t, cfg["n_chains"], cfg["init_scale"])
    common = dict(n_leapfrog=cfg["n_leapfrog"], betas=betas, zero_com=True)
    x0 = x0 if betas is not None else x0[0]
    burn = run_chains(target.log_prob, x0, key=k_adapt, n_steps=cfg["n_adapt"],
                      thin=cfg["n_adapt"], step_size=cfg["step_size"], adapt=True, **common)
    eps = burn.step_size
    start = burn.x if betas is not None else burn.x[0]
    pilot = run_chains(target.log_prob, start, key=k_pilot, n_steps=cfg["n_pilot"], step_size=eps, **common)
    tau_e = integrated_autocorr_time(-np.asarray(pilot.log_prob))
    tau_d = integrated_autocorr_time(mean_pair_distance(np.asarray(pilot.samples, np.float64)))
    thin = int(math.ceil(cfg["safety"] * max(tau_e, tau_d)))
    n_total = sum(cfg["splits"].values())
    n_keep = -(-n_total // cfg["n_chains"])
    start = pilot.x if betas is not None else pilot.x[0]
    prod = run_chains(target.log_prob, start, key=k_prod, n_steps=n_keep * thin, thin=thin, step_size=eps, **common)
    kept = np.asarray(prod.samples, np.float64)  # (n_keep, n_chains, n_nodes, dim)
    kept = (kept - kept.mean(axis=-2, keepdims=True)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(n_keep * cfg["n_chains"])[:n_total]
    flat = kept.reshape((-1,) + kept.shape[2:])[order]
    splits, i = {}, 0
    for split, n in cfg["splits"].items():
        splits[split] = np.ascontiguousarray(flat[i : i + n])
        i += n
    energy = jax.jit(jax.vmap(target.energy))
    e = {k: np.asarray(energy(jnp.asarray(v)), np.float64) for k, v in splits.items()}
    q = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    info = dict(
        name=name, target=repr(target), seed=seed, quick=quick,
        n_nodes=target.n_nodes, dim=target.dim, dtype="float32", zero_com=True,
        sampler=cfg["sampler"], settings={k: v for k, v in cfg.items() if k != "sampler"},
        step_size=np.asarray(eps).tolist(),
        acceptance=dict(adapt=np.asarray(burn.accept_rate).tolist(), production=np.asarray(prod.accept_rate).tolist(),
                        swap=np.asarray(prod.swap_rate).tolist()),
        tau_int=dict(pilot_energy=tau_e, pilot_mean_pair_distance=tau_d,
                     production_energy=integrated_autocorr_time(-np.asarray(prod.log_prob)),
                     kept_energy_in_kept_samples=integrated_autocorr_time(-np.asarray(prod.log_prob)[thin - 1 :: thin]),
                     kept_mean_pair_distance_in_kept_samples=integrated_autocorr_time(mean_pair_distance(kept.astype(np.float64)))),
        thin=thin, n_transitions=dict(adapt=cfg["n_adapt"], pilot=cfg["n_pilot"], production=n_keep * thin),
        energy={k: dict(mean=float(v.mean()), std=float(v.std()), quantiles=dict(zip(map(str, q), np.quantile(v, q).tolist())))
                for k, v in e.items()},
        ks_train_test={"statistic": data.ks_statistic(e["train"], e["test"]),
                       "critical_alpha_0.001": data.ks_critical(len(e["train"]), len(e["test"]), 1e-3)},
        sha256={k: data.sha256_of(v) for k, v in splits.items()},
        versions=dict(jax=jax.__version__, numpy=np.__version__, python=sys.version.split()[0]),
        wall_time_s=round(time.time() - t0, 1),
    )
    return splits, info


def write(splits: dict, info: dict, out: Path) -> None:
    """Write ``<name>.npz`` (compressed) and ``<name>.json`` atomically into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    name = info["name"]
    atomic_write(out / f"{name}.npz", lambda f: np.savez_compressed(f, **splits))
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    atomic_write(out / f"{name}.json", lambda f: f.write(text.encode()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["dw4", "lj13", "all"], required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    parser.add_argument("--check", action="store_true", help="regenerate and compare sha256s with the JSON in --out")
    parser.add_argument("--out", type=Path, default=Path(data.DATASET_DIR))
    args = parser.parse_args(argv)
    ok = True
    for name in (["dw4", "lj13"] if args.target == "all" else [args.target]):
        splits, info = generate(name, args.seed, args.quick)
        print(f"{name}: {info['wall_time_s']} s, thin {info['thin']}, tau_int {info['tau_int']}, "
              f"acceptance {info['acceptance']}, KS {info['ks_train_test']}", flush=True)
        if not args.check:
            write(splits, info, args.out)
            continue
        shipped = json.loads((args.out / f"{name}.json").read_text())
        same = shipped["sha256"] == info["sha256"] and shipped["seed"] == args.seed
        print(f"{name}: {'OK, bit-for-bit identical' if same else 'MISMATCH'} "
              f"(shipped {shipped['sha256']}, regenerated {info['sha256']})")
        ok &= same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
