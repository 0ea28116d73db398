"""Where particles sit in their tomograms and the depth-dependent defocus of each tilt image, for optimisation sets
written the way WarpTools (before and after its 2026-07 export fix) and RELION 5 write them.

A simulated tomogram with known particle positions is written in each layout; the positions and per-image defocus
cryoscape reads are compared with values computed here independently: Warp's own defocus model
(``TiltSeries.GetPositionInAllTilts``: tilt defocus + image-space z, with angle and z flipped for inverted series) for
WarpTools files, RELION's ``Tomogram::getCtf`` (``+ rlnTomoHand * slope * pixel * ((P x)_z - (P centre)_z)``) for
RELION files. Conventions: docs/tomography.md ("Particle positions and depth-dependent defocus")."""

import logging
import re

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoscape.analysis.tomogram import chimerax_script, cluster_colors, read_placements
from cryoscape.errors import InputError
from cryoscape.io.mrc import write_mrc
from cryoscape.io.tilt_series import geometry_convention, load_tilt_series, read_optimisation_set

D = 8
TS_PIXEL = 1.5  # unbinned tilt-series pixel (A)
BINNING = 4  # exported particles: 6 A pixels
BOX = np.array([2400.0, 3000.0, 900.0])  # tomogram (A)
TILTS = np.array([0.0, 15.0, -15.0, 30.0, -30.0])
AXIS = 84.0  # tilt-axis angle (deg)
DF = np.array([21000.0, 22000.0, 20500.0, 23000.0, 21500.0])  # per-tilt defocus U at the tomogram centre
ASTIG = 600.0


def warp_tilt_matrix(tilt_deg: float, axis_deg: float) -> np.ndarray:
    """Warp's ``Matrix3.Euler(0, tilt, -axis)`` written out (tomogram -> image frame)."""
    b, g = np.radians(tilt_deg), np.radians(-axis_deg)
    cb, sb, cg, sg = np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array([[cg * cb, sg, -cg * sb], [-sg * cb, cg, sg * sb], [sb, 0.0, cb]])


def _vec(v) -> str:
    return "[" + ",".join(f"{x:.9f}" for x in v) + "]"


@pytest.fixture
def scene():
    """Six particles at known positions (A from the tomogram's first voxel), inside the tomogram."""
    rng = np.random.default_rng(3)
    pos = rng.uniform(0.1, 0.9, (6, 3)) * BOX
    angles = rng.uniform(-180, 180, (6, 3))
    R = np.stack([warp_tilt_matrix(t, AXIS) for t in TILTS])
    return pos, angles, R


def _stacks(tmp_path, n):
    names = []
    for i in range(n):
        name = f"stacks/p{i + 1}.mrcs"
        write_mrc(tmp_path / name, np.zeros((len(TILTS), D, D), np.float32), BINNING * TS_PIXEL, is_stack=True)
        names.append(name)
    return names


def _optimisation_set(tmp_path, optics, parts, glob, tilt_tables):
    starfile.write({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": parts},
                   tmp_path / "particles.star")
    starfile.write({"global": glob, **tilt_tables}, tmp_path / "tomograms.star")
    starfile.write({"": {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}},
                   tmp_path / "opt_optimisation_set.star")
    return tmp_path / "opt_optimisation_set.star"


def write_warptools(tmp_path, pos, angles, R, fixed: bool, hand: float = -1.0):
    """An optimisation set as WarpTools ts_export_particles --2d writes it.

    ``fixed=False``: exports before warpem/warp commit 7ad2dcc (tilt-series pixel, binning, tomogram size in unbinned
    pixels); ``fixed=True``: after it (particle pixel, binning 1, tomogram size in particle pixels). Either way
    rlnCoordinateX/Y/Z are position / particle pixel and the projection matrices are bare rotations.
    """
    particle_px = TS_PIXEL * BINNING
    ts_px, binning = (particle_px, 1.0) if fixed else (TS_PIXEL, float(BINNING))
    size = np.round(BOX / ts_px).astype(int)
    n, name = len(pos), "TS_1.tomostar"
    coords = np.round(pos / particle_px, 3)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnSphericalAberration": [2.7], "rlnVoltage": [300.0],
                           "rlnTomoTiltSeriesPixelSize": [ts_px], "rlnCtfDataAreCtfPremultiplied": [0],
                           "rlnImageDimensionality": [2], "rlnTomoSubtomogramBinning": [binning],
                           "rlnImagePixelSize": [particle_px], "rlnImageSize": [D], "rlnAmplitudeContrast": [0.07]})
    parts = pd.DataFrame({"rlnTomoName": [name] * n, "rlnTomoParticleId": np.arange(1, n + 1),
                          "rlnCoordinateX": coords[:, 0], "rlnCoordinateY": coords[:, 1],
                          "rlnCoordinateZ": coords[:, 2], "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1],
                          "rlnAnglePsi": angles[:, 2], "rlnTomoParticleName": [f"TS_1/{i + 1}" for i in range(n)],
                          "rlnOpticsGroup": [1] * n, "rlnImageName": _stacks(tmp_path, n),
                          "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnOriginZAngst": 0.0,
                          "rlnTomoVisibleFrames": ["[1,1,1,1,1]"] * n})
    glob = pd.DataFrame({"rlnTomoName": [name], "rlnTomoTiltSeriesName": ["dummy_tiltseries.mrc"],
                         "rlnTomoFrameCount": [len(TILTS)], "rlnTomoSizeX": [size[0]], "rlnTomoSizeY": [size[1]],
                         "rlnTomoSizeZ": [size[2]], "rlnTomoHand": [hand], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnTomoTiltSeriesPixelSize": [ts_px], "rlnVoltage": [300.0],
                         "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.07],
                         "rlnTomoImportFractionalDose": [3.0]})
    table = pd.DataFrame({"rlnTomoProjX": [_vec([*r[0], 0]) for r in R], "rlnTomoProjY": [_vec([*r[1], 0]) for r in R],
                          "rlnTomoProjZ": [_vec([*r[2], 0]) for r in R], "rlnTomoProjW": ["[0,0,0,1]"] * len(R),
                          "rlnDefocusU": DF, "rlnDefocusV": DF - ASTIG, "rlnDefocusAngle": 30.0,
                          "rlnCtfScalefactor": np.cos(np.radians(TILTS)),
                          "rlnMicrographPreExposure": 3.0 * np.arange(len(R))})
    return _optimisation_set(tmp_path, optics, parts, glob, {name: table})


def write_relion(tmp_path, pos, angles, R, origins, centred: bool, hand=-1.0, slope=None):
    """An optimisation set as RELION writes it: tomogram named after its tilt series, projection matrices with their
    translation (tomogram pixels -> image pixels), particles binned 4x. ``centred``: RELION 5
    ``rlnCenteredCoordinate*Angst``; else RELION 4 ``rlnCoordinate*`` in unbinned tilt-series pixels."""
    size = np.round(BOX / TS_PIXEL).astype(int)
    n, name = len(pos), "TS_01"
    coord = pos + origins  # RELION: particle centre = coordinate - origin (subtomogram angles 0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["optics1"], "rlnSphericalAberration": [2.7],
                           "rlnVoltage": [300.0], "rlnAmplitudeContrast": [0.07],
                           "rlnTomoTiltSeriesPixelSize": [TS_PIXEL], "rlnTomoSubtomogramBinning": [float(BINNING)],
                           "rlnImagePixelSize": [TS_PIXEL * BINNING], "rlnImageSize": [D],
                           "rlnImageDimensionality": [2],
                           "rlnCtfDataAreCtfPremultiplied": [0]})
    parts = {"rlnTomoName": [name] * n, "rlnTomoParticleName": [f"{name}/{i + 1}" for i in range(n)]}
    if centred:
        parts.update({f"rlnCenteredCoordinate{a}Angst": coord[:, j] - BOX[j] / 2 for j, a in enumerate("XYZ")})
    else:
        parts.update({f"rlnCoordinate{a}": coord[:, j] / TS_PIXEL for j, a in enumerate("XYZ")})
    parts.update({"rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
                  **{f"rlnOrigin{a}Angst": origins[:, j] for j, a in enumerate("XYZ")},
                  "rlnImageName": _stacks(tmp_path, n), "rlnOpticsGroup": [1] * n,
                  "rlnTomoVisibleFrames": ["[1,1,1,1,1]"] * n})
    glob = {"rlnTomoName": [name], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.07], "rlnTomoHand": [hand], "rlnTomoTiltSeriesPixelSize": [TS_PIXEL],
            "rlnTomoSizeX": [size[0]], "rlnTomoSizeY": [size[1]], "rlnTomoSizeZ": [size[2]],
            "rlnTomoFrameCount": [len(TILTS)], "rlnTomoImportFractionalDose": [3.0]}
    if slope is not None:
        glob["rlnTomoDefocusSlope"] = [slope]
    image_centre = np.array([2000.0, 1800.0, 0.0])  # pixels
    P = np.zeros((len(R), 4, 4))
    P[:, :3, :3], P[:, 3, 3] = R, 1.0
    P[:, :3, 3] = image_centre - R @ (size / 2)
    table = pd.DataFrame({f"rlnTomoProj{a}": [_vec(p[j]) for p in P] for j, a in enumerate("XYZW")})
    table = table.assign(rlnDefocusU=DF, rlnDefocusV=DF - ASTIG, rlnDefocusAngle=30.0,
                         rlnMicrographPreExposure=3.0 * np.arange(len(R)))
    return _optimisation_set(tmp_path, optics, pd.DataFrame(parts), pd.DataFrame(glob), {name: table}), P, size


def warp_defocus(pos, inverted: bool) -> np.ndarray:
    """``(N, F)`` defocus U by Warp's model: tilt defocus + 1e-4 um/A x image-space z of the centred position, the
    tilt angle and z flipped when ``AreAnglesInverted``."""
    out = np.zeros((len(pos), len(TILTS)))
    for p, x in enumerate(pos):
        c = x - BOX / 2
        for f, t in enumerate(TILTS):
            z = (warp_tilt_matrix(-t, AXIS) @ (c * [1, 1, -1]))[2] if inverted else (warp_tilt_matrix(t, AXIS) @ c)[2]
            out[p, f] = DF[f] + z
    return out


@pytest.mark.parametrize("fixed", [False, True], ids=["warptools-2024", "warptools-2026"])
def test_warptools_positions_and_defocus(tmp_path, scene, fixed):
    pos, angles, R = scene
    path = write_warptools(tmp_path, pos, angles, R, fixed)
    t = load_tilt_series(path)
    assert t.pixel_size_angstrom == TS_PIXEL * BINNING
    np.testing.assert_allclose(t.coordinates_angstrom, pos - BOX / 2, atol=0.01)  # relative to the tomogram centre
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom, warp_defocus(pos, inverted=False).ravel(), atol=0.01)
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom - t.ctf.defocus_v_angstrom, ASTIG, atol=1e-6)
    placed = read_placements(path)
    np.testing.assert_allclose(placed.coordinates_angstrom, pos, atol=0.01)
    assert np.all((placed.coordinates_angstrom > 0) & (placed.coordinates_angstrom < BOX))


def test_warptools_inverted_series(tmp_path, scene):
    """WarpTools since 7ad2dcc writes rlnTomoHand +1 for a series with inverted defocus handedness."""
    pos, angles, R = scene
    t = load_tilt_series(write_warptools(tmp_path, pos, angles, R, fixed=True, hand=1.0))
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom, warp_defocus(pos, inverted=True).ravel(), atol=0.01)


def test_warptools_2024_read_relions_way_crowds_the_corner(tmp_path, scene, caplog):
    """Why WarpTools files get their own rule: RELION's (coordinates in rlnTomoTiltSeriesPixelSize) puts the
    particles of a pre-fix export within 1/binning of the tomogram's first corner. A coordinate pixel size that puts
    particles outside the tomogram is reported."""
    pos, angles, R = scene
    path = write_warptools(tmp_path, pos, angles, R, fixed=False)
    t = read_optimisation_set(path, geometry="relion")
    frac = (t.coordinates_angstrom + BOX / 2) / BOX
    np.testing.assert_allclose(frac, pos / BOX / BINNING, atol=1e-5)
    assert frac.max() < 1.0 / BINNING
    with caplog.at_level(logging.WARNING):
        placed = read_placements(path, coordinate_pixel_size_angstrom=4 * TS_PIXEL * BINNING)
    assert "outside their tomograms" in caplog.text and "particles.star" in caplog.text
    np.testing.assert_allclose(placed.coordinates_angstrom, np.round(pos / 6.0, 3) * 24.0, atol=1e-6)


@pytest.mark.parametrize("centred", [True, False], ids=["relion5-centred-angstrom", "relion4-pixels"])
def test_relion_positions_and_defocus(tmp_path, scene, centred):
    pos, angles, R = scene
    origins = np.random.default_rng(4).normal(size=(len(pos), 3)) * 8
    slope = 0.8
    path, P, size = write_relion(tmp_path, pos, angles, R, origins, centred, hand=-1.0, slope=slope)
    t = load_tilt_series(path)
    np.testing.assert_allclose(t.coordinates_angstrom, pos - BOX / 2, atol=1e-6)
    # RELION Tomogram::getCtf: dz = hand * pixel * slope * ((P x)_z - (P centre)_z), x and centre in pixels
    x_px = np.concatenate([pos / TS_PIXEL, np.ones((len(pos), 1))], 1)
    c_px = np.concatenate([size / 2, [1.0]])
    dz = -1.0 * TS_PIXEL * slope * (np.einsum("fj,nj->nf", P[:, 2], x_px) - P[:, 2] @ c_px)
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom, (DF + dz).ravel(), atol=1e-3)
    placed = read_placements(path)
    np.testing.assert_allclose(placed.coordinates_angstrom, pos, atol=1e-6)


def test_chimerax_markers_at_known_positions(tmp_path, scene):
    pos, angles, R = scene
    placed = read_placements(write_warptools(tmp_path, pos, angles, R, fixed=False))
    labels = np.arange(len(pos)) % 2
    text = chimerax_script("TS_1.tomostar", placed.coordinates_angstrom, labels, cluster_colors(2))
    markers = np.array([[float(v) for v in m] for m in re.findall(r"position ([\d.-]+),([\d.-]+),([\d.-]+)", text)])
    order = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)])
    np.testing.assert_allclose(markers, pos[order], atol=0.02)


def test_geometry_convention_detection():
    assert geometry_convention(["Unt_083.tomostar", "Unt_050.tomostar"]) == "warptools"
    assert geometry_convention(["TS_01", "Unt_050.tomostar"]) == "relion"
    assert geometry_convention(["Unt_083.tomostar"], "relion") == "relion"
    with pytest.raises(InputError, match="geometry convention"):
        geometry_convention(["TS_01"], "imod")


@pytest.mark.slow
def test_warptools_set_end_to_end(tmp_path, scene):
    """train reads a WarpTools-shaped set; chimerax-placement puts its markers at the known positions."""
    from cryoscape.cli.main import main

    pos, angles, R = scene
    path = write_warptools(tmp_path, pos, angles, R, fixed=False)
    rng = np.random.default_rng(0)
    for i in range(len(pos)):  # noise stacks: the geometry, not the images, is under test
        write_mrc(tmp_path / f"stacks/p{i + 1}.mrcs", rng.normal(size=(len(TILTS), D, D)).astype(np.float32),
                  TS_PIXEL * BINNING, is_stack=True)
    run = tmp_path / "run"
    assert main(["train", str(path), "-o", str(run), "-n", "1", "--model", "tomodrgn", "--zdim", "2", "--enc-dim", "8",
                 "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "--tilt-embed-dim", "4", "-b", "2",
                 "--no-progress"]) == 0
    labels = np.arange(len(pos)) % 2
    np.save(tmp_path / "labels.npy", labels)
    assert main(["chimerax-placement", str(run), "--labels", str(tmp_path / "labels.npy"), "-o",
                 str(tmp_path / "place")]) == 0
    text = (tmp_path / "place" / "TS_1.cxc").read_text()
    markers = np.array([[float(v) for v in m] for m in re.findall(r"position ([\d.-]+),([\d.-]+),([\d.-]+)", text)])
    order = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)])
    np.testing.assert_allclose(markers, pos[order], atol=0.02)
