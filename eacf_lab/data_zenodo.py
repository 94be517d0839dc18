"""The public alanine dipeptide dataset (Zenodo record 6993124): download on demand, cache, verify.

Midgley et al. 2023 (App. C.3.2) and Stimper et al. 2022 train on this set: 300 K
alanine dipeptide in implicit solvent, one mdtraj HDF5 file per split (``train.h5``,
``val.h5``, ``test.h5``; the training file is large, about 10^7 frames).  mdtraj's HDF5
format stores the coordinates as the dataset ``coordinates`` of shape ``(n_frames, n_atoms, 3)``
in nanometres (attribute ``units = "nanometers"``) and the topology as JSON text.

``load_zenodo_aldp(split)`` looks for ``<cache_dir>/<split>.h5``; if it is missing and
``download=True``, it fetches ``ZENODO_URL.format(split=...)`` into the cache (streamed to a
temporary file, then renamed: an interrupted download never leaves a half file), then reads
it with h5py and checks: the ``coordinates`` dataset exists, shape ``(n, 22, 3)``, finite,
nm units if the attribute is there.  Any problem is one ``ValueError`` line.  Tested against
small local files (no network in the tests).  Needs ``h5py`` (extra ``md``).

Returned frames are float32 in nm; with ``zero_com=True`` (default) each frame's unweighted
centre of mass is removed, the convention of ``eacf_lab.data.load("aldp", ...)``.  The atom
order of the Zenodo files is that of ``datasets/aldp.pdb`` (both come from openmmtools'
alanine dipeptide; the topology JSON is checked for 22 atoms when present).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np

from eacf_lab.atomic import atomic_write

__all__ = ["load_zenodo_aldp", "ZENODO_RECORD", "ZENODO_URL", "default_cache_dir", "N_ATOMS"]

ZENODO_RECORD = 6993124
ZENODO_URL = "https://zenodo.org/records/6993124/files/{split}.h5?download=1"
N_ATOMS = 22
SPLITS = ("train", "val", "test")


def default_cache_dir() -> Path:
    """``$EACF_LAB_CACHE/aldp_zenodo`` or ``~/.cache/eacf_lab/aldp_zenodo``."""
    root = os.environ.get("EACF_LAB_CACHE") or Path.home() / ".cache" / "eacf_lab"
    return Path(root) / "aldp_zenodo"


def _download(url: str, path: Path, timeout: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            atomic_write(path, lambda f: shutil.copyfileobj(resp, f, length=1 << 20))
    except OSError as e:  # URLError is an OSError
        raise ValueError(f"could not download {url} to {path} ({e}); without internet, copy the file "
                         f"there by hand") from None


def _read(path: Path, max_frames: int | None) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise ImportError("reading the Zenodo alanine dipeptide files needs h5py: "
                          "pip install 'eacf_lab[md]' (or pip install h5py)") from None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: expected an mdtraj HDF5 file, could not open it ({e})") from None
    with f:
        if "coordinates" not in f:
            raise ValueError(f"{path}: expected an mdtraj HDF5 file with a 'coordinates' dataset, "
                             f"found {sorted(f.keys())}")
        ds = f["coordinates"]
        if ds.ndim != 3 or ds.shape[1:] != (N_ATOMS, 3):
            raise ValueError(f"{path}: 'coordinates' must be (n_frames, {N_ATOMS}, 3) for alanine dipeptide "
                             f"({N_ATOMS} atoms), got {ds.shape}")
        units = ds.attrs.get("units")
        if units is not None:
            units = units.decode() if isinstance(units, bytes) else str(units)
            if units != "nanometers":
                raise ValueError(f"{path}: expected coordinates in 'nanometers', got {units!r}")
        if "topology" in f:
            top = f["topology"][()]
            top = top[0] if isinstance(top, np.ndarray) and top.shape else top
            try:
                top = json.loads(top.decode() if isinstance(top, bytes) else str(top))
                n = sum(len(r["atoms"]) for c in top["chains"] for r in c["residues"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}: expected the mdtraj topology JSON, could not parse it") from None
            if n != N_ATOMS:
                raise ValueError(f"{path}: topology has {n} atoms, expected {N_ATOMS}")
        x = np.asarray(ds[: max_frames] if max_frames is not None else ds[()], np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: coordinates must be all finite")
    return x


def load_zenodo_aldp(split: str, cache_dir=None, *, download: bool = True, url: str | None = None,
                     zero_com: bool = True, max_frames: int | None = None, timeout: float = 60.0) -> np.ndarray:
    """One split of the public dataset as ``(n_frames, 22, 3)`` float32 in nm.

    Arguments:
        split: ``"train"``, ``"val"`` or ``"test"``.
        cache_dir: where ``<split>.h5`` is (or goes); default ``default_cache_dir()``.
        download: fetch the file when it is not cached (else: error).
        url: override the source (default ``ZENODO_URL``; a ``file://`` URL works too).
        zero_com: remove each frame's unweighted centre of mass.
        max_frames: read only the first frames (the training file is large).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    path = Path(cache_dir or default_cache_dir()) / f"{split}.h5"
    if not path.is_file():
        if not download:
            raise ValueError(f"{path}: not cached and download=False; expected the Zenodo record "
                             f"{ZENODO_RECORD} file {split}.h5 there")
        _download(url or ZENODO_URL.format(split=split), path, timeout)
    x = _read(path, max_frames)
    if zero_com:
        x = (x - x.mean(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return x
