"""Particles in their tomograms: where each cluster lies, who its nearest neighbours are, and ChimeraX scripts that
place markers or maps back into the tomograms.

Positions are particle centres in Angstrom measured from the tomogram's first voxel (the frame of a tomogram MRC
opened in ChimeraX with its voxel size and origin 0); poses ``A`` are RELION matrices mapping particle (map)
coordinates to tomogram coordinates: a map point ``p`` (Angstrom from the map's first voxel) lands at
``A (p - m) + c`` with ``m`` the map centre ``(D // 2) * voxel`` and ``c`` the particle centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoscape.errors import InputError

__all__ = ["Placements", "read_placements", "cluster_distribution", "plot_cluster_distribution",
           "nearest_neighbours", "neighbour_summary", "cluster_colors", "chimerax_script"]


@dataclass
class Placements:
    """Particle positions in their tomograms, in the particle order of the file they came from.

    ``tomograms`` ``(N,)`` str; ``coordinates_angstrom`` ``(N, 3)`` from the tomogram's first voxel;
    ``rotations`` ``(N, 3, 3)`` or None; ``names`` ``(N,)`` or None.
    """

    tomograms: np.ndarray
    coordinates_angstrom: np.ndarray
    rotations: np.ndarray | None = None
    names: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.tomograms))


def read_placements(path: str | Path, coordinate_pixel_size_angstrom: float | None = None) -> Placements:
    """Particle positions and poses from a STAR file, without reading any image.

    * RELION 5 / WarpTools optimisation set: ``rlnCenteredCoordinate*Angst`` (or ``rlnCoordinate*`` pixels) plus
      half the tomogram (``rlnTomoSize* x rlnTomoTiltSeriesPixelSize``), minus the rotated origin; poses
      ``A_subtomogram @ A_angles``. The unit of ``rlnCoordinate*`` is RELION's or WarpTools' (see
      :func:`cryoscape.io.tilt_series.particle_positions`), or ``coordinate_pixel_size_angstrom`` when given.
    * Volume-series STAR (one row per particle, e.g. ``particles_volumeseries.star`` of ``cryoscape simulate-tilt``
      or Warp's sub-tomogram STAR): ``rlnCoordinateX/Y/Z`` in pixels minus ``rlnOriginX/Y/ZAngst``, pose from
      ``rlnAngleRot/Tilt/Psi``.
    * Image-series STAR (one row per tilt image): the coordinates of each particle's first row; no poses.

    For the other STAR files the coordinate pixel size is ``coordinate_pixel_size_angstrom``, else
    ``rlnPixelSize``/``rlnImagePixelSize``/``rlnDetectorPixelSize`` of the file (WarpTools writes coordinates in
    pixels of the exported particles and that pixel size as ``rlnPixelSize``/``rlnImagePixelSize``).
    """
    from cryoscape.io import tilt_series as ts

    path = Path(path)
    if ts.detect_format(path) == "optimisation_set":
        return _placements_from_optimisation_set(path, coordinate_pixel_size_angstrom)
    blocks = ts.read_star_blocks(path)
    table = next((b for k, b in blocks.items() if k not in ("optics", "general") and len(b.columns) > 3), None)
    if table is None or not all(f"rlnCoordinate{a}" in table.columns for a in "XYZ"):
        raise InputError("no particle table with rlnCoordinateX/Y/Z", path,
                         "give the volume-series STAR or the optimisation set with --star")
    optics = blocks.get("optics")
    apix = coordinate_pixel_size_angstrom
    for name in ("rlnPixelSize", "rlnImagePixelSize", "rlnDetectorPixelSize"):
        for t in (table, optics):
            if apix is None and t is not None and name in t.columns:
                apix = float(ts.star_numbers(t, name, path)[0])
    if apix is None:
        raise InputError("no pixel size for the coordinates", path, "pass --coord-apix")
    tomo_col = next((c for c in ("rlnTomoName", "rlnMicrographName") if c in table.columns), None)
    id_col = next((c for c in ("rlnGroupName", "rlnTomoParticleName", "rlnGroupNumber") if c in table.columns), None)
    image_series = "rlnCtfBfactor" in table.columns and id_col is not None and table[id_col].duplicated().any()
    names: np.ndarray | None
    if image_series:
        order, offsets, names = ts.group_images(table[id_col].to_numpy())
        table = table.iloc[order[offsets[:-1]]].reset_index(drop=True)
    else:
        names = table[id_col].astype(str).to_numpy() if id_col else None
    if tomo_col is not None:
        tomograms = table[tomo_col].astype(str).to_numpy()
    elif id_col is not None:
        tomograms = np.array([str(n).rsplit("_", 1)[0] for n in table[id_col]], dtype=object)
    else:
        raise InputError("no tomogram column (rlnTomoName / rlnMicrographName)", path)
    coords = np.stack([ts.star_numbers(table, f"rlnCoordinate{a}", path) for a in "XYZ"], axis=1) * apix
    rotations = None
    if not image_series:
        origin = np.stack([ts.star_numbers(table, f"rlnOrigin{a}Angst", path, 0.0) for a in "XYZ"], axis=1)
        coords = coords - origin
        if all(f"rlnAngle{a}" in table.columns for a in ("Rot", "Tilt", "Psi")):
            rotations = ts.euler_columns(table, ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), path)
    return Placements(np.asarray(tomograms, dtype=object), coords, rotations,
                      None if names is None else np.asarray(names, dtype=object))


def _placements_from_optimisation_set(path: Path, apix_override: float | None) -> Placements:
    from cryoscape.io import optimisation_set as os_
    from cryoscape.io.tomo_geometry import particle_positions

    tables = os_.parse_optimisation_set(path)
    parts, ppath, tpath = tables.particles, tables.particles_path, tables.tomograms_path
    positions = particle_positions(parts, tables.optics, tables.tomograms, ppath, tpath,
                                   coordinate_pixel_size=apix_override)
    if np.isnan(positions.box_angstrom).any():
        raise InputError("the tomograms need rlnTomoSizeX/Y/Z to place particles from the tomogram's first voxel",
                         tpath)
    _, A, origin_tomo = os_.particle_frames(tables)
    coords = positions.from_first_voxel_angstrom - origin_tomo
    names = parts["rlnTomoName"].astype(str).to_numpy()
    pnames = parts["rlnTomoParticleName"].astype(str).to_numpy() if "rlnTomoParticleName" in parts.columns else None
    return Placements(np.asarray(names, dtype=object), coords, A, pnames)


def cluster_distribution(tomograms, labels) -> pd.DataFrame:
    """Particle counts per tomogram (rows, sorted) and cluster (columns, every cluster present)."""
    table = pd.crosstab(pd.Series(np.asarray(tomograms, dtype=str), name="tomogram"),
                        pd.Series(np.asarray(labels, dtype=np.int64), name="cluster"))
    return table.reindex(columns=np.arange(int(np.max(labels)) + 1), fill_value=0)


def plot_cluster_distribution(table: pd.DataFrame):
    """Stacked bars: the fraction of each tomogram's particles in each cluster (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    frac = table.div(table.sum(axis=1).clip(lower=1), axis=0)
    fig = Figure(figsize=(max(4.0, 0.35 * len(frac) + 2), 3.5))
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(len(frac))
    colors = cluster_colors(table.shape[1])
    for j, c in enumerate(frac.columns):
        ax.bar(np.arange(len(frac)), frac[c].to_numpy(), bottom=bottom, color=colors[j], label=str(c))
        bottom += frac[c].to_numpy()
    ax.set_xticks(np.arange(len(frac)), [str(t) for t in frac.index], rotation=90, fontsize=7)
    ax.set_ylabel("fraction of particles")
    ax.set_xlabel("tomogram")
    ax.legend(title="cluster", fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def nearest_neighbours(coordinates_angstrom: np.ndarray, tomograms, rotations: np.ndarray | None = None) -> dict:
    """Each particle's nearest other particle in the same tomogram.

    Returns a dict of ``index`` ``(N,)`` (-1 when alone in its tomogram), ``distance_angstrom`` ``(N,)`` (NaN when
    alone) and ``direction`` ``(N, 3)``: the unit vector to the neighbour in the particle's own frame
    (``A^T (x_nn - x) / |...|``) when ``rotations`` are given, else in the tomogram frame.
    """
    from scipy.spatial import cKDTree

    x = np.asarray(coordinates_angstrom, dtype=np.float64)
    tomograms = np.asarray(tomograms, dtype=str)
    n = len(x)
    index, dist = np.full(n, -1, np.int64), np.full(n, np.nan)
    for t in np.unique(tomograms):
        members = np.flatnonzero(tomograms == t)
        if members.size < 2:
            continue
        d, j = cKDTree(x[members]).query(x[members], k=2)
        index[members], dist[members] = members[j[:, 1]], d[:, 1]
    direction = np.full((n, 3), np.nan)
    ok = index >= 0
    v = x[index[ok]] - x[ok]
    if rotations is not None:
        v = np.einsum("nji,nj->ni", np.asarray(rotations)[ok], v)  # A^T v
    direction[ok] = v / np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
    return {"index": index, "distance_angstrom": dist, "direction": direction}


def neighbour_summary(nn: dict, labels) -> pd.DataFrame:
    """Per cluster: particles, median and mean nearest-neighbour distance, the fraction whose neighbour is in the
    same cluster, and the mean neighbour direction (unit vector) with its resultant length (1: always the same
    direction, ~0: no preferred direction).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows = []
    for c in range(int(labels.max()) + 1):
        sel = (labels == c) & (nn["index"] >= 0)
        d = nn["direction"][sel]
        mean = d.mean(axis=0) if sel.any() else np.full(3, np.nan)
        r = float(np.linalg.norm(mean)) if sel.any() else np.nan
        unit = mean / r if sel.any() and r > 0 else np.full(3, np.nan)
        rows.append({"cluster": c, "particles": int((labels == c).sum()), "with_neighbour": int(sel.sum()),
                     "median_distance_angstrom":
                         float(np.median(nn["distance_angstrom"][sel])) if sel.any() else np.nan,
                     "mean_distance_angstrom": float(np.mean(nn["distance_angstrom"][sel])) if sel.any() else np.nan,
                     "same_cluster_fraction": float(np.mean(labels[nn["index"][sel]] == c)) if sel.any() else np.nan,
                     "direction_x": unit[0], "direction_y": unit[1], "direction_z": unit[2], "resultant_length": r})
    return pd.DataFrame(rows)


def cluster_colors(k: int) -> np.ndarray:
    """``(k, 4)`` RGBA colours in [0, 1] (matplotlib's tab10/tab20, then a continuous map)."""
    from matplotlib import colormaps

    name = "tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"
    cmap = colormaps[name]
    return np.array([cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)])


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgba[:3])


def chimerax_script(tomogram: str, coordinates_angstrom: np.ndarray, labels: np.ndarray, colors: np.ndarray,
                    rotations: np.ndarray | None = None, volumes: dict | None = None, marker_radius: float = 50.0,
                    level: float | None = None, tomogram_map: str | None = None) -> str:
    """A ChimeraX ``.cxc`` script for one tomogram.

    Markers (default): one marker set per cluster (model ``#c+1``), each particle a marker of its cluster's colour.
    Volumes (``volumes`` = cluster -> ``(map path, box D, voxel size)``): one copy of its cluster's map per particle,
    placed with ``view matrix models`` so that the map centre sits on the particle centre with the particle's pose.
    ``tomogram_map`` (optional) is opened first, as model ``#1``.
    """
    lines = [f"# cryoscape: {len(labels)} particles of tomogram {tomogram}, coloured by cluster",
             "# coordinates in Angstrom from the tomogram's first voxel (open the tomogram with origin 0)"]
    if tomogram_map:
        lines.append(f"open {tomogram_map}\nrename #1 tomogram\nvolume #1 style image")
    if volumes is None:
        for c in np.unique(labels):
            sel = np.flatnonzero(labels == c)
            for i in sel.tolist():
                x, y, z = coordinates_angstrom[i]
                lines.append(f"marker #{100 + int(c)} position {x:.2f},{y:.2f},{z:.2f} color {_hex(colors[c])} "
                             f"radius {marker_radius:g}")
            lines.append(f"rename #{100 + int(c)} cluster_{int(c)}")
        return "\n".join(lines) + "\n"
    if rotations is None:
        raise InputError("placing maps needs particle poses; give --star with angles (volume series or "
                         "optimisation set), or use --mode markers")
    model = 1 + (1 if tomogram_map else 0)
    for i in range(len(labels)):
        c = int(labels[i])
        path, D, voxel = volumes[c]
        A = np.asarray(rotations[i], np.float64)
        t = coordinates_angstrom[i] - A @ np.full(3, (D // 2) * voxel)
        m = ",".join(f"{v:.6f}" for v in np.concatenate([A, t[:, None]], axis=1).ravel())
        lines += [f"open {path}", f"view matrix models #{model},{m}", f"color #{model} {_hex(colors[c])}"]
        if level is not None:
            lines.append(f"volume #{model} level {level:g} step 1")
        model += 1
    return "\n".join(lines) + "\n"
