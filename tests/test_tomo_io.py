"""Tilt-series readers and writers: Warp/M image series and RELION 5 optimisation sets, written by hand with the
documented column layout and read back; round trips; subsets in the source format."""

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoscape.errors import InputError
from cryoscape.imaging.rotations import euler_relion_to_matrix
from cryoscape.io.mrc import write_mrc
from cryoscape.io.tilt_series import (
    TomogramGeometry,
    detect_format,
    load_tilt_series,
    write_image_series_star,
    write_optimisation_set,
    write_tilt_subset,
)
from cryoscape.metadata import CTFParams

D, APIX = 8, 5.0


def _images(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, D, D)).astype(np.float32)


@pytest.fixture
def warp_star(tmp_path):
    """Two particles whose rows are interleaved (3 + 2 tilts), Warp's columns, an extra unknown column."""
    images = _images(5)
    write_mrc(tmp_path / "ts.mrcs", images, APIX)
    rows = pd.DataFrame({
        "rlnMagnification": 10000.0, "rlnDetectorPixelSize": APIX,
        "rlnImageName": [f"{i + 1}@ts.mrcs" for i in range(5)],
        "rlnGroupName": ["001_000004", "002_000007", "001_000004", "002_000007", "001_000004"],
        "rlnAngleRot": [10.0, 20, 30, 40, 50], "rlnAngleTilt": [5.0, 15, 25, 35, 45], "rlnAnglePsi": [1.0, 2, 3, 4, 5],
        "rlnOriginX": [0.5, 0, 0, -1, 0], "rlnOriginY": [0.0, 0, 1, 0, 0],
        "rlnDefocusU": [20000.0, 21000, 22000, 23000, 24000], "rlnDefocusV": [19000.0, 20000, 21000, 22000, 23000],
        "rlnDefocusAngle": 30.0, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
        "rlnPhaseShift": 0.0,
        "rlnCtfBfactor": [-4.0 * 1.5, -4.0 * 1.5, -4.0 * 4.5, -4.0 * 4.5, -4.0 * 7.5],
        "rlnCtfScalefactor": np.cos(np.radians([0.0, 0.0, 3.0, 3.0, 6.0])),
        "rlnMyNote": ["a", "b", "c", "d", "e"],
    })
    starfile.write({"": rows}, tmp_path / "warp.star")
    return tmp_path / "warp.star", images, rows


def test_warp_image_series_reader(warp_star):
    path, images, rows = warp_star
    assert detect_format(path) == "imageseries"
    t = load_tilt_series(path)
    assert len(t) == 2 and t.n_images == 5 and t.D == D and t.pixel_size_angstrom == APIX
    np.testing.assert_array_equal(t.offsets, [0, 3, 5])
    assert list(t.particle_names) == ["001_000004", "002_000007"]
    assert list(t.tomogram_names) == ["001", "002"]  # tomogramID_particleID
    order = [0, 2, 4, 1, 3]  # particle by particle, file order within a particle
    np.testing.assert_array_equal(t.image_rows, order)
    np.testing.assert_array_equal(t.images[np.arange(5)], images[order])
    np.testing.assert_allclose(t.exposure_e_per_angstrom2, [1.5, 4.5, 7.5, 1.5, 4.5])  # -B / 4
    np.testing.assert_allclose(t.tilt_deg, [0, 3, 6, 0, 3], atol=2e-3)  # degrees, from cos(tilt) (6 decimals)
    angles = rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[order]
    np.testing.assert_allclose(t.rotations, euler_relion_to_matrix(angles), atol=1e-12)
    np.testing.assert_allclose(t.shifts_angstrom[0], [0.5 * APIX, 0.0])
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom, rows["rlnDefocusU"].to_numpy()[order])
    # Warp's B-factor and scale encode exposure and tilt: they are not applied to the CTF
    assert np.all(t.ctf.bfactor_angstrom2 == 0) and np.all(t.ctf.scale == 1)


def test_image_series_subset_keeps_every_column(warp_star, tmp_path):
    path, _, rows = warp_star
    t = load_tilt_series(path)
    out = write_tilt_subset(t, [1], tmp_path / "sub")
    back = starfile.read(out, always_dict=True)
    table = next(iter(back.values()))
    assert list(table.columns) == list(rows.columns)
    assert list(table["rlnMyNote"]) == ["b", "d"]
    sub = load_tilt_series(out, datadir=tmp_path)
    assert len(sub) == 1 and sub.n_images == 2 and list(sub.particle_names) == ["002_000007"]


def test_image_series_errors(tmp_path, warp_star):
    path, _, rows = warp_star
    starfile.write({"": rows.drop(columns=["rlnGroupName"])}, tmp_path / "bad.star")
    with pytest.raises(InputError, match="rlnGroupName"):
        load_tilt_series(tmp_path / "bad.star")
    bad = rows.copy()
    bad["rlnCtfBfactor"] = 8.0
    starfile.write({"": bad}, tmp_path / "bad2.star")
    with pytest.raises(InputError, match="rlnCtfBfactor"):
        load_tilt_series(tmp_path / "bad2.star")
    with pytest.raises(InputError):
        load_tilt_series(tmp_path / "bad.star", fmt="nonsense")


def test_image_series_round_trip(tmp_path):
    m = 6
    rng = np.random.default_rng(3)
    write_mrc(tmp_path / "s.mrcs", _images(m), APIX)
    rot = euler_relion_to_matrix(rng.uniform(0, 180, (m, 3)))
    shifts = rng.normal(size=(m, 2))
    ctf = CTFParams.create(rng.uniform(1e4, 2e4, m), rng.uniform(1e4, 2e4, m), rng.uniform(0, 90, m), 300, 2.7, 0.1)
    exposure = np.array([1.5, 4.5, 7.5, 1.5, 4.5, 7.5])
    tilt = np.array([0.0, 3.0, 6.0, 0.0, 3.0, 6.0])
    write_image_series_star(tmp_path / "r.star", "s.mrcs", APIX, D, rot, shifts, ctf, exposure, tilt,
                            ["A_1"] * 3 + ["A_2"] * 3, ["A"] * 6)
    t = load_tilt_series(tmp_path / "r.star")
    np.testing.assert_allclose(t.rotations, rot, atol=1e-5)
    np.testing.assert_allclose(t.shifts_angstrom, shifts, atol=1e-5)
    np.testing.assert_allclose(t.ctf.to_array(), ctf.to_array(), atol=1e-2)
    np.testing.assert_allclose(t.exposure_e_per_angstrom2, exposure, atol=1e-5)
    np.testing.assert_allclose(t.tilt_deg, tilt, atol=1e-3)


def _proj(R, t=(0.0, 0.0, 0.0)):
    P = np.eye(4)
    P[:3, :3], P[:3, 3] = R, t
    return ["[" + ",".join(f"{v:.10f}" for v in row) + "]" for row in P]


@pytest.fixture
def relion_set(tmp_path):
    """One tomogram with 3 tilts (axis y: 0, +20, -20 deg), two particles; RELION 5 columns written by hand."""
    tilts = np.array([0.0, 20.0, -20.0])
    R = euler_relion_to_matrix(np.stack([np.zeros(3), tilts, np.zeros(3)], 1))
    tomo_rows = [_proj(R[f], (50.0, 60.0, 0.0)) for f in range(3)]
    per_tilt = pd.DataFrame({
        "rlnTomoProjX": [r[0] for r in tomo_rows], "rlnTomoProjY": [r[1] for r in tomo_rows],
        "rlnTomoProjZ": [r[2] for r in tomo_rows], "rlnTomoProjW": [r[3] for r in tomo_rows],
        "rlnDefocusU": [20000.0, 21000, 22000], "rlnDefocusV": [19000.0, 20000, 21000],
        "rlnDefocusAngle": [10.0, 10, 10], "rlnCtfScalefactor": np.cos(np.radians(tilts)),
        "rlnMicrographPreExposure": [0.0, 3.0, 6.0]})
    glob = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                         "rlnAmplitudeContrast": [0.07], "rlnTomoHand": [-1.0], "rlnTomoTiltSeriesPixelSize": [2.5],
                         "rlnTomoSizeX": [400], "rlnTomoSizeY": [400], "rlnTomoSizeZ": [100],
                         "rlnTomoFrameCount": [3], "rlnTomoImportFractionalDose": [3.0]})
    starfile.write({"global": glob, "TS_01": per_tilt}, tmp_path / "tomograms.star")
    angles = np.array([[30.0, 40.0, 50.0], [100.0, 80.0, -20.0]])
    parts = pd.DataFrame({
        "rlnTomoName": ["TS_01", "TS_01"], "rlnTomoParticleName": ["TS_01/1", "TS_01/2"],
        "rlnCenteredCoordinateXAngst": [100.0, -50.0], "rlnCenteredCoordinateYAngst": [20.0, 0.0],
        "rlnCenteredCoordinateZAngst": [200.0, -300.0],
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": [5.0, 0.0], "rlnOriginYAngst": [0.0, -5.0], "rlnOriginZAngst": [10.0, 0.0],
        "rlnImageName": ["stacks/p1.mrcs", "stacks/p2.mrcs"], "rlnOpticsGroup": [1, 1],
        "rlnTomoVisibleFrames": ["[1,0,1]", "[1,1,1]"], "rlnComment": ["x", "y"]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnImagePixelSize": [APIX],
                           "rlnTomoTiltSeriesPixelSize": [2.5], "rlnImageSize": [D], "rlnImageDimensionality": [2],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.07],
                           "rlnCtfDataAreCtfPremultiplied": [0]})
    starfile.write({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": parts},
                   tmp_path / "particles.star")
    starfile.write({"optimisation_set": {"rlnTomoParticlesFile": "particles.star",
                                         "rlnTomoTomogramsFile": "tomograms.star"}},
                   tmp_path / "run_optimisation_set.star")
    p1 = _images(2, seed=1)  # particle 1: stack of its two visible frames only
    p2 = _images(3, seed=2)  # particle 2: every frame
    write_mrc(tmp_path / "stacks" / "p1.mrcs", p1, APIX, is_stack=True)
    write_mrc(tmp_path / "stacks" / "p2.mrcs", p2, APIX, is_stack=True)
    return tmp_path / "run_optimisation_set.star", R, angles, p1, p2


def test_optimisation_set_reader(relion_set):
    path, R, angles, p1, p2 = relion_set
    assert detect_format(path) == "optimisation_set"
    t = load_tilt_series(path)
    assert len(t) == 2 and t.n_images == 5 and t.pixel_size_angstrom == APIX
    np.testing.assert_array_equal(t.offsets, [0, 2, 5])
    np.testing.assert_array_equal(t.images[np.arange(5)], np.concatenate([p1, p2]))
    frames = [0, 2, 0, 1, 2]  # visible frames of each particle
    A = euler_relion_to_matrix(angles)
    expect_rot = np.stack([R[f] @ A[p] for p, f in zip([0, 0, 1, 1, 1], frames, strict=True)])
    np.testing.assert_allclose(t.rotations, expect_rot, atol=1e-9)
    origin = np.array([[5.0, 0, 10], [0, -5, 0]])
    centre = np.array([[100.0, 20, 200], [-50, 0, -300]]) - origin  # RELION: centre = coordinate - origin
    expect_shift = np.stack([(R[f] @ origin[p])[:2] for p, f in zip([0, 0, 1, 1, 1], frames, strict=True)])
    np.testing.assert_allclose(t.shifts_angstrom, expect_shift, atol=1e-9)
    df_tilt = np.array([20000.0, 21000, 22000])
    expect_df = [df_tilt[f] - (R[f] @ centre[p])[2] for p, f in zip([0, 0, 1, 1, 1], frames, strict=True)]  # hand = -1
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom, expect_df, atol=1e-6)
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom - t.ctf.defocus_v_angstrom, 1000.0, atol=1e-6)
    np.testing.assert_allclose(t.ctf.amplitude_contrast, 0.07)
    np.testing.assert_allclose(t.exposure_e_per_angstrom2, np.array([0.0, 6, 0, 3, 6])[:] + 1.5)  # pre + dose / 2
    np.testing.assert_allclose(t.tilt_deg, [0, 20, 0, 20, 20], atol=1e-6)  # arccos(R[2, 2]), unsigned
    np.testing.assert_allclose(t.coordinates_angstrom, centre)
    np.testing.assert_allclose(t.particle_rotations, A)


def test_optimisation_set_errors(relion_set, tmp_path):
    path, *_ = relion_set
    blocks = starfile.read(tmp_path / "particles.star", always_dict=True)
    blocks["particles"]["rlnTomoVisibleFrames"] = ["[1,1]", "[1,1,1]"]
    starfile.write(blocks, tmp_path / "particles.star")
    with pytest.raises(InputError, match="rlnTomoVisibleFrames"):
        load_tilt_series(path)
    blocks["general"] = {"rlnTomoSubTomosAre2DStacks": 0}
    starfile.write(blocks, tmp_path / "particles.star")
    with pytest.raises(InputError, match="2-D"):
        load_tilt_series(path)
    with pytest.raises(InputError, match="rlnTomoParticlesFile"):
        load_tilt_series(tmp_path / "tomograms.star", fmt="optimisation_set")


def test_optimisation_set_subset_and_round_trip(relion_set, tmp_path):
    path, *_ = relion_set
    t = load_tilt_series(path)
    out = write_tilt_subset(t, [1], tmp_path / "sel")
    assert out.name == "particles_optimisation_set.star"
    assert (tmp_path / "sel" / "tomograms.star").read_text() == (tmp_path / "tomograms.star").read_text()
    sel = starfile.read(tmp_path / "sel" / "particles.star", always_dict=True)
    assert list(sel["particles"]["rlnComment"]) == ["y"] and sel["general"]["rlnTomoSubTomosAre2DStacks"] == 1
    sub = load_tilt_series(out, datadir=tmp_path)
    full = t.subset([1])
    for name in ("rotations", "shifts_angstrom", "exposure_e_per_angstrom2", "tilt_deg"):
        np.testing.assert_allclose(getattr(sub, name), getattr(full, name))
    np.testing.assert_allclose(sub.ctf.to_array(), full.ctf.to_array())
    np.testing.assert_array_equal(sub.images[np.arange(3)], full.images[np.arange(3)])


def test_write_optimisation_set_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    F = 4
    tilts = np.array([0.0, 3.0, -3.0, -6.0])
    R = euler_relion_to_matrix(np.stack([np.zeros(F), tilts, np.zeros(F)], 1))
    geo = TomogramGeometry("TS_1", R, np.full(F, 2e4), np.full(F, 1.9e4), np.full(F, 5.0), np.arange(F) * 2.0, tilts,
                           2.0, (100, 100, 40), APIX, hand=-1.0)
    rot = euler_relion_to_matrix(rng.uniform(0, 180, (2, 3)))
    centres, origins = rng.normal(size=(2, 3)) * 50, rng.normal(size=(2, 3))
    visible = np.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool)
    for i in range(2):
        write_mrc(tmp_path / f"p{i}.mrcs", _images(F, seed=i), APIX, is_stack=True)
    path = write_optimisation_set(tmp_path, APIX, D, [geo], ["TS_1", "TS_1"], ["a", "b"], centres, rot, origins,
                                  ["p0.mrcs", "p1.mrcs"], visible)
    t = load_tilt_series(path)
    np.testing.assert_array_equal(t.tilt_counts, [3, 4])
    np.testing.assert_allclose(t.rotations[:3], R[[0, 1, 3]] @ rot[0], atol=1e-6)
    np.testing.assert_allclose(t.coordinates_angstrom, centres, atol=1e-4)
    np.testing.assert_allclose(t.tilt_deg, np.concatenate([tilts[[0, 1, 3]], tilts]), atol=1e-6)
    np.testing.assert_allclose(t.exposure_e_per_angstrom2[:3], [1.0, 3.0, 7.0])
    depth = (R[[0, 1, 3]] @ centres[0])[:, 2]
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom[:3], 2e4 - depth, atol=1e-3)
