"""A synthetic protein-like atomic model (packed alpha-helical bundles) written as a PDB file.

The simulator's presets are sums of smooth blobs with no power beyond about half of Nyquist, so a map FSC
"beyond 2/3 of Nyquist" cannot be tested on them. Real proteins have power out to atomic resolution: helices
packed ~10 A apart, the 5.4 A helical pitch, atoms 1.5 A apart. This module builds such an object without any
downloaded structure: several bundles of ideal alpha helices (3.6 residues per turn, 1.5 A rise, eight heavy
atoms per residue: N, CA, C, O on the backbone and a four-atom side chain pointing outwards), each bundle in its
own orientation so no direction is special. ``cryoscape simulate --pdb`` then renders it at Nyquist resolution
(Chimera molmap widths) like any deposited model.

    .venv/bin/python bench/pseudo_atomic.py -o model.pdb --radius 60
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

RISE = 1.5  # A per residue along the helix axis
TWIST = math.radians(100.0)  # per residue
HELIX_SPACING = 10.0  # A between neighbouring helix axes in a bundle
# (radius from the axis A, angle offset rad, axial offset A, element) of the eight heavy atoms of a residue
RESIDUE_ATOMS = [
    (1.6, -0.45, -0.5, "N"), (2.3, 0.0, 0.0, "C"), (1.7, 0.5, 0.6, "C"), (2.0, 0.75, 1.6, "O"),  # backbone
    (3.3, 0.1, -0.3, "C"), (4.5, 0.2, -0.1, "C"), (5.6, 0.1, 0.3, "C"), (6.5, 0.3, 0.1, "N"),  # side chain
]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])


def helix_atoms(length_angstrom: float, phase: float, jitter: float, rng: np.random.Generator):
    """Atoms ``(n, 3)`` and elements of one ideal helix along +z, centred at the origin."""
    n_res = max(1, int(length_angstrom / RISE))
    xyz, elements = [], []
    for i in range(n_res):
        theta, z = phase + i * TWIST, (i - (n_res - 1) / 2) * RISE
        for r, dtheta, dz, el in RESIDUE_ATOMS:
            xyz.append((r * math.cos(theta + dtheta), r * math.sin(theta + dtheta), z + dz))
            elements.append(el)
    xyz = np.asarray(xyz) + rng.normal(scale=jitter, size=(len(xyz), 3))
    return xyz, elements


def bundle_atoms(radius: float, rng: np.random.Generator, jitter: float = 0.3):
    """One globular bundle of parallel/antiparallel helices on a hexagonal lattice inside a sphere of ``radius``."""
    xyz, elements = [], []
    n = int(radius // HELIX_SPACING) + 1
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            x, y = HELIX_SPACING * (i + 0.5 * j), HELIX_SPACING * j * math.sqrt(3) / 2
            rho = math.hypot(x, y)
            if rho > radius - 4.0:
                continue
            half = math.sqrt(radius**2 - rho**2) - 3.0  # the helix fits in the sphere
            a, e = helix_atoms(2 * half, rng.uniform(0, 2 * math.pi), jitter, rng)
            a[:, 2] *= (-1) ** (i + j)  # alternate directions, as in real bundles
            xyz.append(a + np.array([x, y, 0.0]))
            elements += e
    return np.concatenate(xyz), elements


def helical_protein(radius: float = 60.0, seed: int = 0):
    """Atoms of a protein-like object of overall ``radius`` (A): four bundles in random orientations.

    Returns ``(xyz (n, 3) A centred at the origin, elements list)``.
    """
    rng = np.random.default_rng(seed)
    sub = 0.5 * radius
    centres = sub * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3) * 0.95
    xyz, elements = [], []
    for c in centres:
        a, e = bundle_atoms(sub * 0.98, rng)
        xyz.append(a @ _rotation(rng).T + c)
        elements += e
    xyz = np.concatenate(xyz)
    return xyz - xyz.mean(0), elements


def write_pdb(path: Path, xyz: np.ndarray, elements) -> Path:
    """Write atoms as PDB ATOM records (one residue per eight atoms, chains of 9999 residues)."""
    lines = []
    for k, ((x, y, z), el) in enumerate(zip(xyz, elements, strict=True)):
        res, chain = k // len(RESIDUE_ATOMS), "ABCDEFGHIJ"[(k // len(RESIDUE_ATOMS)) // 9999 % 10]
        name = {"N": " N  ", "C": " C  ", "O": " O  "}[el]
        lines.append(f"ATOM  {(k + 1) % 100000:5d} {name} ALA {chain}{res % 9999 + 1:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {el:>2s}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", required=True, help="PDB file to write")
    p.add_argument("--radius", type=float, default=60.0, help="overall radius in Angstrom (default 60)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    xyz, el = helical_protein(args.radius, args.seed)
    write_pdb(Path(args.output), xyz, el)
    print(f"{args.output}: {len(xyz)} atoms, max radius {np.linalg.norm(xyz, axis=1).max():.1f} A")
    return 0


if __name__ == "__main__":
    sys.exit(main())
