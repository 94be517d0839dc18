"""Shipped datasets: loader validation, unbiased splits (KS), reproducible generation."""

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_debug_nans", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from eacf_lab import data, targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("generate_datasets", ROOT / "scripts" / "generate_datasets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_shipped_dataset_loads(name):
    n_nodes, dim = data.SPECS[name]
    sizes = {}
    for split in data.SPLITS:
        x = data.load(name, split)
        assert x.dtype == np.float32 and x.shape[1:] == (n_nodes, dim)
        np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-5)
        sizes[split] = len(x)
    assert sizes["train"] == 1000 and sizes["val"] == 1000 and sizes["test"] >= 10_000
    meta = data.info(name)
    assert meta["name"] == name and meta["thin"] >= max(meta["tau_int"]["pilot_energy"], meta["tau_int"]["production_energy"])
    assert set(meta["sha256"]) == set(data.SPLITS)
    assert name in data.available()


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_train_and_test_energies_agree(name):
    """Two-sample KS at alpha = 0.001 (the published DW4/LJ13 datasets fail this)."""
    energy = jax.jit(jax.vmap(targets.get(name).energy))
    e = {s: np.asarray(energy(data.load(name, s)), np.float64) for s in data.SPLITS}
    assert np.all(np.isfinite(e["test"]))
    for a, b in [("train", "test"), ("val", "test"), ("train", "val")]:
        stat = data.ks_statistic(e[a], e[b])
        assert stat < data.ks_critical(len(e[a]), len(e[b]), 1e-3), (a, b, stat)


def test_ks_helpers_by_hand():
    assert data.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert data.ks_statistic([0, 1], [2, 3]) == 1.0
    assert data.ks_statistic([0, 2], [1, 3]) == 0.5
    assert data.ks_critical(1000, 1000, 1e-3) == pytest.approx(1.9495 * np.sqrt(2 / 1000), rel=1e-3)
    rng = np.random.default_rng(0)
    assert data.ks_statistic(rng.normal(size=1000), rng.normal(0.3, 1, size=10_000)) > data.ks_critical(1000, 10_000)


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match=r"expected one of \['aldp', 'dw4', 'lj13'\]"):
        data.load("qm9", "train")
    with pytest.raises(ValueError, match=r"expected one of \['train', 'val', 'test'\]"):
        data.load("dw4", "validation")
    with pytest.raises(ValueError, match="expected one of"):
        data.info("qm9")


def make_fake(root: Path, splits: dict, name="dw4", sha_from=None, pickle=False):
    """Write ``<name>.npz`` from ``splits`` and a JSON recording sha256 of ``sha_from or splits``."""
    root.mkdir(exist_ok=True)
    np.savez(root / f"{name}.npz", **splits, allow_pickle=pickle) if pickle else np.savez(root / f"{name}.npz", **splits)
    ref = sha_from or splits
    meta = {"name": name, "sha256": {k: data.sha256_of(np.asarray(v)) if np.asarray(v).dtype != object else "x"
                                      for k, v in ref.items()}}
    (root / f"{name}.json").write_text(json.dumps(meta))


def good_splits(n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, n, 4, 2))
    x = (x - x.mean(axis=2, keepdims=True)).astype(np.float32)
    return dict(train=x[0], val=x[1], test=x[2])


def test_fake_good_dataset_loads(tmp_path):
    make_fake(tmp_path, good_splits())
    assert data.load("dw4", "val", root=tmp_path).shape == (5, 4, 2)
    assert data.available(tmp_path) == ["dw4"]


@pytest.mark.parametrize(
    "defect, message",
    [
        ("shape", r"must be \(n_samples, 4, 2\), got \(5, 4, 3\)"),
        ("nan", "must be all finite"),
        ("dtype", "must be float32, got float64"),
        ("com", "zero centre of mass"),
        ("tampered", "sha256 of 'train' does not match"),
        ("pickle", "no pickled objects"),
        ("missing_key", "expected keys"),
        ("missing_file", "dataset file not found"),
        ("not_npz", "expected a .npz archive"),
        ("bad_json", "could not parse"),
    ],
)
def test_loader_rejects_bad_files(tmp_path, defect, message):
    s = good_splits()
    if defect == "shape":
        s["train"] = np.zeros((5, 4, 3), np.float32)
    elif defect == "nan":
        s["train"][0, 0, 0] = np.nan
    elif defect == "dtype":
        s["train"] = s["train"].astype(np.float64)
    elif defect == "com":
        s["train"] = s["train"] + np.float32(1.0)
    elif defect == "missing_key":
        del s["train"]
    if defect == "tampered":
        tampered = {k: v.copy() for k, v in s.items()}
        tampered["train"][0, 0, 0] += 1e-3
        tampered["train"][0, 1, 0] -= 1e-3
        make_fake(tmp_path, tampered, sha_from=s)
    elif defect == "pickle":
        obj = np.empty(2, dtype=object)
        obj[0], obj[1] = {"a": 1}, [1, 2]
        make_fake(tmp_path, dict(s, train=obj), pickle=True)
    else:
        make_fake(tmp_path, s)
    if defect == "missing_file":
        (tmp_path / "dw4.npz").unlink()
    elif defect == "not_npz":
        (tmp_path / "dw4.npz").write_bytes(b"definitely not a zip file")
    elif defect == "bad_json":
        (tmp_path / "dw4.json").write_text("{not json")
    with pytest.raises(ValueError, match=message) as err:
        data.load("dw4", "train", root=tmp_path)
    assert "\n" not in str(err.value)


def test_shipped_copy_tampered_is_caught(tmp_path):
    for ext in ("npz", "json"):
        shutil.copy(data.DATASET_DIR / f"dw4.{ext}", tmp_path / f"dw4.{ext}")
    with np.load(tmp_path / "dw4.npz") as z:
        s = {k: z[k].copy() for k in z.files}
    s["test"] = s["test"][::-1].copy()  # same values, different order: still a different file
    np.savez_compressed(tmp_path / "dw4.npz", **s)
    assert data.load("dw4", "train", root=tmp_path).shape == (1000, 4, 2)
    with pytest.raises(ValueError, match="sha256"):
        data.load("dw4", "test", root=tmp_path)


def test_quick_generation_is_bit_for_bit(tmp_path):
    gen = load_script()
    a, info_a = gen.generate("dw4", seed=3, quick=True)
    b, info_b = gen.generate("dw4", seed=3, quick=True)
    for k in data.SPLITS:
        assert a[k].dtype == np.float32 and a[k].tobytes() == b[k].tobytes()
    assert info_a["sha256"] == info_b["sha256"]
    assert info_a["thin"] >= info_a["tau_int"]["pilot_energy"]
    gen.write(a, info_a, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dw4.json", "dw4.npz"]  # no temp files left
    assert data.load("dw4", "test", root=tmp_path).tobytes() == a["test"].tobytes()
    assert gen.main(["--target", "dw4", "--quick", "--seed", "3", "--check", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "dw4.json").read_text())
    meta["sha256"]["val"] = "0" * 64
    (tmp_path / "dw4.json").write_text(json.dumps(meta))
    assert gen.main(["--target", "dw4", "--quick", "--seed", "3", "--check", "--out", str(tmp_path)]) == 1
    c, _ = gen.generate("dw4", seed=4, quick=True)
    assert c["train"].tobytes() != a["train"].tobytes()
