"""Alanine dipeptide: JAX force field vs OpenMM, geometry, shipped data, loaders, views, node features.

OpenMM tests skip cleanly without the ``md`` extra.  The float64 comparison (the <= 1e-3
kJ/mol criterion) runs in the ``JAX_ENABLE_X64=1`` pass; the float32 pass checks the same
frames at float32 round-off.
"""

import functools
import importlib.util
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eacf_lab as el
from eacf_lab import data, targets
from eacf_lab.data_zenodo import load_zenodo_aldp
from eacf_lab.targets import aldp_geometry as geo
from eacf_lab.targets.aldp import AlanineDipeptide, KB_KJ_PER_MOL_K
from eacf_lab.viz import molecule, ramachandran

ROOT = Path(__file__).resolve().parents[1]
X64 = bool(jax.config.jax_enable_x64)
PDB_X = molecule.read_pdb_coords(molecule.ALDP_PDB.read_text())[0]  # (22, 3) nm, L-form, trans


@functools.lru_cache(maxsize=None)
def _fns():
    """Jitted energy functions shared by the tests (each compiles once per input shape)."""
    t = AlanineDipeptide()
    return dict(energy=jax.jit(t.energy), energies=jax.jit(jax.vmap(t.energy)),
                value_and_grad_kj=jax.jit(jax.vmap(jax.value_and_grad(t.energy_kj))),
                value_and_grad=jax.jit(jax.vmap(jax.value_and_grad(t.energy))))


def _openmm():
    return pytest.importorskip("openmm", reason="OpenMM (extra `md`) not installed: reference energy tests skipped")


def _frames(n=50):
    """``n`` configurations: strided shipped test frames (MD at 300 K) plus two perturbed structures."""
    test = data.load("aldp", "test")
    idx = np.linspace(0, len(test) - 1, n - 2).astype(int)
    rng = np.random.default_rng(0)
    extra = PDB_X[None] + 0.01 * rng.normal(size=(2, 22, 3))
    return np.concatenate([test[idx].astype(np.float64), extra])


def _compare(dtype, e_tol, f_rtol):
    _openmm()
    from eacf_lab.targets import aldp_openmm

    system, _, _ = aldp_openmm.build_system()
    ctx = aldp_openmm.make_context(system, "Reference")
    value_and_grad = _fns()["value_and_grad_kj"]
    xs = _frames(50)
    e_jax, g_jax = (np.asarray(a, np.float64) for a in value_and_grad(jnp.asarray(xs, dtype)))
    for x, e, g in zip(xs.astype(dtype).astype(np.float64), e_jax, g_jax):
        e_ref, f_ref = aldp_openmm.energy_and_forces(ctx, x)
        assert abs(e - e_ref) <= e_tol, (e, e_ref)
        assert np.abs(-g - f_ref).max() <= f_rtol * max(1.0, np.abs(f_ref).max()), np.abs(-g - f_ref).max()


@pytest.mark.x64
def test_energy_and_forces_match_openmm_float64():
    _compare(np.float64, e_tol=1e-3, f_rtol=1e-7)  # |dF| <= 1e-7 max|F| ~ 1e-3 kJ/mol/nm


def test_energy_and_forces_match_openmm_float32():
    _compare(np.float32, e_tol=1e-2, f_rtol=1e-5)


def test_units_registry_and_shape_errors():
    t = targets.get("aldp")
    assert isinstance(t, AlanineDipeptide) and (t.n_nodes, t.dim, t.name) == (22, 3, "aldp")
    x = jnp.asarray(PDB_X, jnp.float32)[None]
    hot = AlanineDipeptide(temperature=600.0)
    e_kt, e_kj = _fns()["energies"](x), jax.jit(jax.vmap(t.energy_kj))(x)
    np.testing.assert_allclose(e_kt * KB_KJ_PER_MOL_K * 300.0, e_kj, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(hot.energy))(x) * 2.0, e_kt, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(t.log_prob))(x), -e_kt)
    with pytest.raises(ValueError, match=r"\(22, 3\)"):
        t.energy(jnp.zeros((21, 3)))
    with pytest.raises(ValueError, match="temperature"):
        AlanineDipeptide(temperature=0.0)


@pytest.mark.parametrize("group", ["rotation", "translation", "reflection"])
def test_energy_invariances(group):
    """E(3)-invariant (a mirror image has the same energy: it is the other enantiomer)."""
    t = AlanineDipeptide()
    x = jnp.asarray(data.load("aldp", "test")[0])
    # kJ/mol terms reach ~1e3 while the sum in kT is ~-50: float32 round-off scales with the terms.
    el.testing.assert_invariant(_fns()["energy"], x, key=jax.random.key(0), group=group, scale=2e3 / t.kt,
                                rtol=2e-6)


def test_gradient_finite_also_for_coincident_atoms():
    x = jnp.asarray(data.load("aldp", "test")[0])
    ys = jnp.stack([x, x.at[3].set(x[2]), x.at[8].set(x[6]), jnp.zeros((22, 3))])
    e, g = _fns()["value_and_grad"](ys)
    assert np.all(np.isfinite(e)) and np.all(np.isfinite(g))
    assert e[2] > e[0] + 1e3  # CA on top of N costs a lot


def _rotate_about_bond(x, atoms, i, j, angle):
    """Rotate ``atoms`` of ``x`` by ``angle`` about the axis through atoms i -> j (Rodrigues)."""
    k = (x[j] - x[i]) / np.linalg.norm(x[j] - x[i])
    v = x[atoms] - x[i]
    v = v * np.cos(angle) + np.cross(k, v) * np.sin(angle) + k * (v @ k)[:, None] * (1 - np.cos(angle))
    y = x.copy()
    y[atoms] = x[i] + v
    return y


def test_geometry_phi_psi_chirality_cis_trans():
    np.testing.assert_allclose(np.abs(np.asarray(geo.phi_psi(PDB_X))), [np.pi, np.pi], atol=1e-3)
    assert bool(geo.is_l_form(PDB_X)) and bool(geo.is_trans(PDB_X)) and bool(geo.is_valid(PDB_X))
    mirror = PDB_X * np.array([1.0, 1.0, -1.0])
    assert not bool(geo.is_l_form(mirror)) and bool(geo.is_trans(mirror))
    # Turn the ACE side of the ACE-ALA peptide bond (C 4 - N 6) by 180 deg: omega_1 becomes cis.
    cis = _rotate_about_bond(PDB_X, [0, 1, 2, 3, 5], 4, 6, np.pi)
    np.testing.assert_allclose(np.asarray(geo.omegas(cis))[0], 0.0, atol=1e-3)
    assert bool(geo.is_l_form(cis)) and not bool(geo.is_trans(cis))
    # phi changes by the angle we turn about N-CA.
    turned = _rotate_about_bond(PDB_X, [0, 1, 2, 3, 4, 5, 7], 8, 6, 0.5)
    dphi = np.asarray(geo.phi_psi(turned))[0] - np.asarray(geo.phi_psi(PDB_X))[0]
    np.testing.assert_allclose(np.abs((dphi + np.pi) % (2 * np.pi) - np.pi), 0.5, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(22, 3\)"):
        geo.phi_psi(np.zeros((22, 2)))


def test_shipped_data_valid_and_described():
    meta = data.info("aldp")
    sizes = {s: len(data.load("aldp", s)) for s in data.SPLITS}
    assert sizes == meta["sizes"] and sum(sizes.values()) == meta["frames_kept"]
    assert meta["hamiltonian"] == "amber96-obc1" and meta["temperature_K"] == 300.0 and meta["units"] == "nm"
    assert len(meta["swap_acceptance"]) == len(meta["temperatures_K"]) - 1
    for s in data.SPLITS:
        x = data.load("aldp", s)
        assert x.dtype == np.float32 and x.shape[1:] == (22, 3)
        assert bool(jnp.all(jax.vmap(geo.is_l_form)(x))) and bool(jnp.all(jax.vmap(geo.is_trans)(x)))


def test_shipped_energy_matches_provenance():
    """JAX energies of the shipped frames reproduce the OpenMM statistics the generator recorded."""
    meta = data.info("aldp")
    e = np.asarray(_fns()["energies"](data.load("aldp", "test")), np.float64)
    rec = meta["energy_kT"]["test"]
    assert abs(e.mean() - rec["mean"]) < 0.01 and abs(e.std() - rec["std"]) < 0.01
    # and the 300 K energy distribution looks thermal: std ~ sqrt(n_dof / 2) ~ sqrt(33) kT
    assert 3.0 < e.std() < 9.0


def test_fresh_md_energy_matches_shipped_data():
    """A fresh 10 ps OpenMM run at 300 K from a shipped frame: same potential-energy mean (kT)."""
    mm = _openmm()
    from eacf_lab.targets import aldp_openmm

    system, _, _ = aldp_openmm.build_system()
    integ = mm.LangevinMiddleIntegrator(300.0, 1.0, 0.001)
    integ.setRandomNumberSeed(1)
    ctx = aldp_openmm.make_context(system, "CPU", integ, threads=1)
    ctx.setPositions(data.load("aldp", "val")[0].astype(np.float64))
    ctx.setVelocitiesToTemperature(300.0, 2)
    integ.step(2000)
    e = []
    for _ in range(100):
        integ.step(80)
        e.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(mm.unit.kilojoule_per_mole))
    e = np.array(e) / (KB_KJ_PER_MOL_K * 300.0)
    shipped = data.info("aldp")["energy_kT"]["test"]
    # ~100 samples with tau ~ a few: standard error ~ 1 kT; 800 K data would be off by ~ 60 kT.
    assert abs(e.mean() - shipped["mean"]) < 4.0, (e.mean(), shipped["mean"])


def test_loader_rejects_wrong_atom_count(tmp_path):
    x = np.zeros((4, 21, 3), np.float32)
    np.savez(tmp_path / "aldp.npz", train=x, val=x, test=x)
    meta = {"sha256": {s: data.sha256_of(x) for s in data.SPLITS}}
    (tmp_path / "aldp.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"\(n_samples, 22, 3\), got \(4, 21, 3\) \(aldp has 22 nodes/atoms"):
        data.load("aldp", "train", root=tmp_path)


def _write_h5(path, x, units="nanometers", n_top=22):
    h5py = pytest.importorskip("h5py", reason="h5py (extra `md`) not installed")
    top = {"chains": [{"residues": [{"atoms": [{"name": f"A{i}"} for i in range(n_top)]}]}], "bonds": []}
    with h5py.File(path, "w") as f:
        f.create_dataset("coordinates", data=x).attrs["units"] = units
        f.create_dataset("topology", data=[json.dumps(top).encode()])


def test_zenodo_loader_on_local_files(tmp_path):
    rng = np.random.default_rng(0)
    x = (PDB_X[None] + 0.01 * rng.normal(size=(5, 22, 3)) + 1.0).astype(np.float32)
    cache = tmp_path / "cache"
    cache.mkdir()
    _write_h5(cache / "test.h5", x)
    y = load_zenodo_aldp("test", cache, download=False)
    assert y.shape == (5, 22, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y, x - x.mean(axis=1, keepdims=True), atol=1e-6)
    assert np.abs(y.mean(axis=1)).max() < 1e-6
    np.testing.assert_allclose(load_zenodo_aldp("test", cache, download=False, zero_com=False, max_frames=2), x[:2])
    # download on demand (a file:// URL stands in for Zenodo), cached for the next call
    src = tmp_path / "remote.h5"
    _write_h5(src, x)
    fresh = tmp_path / "fresh"
    y2 = load_zenodo_aldp("val", fresh, url=src.as_uri())
    assert (fresh / "val.h5").is_file() and np.array_equal(y2, y)
    with pytest.raises(ValueError, match="not cached and download=False"):
        load_zenodo_aldp("train", cache, download=False)
    with pytest.raises(ValueError, match="could not download"):
        load_zenodo_aldp("train", tmp_path / "c2", url=(tmp_path / "missing.h5").as_uri())
    _write_h5(cache / "train.h5", x[:, :21])
    with pytest.raises(ValueError, match=r"\(n_frames, 22, 3\).*22 atoms.*\(5, 21, 3\)"):
        load_zenodo_aldp("train", cache, download=False)
    _write_h5(cache / "val.h5", x, units="angstroms")
    with pytest.raises(ValueError, match="nanometers"):
        load_zenodo_aldp("val", cache, download=False)


def test_ramachandran_kld_and_weights():
    rng = np.random.default_rng(0)
    p = rng.uniform(-np.pi, np.pi, (20000, 2))
    assert ramachandran.ramachandran_kld(p, p) == pytest.approx(0.0, abs=1e-12)
    q = np.stack([rng.normal(0.0, 1.0, 20000), rng.uniform(-np.pi, np.pi, 20000)], -1)
    q = (q + np.pi) % (2 * np.pi) - np.pi
    kl = ramachandran.ramachandran_kld(p, q, bins=10)
    assert kl > 0.3  # KL(uniform || N(0, 1)) on [-pi, pi] ~ 0.7
    # Reweighting q by p/q (uniform / Gaussian in phi) brings it back towards p.
    w = 1.0 / np.exp(-0.5 * q[:, 0] ** 2)
    assert ramachandran.ramachandran_kld(p, q, w / w.sum(), bins=10) < 0.1 * kl
    lw = rng.normal(size=1000)
    w = ramachandran.importance_weights(lw, clip_fraction=0.01)
    assert w.sum() == pytest.approx(1.0) and np.sum(w == w.max()) >= 10  # top 1 % share the clip value
    assert np.argmax(lw) in np.flatnonzero(w == w.max())


def test_ramachandran_figure_and_angles():
    x = data.load("aldp", "test")[:200]
    a = ramachandran.angles(x)
    assert a.shape == (200, 2) and np.all(np.abs(a) <= np.pi)
    w = ramachandran.importance_weights(np.zeros(200))
    fig = ramachandran.ramachandran_figure({"model": (a[:, 0], a[:, 1]), "data": (a[:, 0], a[:, 1]),
                                            "reweighted": (a[:, 0], a[:, 1], w)}, bins=30)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 3 and np.asarray(heat[0].z).shape == (30, 30)
    with pytest.raises(ValueError, match="panel"):
        ramachandran.ramachandran_figure({"bad": (a[:, 0],)})


def test_pdb_text_round_trip_and_kabsch():
    x = data.load("aldp", "test")[:3].astype(np.float64)
    text = molecule.pdb_text(x)
    assert text.count("MODEL") == 3 and " CA  ALA" in text
    np.testing.assert_allclose(molecule.read_pdb_coords(text), x, atol=6e-5)  # 0.001 A resolution
    np.testing.assert_allclose(molecule.read_pdb_coords(molecule.pdb_text(x[0]))[0], x[0], atol=6e-5)
    if importlib.util.find_spec("openmm") is not None:  # OpenMM reads it as the same topology
        import io

        from openmm import app
        pdb = app.PDBFile(io.StringIO(text))
        assert pdb.getNumFrames() == 3 and pdb.topology.getNumAtoms() == 22
    r = np.asarray(el.random_rotation(jax.random.key(3), 3), np.float64)
    moved = x[0] @ r.T + np.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(molecule.kabsch_align(moved, x[0]), x[0], atol=1e-5)
    mirror = molecule.kabsch_align(x[0] * np.array([1, 1, -1.0]), x[0])  # never reflects
    assert np.sqrt(np.mean(np.sum((mirror - x[0]) ** 2, -1))) > 0.02
    assert not bool(geo.is_l_form(mirror))
    with pytest.raises(ValueError, match="n_atoms = 22"):
        molecule.pdb_text(np.zeros((21, 3)))


def test_trajectory_view_has_all_frames():
    pytest.importorskip("nglview", reason="nglview (extra `lab`) not installed")
    x = data.load("aldp", "test")[:4]
    view = molecule.trajectory_view(x)
    traj = view._trajlist[0]
    assert view.max_frame == 3 and traj.n_frames == 4
    assert "ATOM" in traj.get_structure_string()
    # frames are aligned to the first and in Angstrom
    np.testing.assert_allclose(traj.get_coordinates(0), 10 * x[0], atol=1e-4)
    d = lambda y: np.linalg.norm(y[6] - y[8])  # noqa: E731  N-CA bond length is kept
    assert d(traj.get_coordinates(2)) == pytest.approx(10 * d(x[2]), rel=1e-5)


@pytest.mark.parametrize("projection", ["spherical", "none"])
def test_node_features_are_used_and_checkpoint_round_trips(projection, tmp_path):
    """EGNN (spherical) and transformer (none) conditioners read per-atom features."""
    from registry import TINY

    feats = jax.nn.one_hot(jnp.array([0, 1, 2, 1, 0]), 3)
    flow = el.make_flow(jax.random.key(0), 5, 3, projection, n_blocks=1, node_features=feats, **TINY)
    # A fresh flow is the identity (features cannot matter): perturb the weights, not the features.
    # (numpy noise: el.testing.perturb does the same with one jax.random call per leaf, ~10x slower here)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda p: p + jnp.asarray(0.1 * rng.normal(size=p.shape), p.dtype), params)
    flow = eqx.tree_at(lambda f: f.node_features, eqx.combine(params, static), feats)
    x = el.remove_com(jax.random.normal(jax.random.key(2), (5, 3)))
    a = x[None] + 0.1 * jax.random.normal(jax.random.key(3), (1, 5, 3))
    log_prob = eqx.filter_jit(lambda f, x, a: f.log_prob(x, a))  # one compile for all variants below
    lp = log_prob(flow, x, a)
    swapped = eqx.tree_at(lambda f: f.node_features, flow, feats[jnp.array([1, 0, 2, 3, 4])])  # atom types 0 <-> 1
    assert abs(float(log_prob(swapped, x, a)) - float(lp)) > 1e-4  # features change the density
    perm = jnp.array([2, 0, 4, 1, 3])  # permuting atoms together with their features: invariant
    permuted = eqx.tree_at(lambda f: f.node_features, flow, feats[perm])
    np.testing.assert_allclose(log_prob(permuted, x[perm], a[:, perm]), lp, rtol=1e-5, atol=1e-4)
    path = tmp_path / "f.eqx"
    el.save(path, flow, {"flow": flow.config})
    loaded, _ = el.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.node_features), np.asarray(feats))
    np.testing.assert_allclose(log_prob(loaded, x, a), lp, rtol=1e-6)


def test_pt_script_runs_resumes_and_finishes(tmp_path):
    _openmm()
    spec = importlib.util.spec_from_file_location("generate_aldp", ROOT / "scripts" / "generate_aldp.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    cfg = dict(gen.SETTINGS, **dict(gen.QUICK, n_frames=6, burn_rounds=1))
    pt = gen.run(cfg, tmp_path / "w", minutes=5.0)
    assert len(pt.frames) == 6 and pt.round == 4  # round 0 is burn-in, then 2 frames per round
    cfg = dict(cfg, n_frames=12)  # a second sitting with a larger budget continues
    pt = gen.run(cfg, tmp_path / "w", minutes=5.0)
    assert len(pt.frames) == 12 and pt.round == 7
    with pytest.raises(ValueError, match="settings"):  # other physics: refused
        gen.run(dict(cfg, seed=1), tmp_path / "w", minutes=5.0)
    state = gen.load_state(tmp_path / "w" / "state.npz", cfg)
    assert int(state["round"]) == 7 and state["frames"].shape == (12, 22, 3)
    assert state["attempts"].sum() == 7  # 3 replicas: one neighbour pair tried per round
    info = gen.finish(cfg, tmp_path / "w", tmp_path / "out")
    assert sum(info["sizes"].values()) == info["frames_kept"] == 12 - info["dropped_d_form"] - info["dropped_cis"]
    x = data.load("aldp", "train", root=tmp_path / "out")
    assert x.shape == (info["sizes"]["train"], 22, 3)
