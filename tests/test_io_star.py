"""RELION STAR reading/writing: 3.0 and 3.1 tables, optics groups, poses/CTF values, subsets, bad input."""

import numpy as np
import pytest
import starfile

from cryoscape.errors import InputError
from cryoscape.io.mrc import write_mrc
from cryoscape.io.star import format_image_names, read_star_particles, write_star, write_star_subset
from cryoscape.metadata import CTFParams, Poses


def relion_matrix(rot, tilt, psi):
    """RELION's Euler_angles2matrix written out (docs/conventions.md), degrees."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array([[cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
                     [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
                     [sb * ca, sb * sa, cb]])


STAR31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
opticsGroup1 1 0.75 300.0 2.7 0.1 {ps1} 16 2
opticsGroup2 2 0.75 200.0 2.0 0.07 {ps2} 16 2

# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnPhaseShift #9
_rlnAngleRot #10
_rlnAngleTilt #11
_rlnAnglePsi #12
_rlnOriginXAngst #13
_rlnOriginYAngst #14
_rlnClassNumber #15
1024.0 512.0 000001@Particles/stack.mrcs MicrographsA/m1.mrc 1 15000.0 14000.0 30.0 0.0 10.0 20.0 30.0 1.5 -2.25 1
980.0 300.0 000003@Particles/stack.mrcs MicrographsA/m1.mrc {g2} 21000.5 20500.0 -45.0 90.0 -170.0 95.0 200.0 0.0 3.0 2
17.0 44.0 000002@Particles/stack.mrcs MicrographsA/m2.mrc 1 9000.0 9100.0 0.0 0.0 0.0 0.0 0.0 -4.5 0.75 1
"""

STAR30 = """
data_

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnVoltage #6
_rlnSphericalAberration #7
_rlnAmplitudeContrast #8
_rlnMagnification #9
_rlnDetectorPixelSize #10
_rlnAngleRot #11
_rlnAngleTilt #12
_rlnAnglePsi #13
_rlnOriginX #14
_rlnOriginY #15
_rlnCtfBfactor #16
000002@stack.mrcs m1.mrc 12000.0 11000.0 12.5 300.0 2.7 0.1 10000.0 2.0 45.0 60.0 -30.0 1.5 -0.5 25.0
000001@stack.mrcs m1.mrc 13000.0 12500.0 80.0 300.0 2.7 0.1 10000.0 2.0 -120.0 150.0 10.0 0.0 2.0 50.0
"""


def make_stack(path, n, D=16, apix=1.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).normal(size=(n, D, D)).astype(np.float32)
    return write_mrc(path, data, apix), data


def write31(tmp_path, ps1=1.5, ps2=1.5, g2=2, name="p.star", stack_apix=1.5):
    make_stack(tmp_path / "Particles" / "stack.mrcs", 3, apix=stack_apix)
    path = tmp_path / name
    path.write_text(STAR31.format(ps1=ps1, ps2=ps2, g2=g2))
    return path


def test_read_relion31_poses_ctf_pixel_size(tmp_path):
    path = write31(tmp_path)
    sp = read_star_particles(path)
    assert sp.version == "3.1+" and len(sp) == 3 and sp.image_size == 16
    np.testing.assert_array_equal(sp.pixel_size_angstrom, 1.5)
    assert sp.image_refs[1] == (tmp_path / "Particles" / "stack.mrcs", 2)
    assert list(sp.table.columns[:3]) == ["rlnCoordinateX", "rlnCoordinateY", "rlnImageName"]
    poses = sp.poses()
    np.testing.assert_allclose(poses.rotations[0], relion_matrix(10, 20, 30), atol=1e-12)
    np.testing.assert_allclose(poses.rotations[1], relion_matrix(-170, 95, 200), atol=1e-12)
    np.testing.assert_allclose(poses.shifts_angstrom, [[1.5, -2.25], [0.0, 3.0], [-4.5, 0.75]])
    ctf = sp.ctf()
    np.testing.assert_allclose(ctf.defocus_u_angstrom, [15000.0, 21000.5, 9000.0])
    np.testing.assert_allclose(ctf.astigmatism_angle_deg, [30.0, -45.0, 0.0])
    np.testing.assert_allclose(ctf.voltage_kv, [300.0, 200.0, 300.0])  # optics group 2 for row 2
    np.testing.assert_allclose(ctf.cs_mm, [2.7, 2.0, 2.7])
    np.testing.assert_allclose(ctf.amplitude_contrast, [0.1, 0.07, 0.1])
    np.testing.assert_allclose(ctf.phase_shift_deg, [0.0, 90.0, 0.0])
    np.testing.assert_array_equal(ctf.bfactor_angstrom2, 0.0)
    np.testing.assert_array_equal(ctf.scale, 1.0)


def test_read_relion30(tmp_path):
    make_stack(tmp_path / "stack.mrcs", 2, apix=2.0)
    path = tmp_path / "old.star"
    path.write_text(STAR30)
    sp = read_star_particles(path)
    assert sp.version == "3.0" and sp.optics is None
    np.testing.assert_allclose(sp.pixel_size_angstrom, 2.0)  # 2.0 um * 1e4 / 10000
    assert [i for _, i in sp.image_refs] == [1, 0]
    poses = sp.poses()
    np.testing.assert_allclose(poses.rotations[1], relion_matrix(-120, 150, 10), atol=1e-12)
    np.testing.assert_allclose(poses.shifts_angstrom, [[3.0, -1.0], [0.0, 4.0]])  # pixels * 2 A
    ctf = sp.ctf()
    np.testing.assert_allclose(ctf.bfactor_angstrom2, [25.0, 50.0])
    np.testing.assert_allclose(ctf.defocus_v_angstrom, [11000.0, 12500.0])
    np.testing.assert_array_equal(ctf.phase_shift_deg, 0.0)


def test_two_optics_groups_different_pixel_size(tmp_path):
    path = write31(tmp_path, ps1=1.5, ps2=2.5)
    with pytest.raises(InputError, match=r"p\.star.*different pixel sizes \[1\.5, 2\.5\].*--apix"):
        read_star_particles(path)
    sp = read_star_particles(path, allow_mixed_pixel_sizes=True)
    np.testing.assert_allclose(sp.pixel_size_angstrom, [1.5, 2.5, 1.5])
    sp = read_star_particles(path, apix=2.0)
    np.testing.assert_allclose(sp.pixel_size_angstrom, 2.0)
    np.testing.assert_allclose(sp.ctf().voltage_kv, [300.0, 200.0, 300.0])


def test_write_star_round_trip_31_and_30(tmp_path):
    rng = np.random.default_rng(3)
    n = 5
    make_stack(tmp_path / "s.mrcs", n, apix=1.25)
    angles = np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n), rng.uniform(-180, 180, n)], 1)
    rots = np.stack([relion_matrix(*a) for a in angles])
    poses = Poses(rots, rng.normal(size=(n, 2)) * 3)
    ctf = CTFParams.create(rng.uniform(8000, 20000, n), rng.uniform(8000, 20000, n), rng.uniform(-90, 90, n),
                           np.array([300.0, 300, 200, 300, 200]), 2.7, 0.1, 0.0, 10.0, 1.0)
    names = format_image_names(["s.mrcs"] * n, np.arange(n))
    assert names[0] == "000001@s.mrcs"
    for relion30 in (False, True):
        out = write_star(tmp_path / f"new{relion30}.star", names, 1.25, 16, poses, ctf,
                         extra_columns={"rlnClassNumber": np.arange(n) + 1}, relion30=relion30)
        sp = read_star_particles(out)
        assert sp.version == ("3.0" if relion30 else "3.1+")
        np.testing.assert_allclose(sp.pixel_size_angstrom, 1.25)
        back = sp.poses()
        np.testing.assert_allclose(back.rotations, rots, atol=1e-5)
        np.testing.assert_allclose(back.shifts_angstrom, poses.shifts_angstrom, atol=1e-5)
        c = sp.ctf()
        for field in ("defocus_u_angstrom", "voltage_kv", "bfactor_angstrom2", "astigmatism_angle_deg"):
            np.testing.assert_allclose(getattr(c, field), getattr(ctf, field), atol=1e-5)
        np.testing.assert_array_equal(sp.table["rlnClassNumber"], np.arange(n) + 1)
    text = (tmp_path / "newFalse.star").read_text()
    assert "# version 30001" in text and "data_optics" in text
    assert len(starfile.read(tmp_path / "newFalse.star")["optics"]) == 2  # 300 kV and 200 kV groups


def test_subset_keeps_every_column_and_optics(tmp_path):
    path = write31(tmp_path)
    sp = read_star_particles(path)
    out = write_star_subset(sp, [2, 0], tmp_path / "sub" / "subset.star")
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks["particles"].columns) == list(sp.table.columns)
    assert list(blocks["particles"]["rlnImageName"]) == ["000002@Particles/stack.mrcs", "000001@Particles/stack.mrcs"]
    assert list(blocks["particles"]["rlnMicrographName"]) == ["MicrographsA/m2.mrc", "MicrographsA/m1.mrc"]
    np.testing.assert_allclose(blocks["particles"]["rlnDefocusU"], [9000.0, 15000.0])
    assert blocks["optics"].equals(sp.optics)
    assert "# version 30001" in out.read_text()


def test_datadir(tmp_path):
    make_stack(tmp_path / "elsewhere" / "stack.mrcs", 3)
    path = tmp_path / "meta" / "p.star"
    path.parent.mkdir()
    path.write_text(STAR31.format(ps1=1.5, ps2=1.5, g2=2))
    with pytest.raises(InputError, match=r"p\.star.*stack\.mrcs.*not found.*--datadir"):
        read_star_particles(path)
    sp = read_star_particles(path, datadir=tmp_path / "elsewhere")
    assert sp.image_refs[0][0] == tmp_path / "elsewhere" / "stack.mrcs"


def test_bad_inputs(tmp_path):
    path = write31(tmp_path, g2=7, name="badgroup.star")
    with pytest.raises(InputError, match=r"badgroup\.star.*unknown optics group.*\[7\]"):
        read_star_particles(path)

    path = write31(tmp_path, name="mismatch.star", stack_apix=3.0)
    with pytest.raises(InputError, match=r"mismatch\.star.*1\.5000 A.*3\.0000 A.*--apix"):
        read_star_particles(path)

    path = write31(tmp_path, name="short.star")
    make_stack(tmp_path / "Particles" / "stack.mrcs", 2)  # now holds only 2 images; the file asks for image 3
    with pytest.raises(InputError, match=r"short\.star.*image 3 of .*stack\.mrcs.*only 2 images"):
        read_star_particles(path)

    dup = tmp_path / "dup.star"
    dup.write_text(STAR30.replace("_rlnOriginY #15", "_rlnOriginX #15"))
    with pytest.raises(InputError, match=r"dup\.star.*duplicate column.*rlnOriginX"):
        read_star_particles(dup, check_images=False)

    nopix = tmp_path / "nopix.star"
    nopix.write_text(STAR30.replace("_rlnMagnification", "_rlnMagnificationX"))
    (tmp_path / "stack.mrcs").write_bytes(b"")
    with pytest.raises(InputError, match=r"nopix\.star.*no pixel size.*--apix"):
        read_star_particles(nopix, check_images=False)

    noctf = tmp_path / "noctf.star"
    noctf.write_text(STAR30.replace("_rlnVoltage", "_rlnVoltageX").replace("_rlnAngleTilt", "_rlnTiltX"))
    sp = read_star_particles(noctf, check_images=False)
    with pytest.raises(InputError, match=r"noctf\.star.*missing CTF column\(s\): rlnVoltage"):
        sp.ctf()
    with pytest.raises(InputError, match=r"noctf\.star.*missing pose column\(s\): rlnAngleTilt"):
        sp.poses()

    noname = tmp_path / "noname.star"
    noname.write_text(STAR30.replace("_rlnImageName", "_rlnImageNameX"))
    with pytest.raises(InputError, match=r"noname\.star.*rlnImageName"):
        read_star_particles(noname)

    badname = tmp_path / "badname.star"
    badname.write_text(STAR30.replace("000002@stack.mrcs", "stack.mrcs"))
    with pytest.raises(InputError, match=r"badname\.star.*INDEX@STACK"):
        read_star_particles(badname)

    garbage = tmp_path / "garbage.star"
    garbage.write_bytes(b"\x00\x01binary")
    with pytest.raises(InputError, match=r"garbage\.star"):
        read_star_particles(garbage)
