"""Independent atomic-model data sets for the per-epoch study (bench/recipe.py, RESULTS.md section 9).

Real deposited models, not the simulator's blobs: the atomic models come from the PyPI package
``MDAnalysisTests`` (its test data folder holds PDB entries; wwPDB data are CC0). The source archive is fetched
with pip (``pip download --no-deps``) into ``bench/_work/pkgs`` and the few files used are read straight from it;
nothing is committed.

* ``compositional``: PDB 1A28 (progesterone receptor ligand-binding domain, chains A and B, 4,262 atoms).
  Three states in one frame: the dimer; the dimer with the first third of chain B's residues removed; the dimer
  with the last third of chain A's residues removed (each removal ~1/6 of the mass).
* ``hinge``: adenylate kinase (MDAnalysisTests' ``adk_closed.pdb`` / ``adk_open.pdb``, the 1AKE/4AKE
  conformations with one atom order): ``--n-hinge`` models linearly interpolated between closed and open, a
  continuous LID/NMP domain motion; the state index is the hinge coordinate.

    .venv/bin/python bench/atomic_states.py compositional -N 10000 -D 32 --apix 5 --snr 0.1 -o bench/_work/a3
    .venv/bin/python bench/atomic_states.py hinge -N 10000 -D 32 --apix 5 --snr 0.1 -o bench/_work/adk
    .venv/bin/python bench/atomic_states.py tilt4 -N 1200 -D 32 --apix 5 --snr 0.1 -o bench/_work/t4

* ``tilt4``: tilt series (``cryoscape simulate-tilt``: 41 tilts to +-60 deg, dose-symmetric, Warp/M-style STAR)
  of four compositional 1A28 states: the three of ``compositional`` and the dimer with both removals. The maps
  are rendered from the models by ``cryoscape simulate --pdb`` (its ``gt/``) and projected by ``simulate-tilt
  --volumes``; the SNR is that of the untilted image.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRYOSCAPE = ROOT / ".venv" / "bin" / "cryoscape"
PKG_DIR = HERE / "_work" / "pkgs"
PACKAGE = "mdanalysistests==2.11.0"


def package_archive() -> Path:
    """The MDAnalysisTests source archive (downloaded once with pip)."""
    found = sorted(PKG_DIR.glob("mdanalysistests-*.tar.gz"))
    if not found:
        PKG_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
                        "-d", str(PKG_DIR)], check=True)
        found = sorted(PKG_DIR.glob("mdanalysistests-*.tar.gz"))
    return found[-1]


def read_member(name: str) -> bytes:
    """Bytes of ``MDAnalysisTests/data/<name>`` in the archive (gunzipped when it ends in .gz)."""
    with tarfile.open(package_archive()) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("MDAnalysisTests/data/" + name))
        data = tar.extractfile(member).read()
    return gzip.decompress(data) if name.endswith(".gz") else data


def _structure(name: str, work: Path):
    import gemmi

    path = work / name.removesuffix(".gz")
    path.write_bytes(read_member(name))
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_waters()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    return st


def _remove_residues(st, chain_name: str, fraction: float, from_end: bool):
    """A copy of ``st`` with the first (or last) ``fraction`` of ``chain_name``'s residues removed."""
    st = st.clone()
    chain = st[0][chain_name]
    n = len(chain)
    k = int(round(n * fraction))
    idx = range(n - k, n) if from_end else range(k)
    for i in sorted(idx, reverse=True):
        del chain[i]
    return st


def compositional_models(work: Path) -> list[Path]:
    st = _structure("1a28.pdb.gz", work)
    models = [st, _remove_residues(st, "B", 1 / 3, from_end=False), _remove_residues(st, "A", 1 / 3, from_end=True)]
    paths = []
    for i, m in enumerate(models):
        p = work / f"state{i + 1}.pdb"
        m.write_pdb(str(p))
        paths.append(p)
    return paths


def tilt4_models(work: Path) -> list[Path]:
    paths = compositional_models(work)
    st = _structure("1a28.pdb.gz", work)
    both = _remove_residues(_remove_residues(st, "B", 1 / 3, from_end=False), "A", 1 / 3, from_end=True)
    p = work / "state4.pdb"
    both.write_pdb(str(p))
    return paths + [p]


def hinge_models(work: Path, n: int) -> list[Path]:
    import numpy as np

    closed, opened = _structure("adk_closed.pdb", work), _structure("adk_open.pdb", work)
    a = [at for res in closed[0][0] for at in res]
    b = [at for res in opened[0][0] for at in res]
    if [x.name for x in a] != [x.name for x in b]:
        raise SystemExit("adk_closed.pdb and adk_open.pdb do not have the same atoms")
    xa = np.array([x.pos.tolist() for x in a])
    xb = np.array([x.pos.tolist() for x in b])
    paths = []
    for i, t in enumerate(np.linspace(0.0, 1.0, n)):
        st = closed.clone()
        atoms = [at for res in st[0][0] for at in res]
        for at, xyz in zip(atoms, (1 - t) * xa + t * xb, strict=True):
            at.pos = type(at.pos)(*xyz)
        p = work / f"hinge_{i:02d}.pdb"
        st.write_pdb(str(p))
        paths.append(p)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["compositional", "hinge", "tilt4"])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("-N", type=int, default=10000)
    ap.add_argument("-D", type=int, default=32)
    ap.add_argument("--apix", type=float, default=5.0)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-hinge", type=int, default=20)
    a = ap.parse_args(argv)
    if (a.out / "labels.npz").is_file():
        print(f"{a.out}: exists")
        return 0
    work = a.out.parent / (a.out.name + "_models")
    work.mkdir(parents=True, exist_ok=True)
    if a.kind == "tilt4":
        maps = work / "maps"
        if not (maps / "labels.npz").is_file():
            cmd = [str(CRYOSCAPE), "simulate", "--pdb", *map(str, tilt4_models(work)), "-N", "4", "-D", str(a.D),
                   "--apix", str(a.apix), "--snr", "inf", "-o", str(maps), "--overwrite"]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        cmd = [str(CRYOSCAPE), "simulate-tilt", "--volumes", *map(str, sorted((maps / "gt").glob("state_*.mrc"))),
               "-N", str(a.N), "--snr", str(a.snr), "--seed", str(a.seed), "-o", str(a.out)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        return 0
    models = compositional_models(work) if a.kind == "compositional" else hinge_models(work, a.n_hinge)
    cmd = [str(CRYOSCAPE), "simulate", "--pdb", *map(str, models), "-N", str(a.N), "-D", str(a.D), "--apix",
           str(a.apix), "--snr", str(a.snr), "--seed", str(a.seed), "--pkl", "-o", str(a.out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
