"""cryoSPARC .cs reading/writing with real field names: paths, poses, shifts, CTF units, subsets, errors."""

import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.io.cs import read_cs, write_cs, write_cs_subset
from cryoscape.io.mrc import write_mrc
from cryoscape.metadata import CTFParams, Poses

CS_DTYPE = [
    ("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"), ("blob/sign", "<f4"), ("blob/import_sig", "<u8"),
    ("ctf/type", "S1"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
    ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"), ("ctf/scale_const", "<f4"), ("ctf/shift_A", "<f4", (2,)),
    ("ctf/tilt_A", "<f4", (2,)), ("ctf/trefoil_A", "<f4", (2,)), ("ctf/tetra_A", "<f4", (4,)),
    ("ctf/anisomag", "<f4", (4,)), ("ctf/bfactor", "<f4"),
    ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
    ("alignments3D/psize_A", "<f4"), ("alignments3D/error", "<f4"), ("alignments3D/class_posterior", "<f4"),
    ("alignments3D/class", "<u4"),
]


def rodrigues(r):
    """expmap of an axis-angle vector (radians), written out."""
    theta = np.linalg.norm(r)
    if theta == 0:
        return np.eye(3)
    k = r / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def save_cs(path, arr):
    with open(path, "wb") as fh:  # np.save would append .npy to a path
        np.save(fh, arr)


def make_project(tmp_path, n=4, D=16, psize=1.1):
    """A cryoSPARC-like project: stack in J1/imported/, particles .cs in J5/."""
    stack_dir = tmp_path / "J1" / "imported"
    stack_dir.mkdir(parents=True)
    images = np.random.default_rng(4).normal(size=(n + 1, D, D)).astype(np.float32)
    write_mrc(stack_dir / "particles.mrcs", images, psize)
    (tmp_path / "J5").mkdir()
    arr = np.zeros(n, dtype=CS_DTYPE)
    rng = np.random.default_rng(5)
    arr["uid"] = rng.integers(0, 2**62, n)
    arr["blob/path"] = b">J1/imported/particles.mrcs"
    arr["blob/idx"] = [4, 0, 2, 1]
    arr["blob/shape"] = D
    arr["blob/psize_A"] = psize
    arr["ctf/accel_kv"] = 300.0
    arr["ctf/cs_mm"] = 2.7
    arr["ctf/amp_contrast"] = 0.07
    arr["ctf/df1_A"] = [10000.0, 12000.0, 14000.0, 16000.0]
    arr["ctf/df2_A"] = [9000.0, 11500.0, 13000.0, 15900.0]
    arr["ctf/df_angle_rad"] = [0.5, -1.0, 0.0, 3.0]
    arr["ctf/phase_shift_rad"] = [0.0, np.pi / 2, 0.0, 0.0]
    arr["ctf/scale"] = 1.0
    arr["ctf/bfactor"] = [0.0, 10.0, 20.0, 30.0]
    arr["alignments3D/pose"] = rng.normal(size=(n, 3))
    arr["alignments3D/shift"] = rng.normal(size=(n, 2)) * 2
    arr["alignments3D/psize_A"] = psize
    arr["alignments3D/class_posterior"] = 1.0
    path = tmp_path / "J5" / "J5_particles.cs"
    save_cs(path, arr)
    return path, arr, images


def test_read_cs(tmp_path):
    path, arr, images = make_project(tmp_path)
    cs = read_cs(path)
    assert len(cs) == 4 and cs.image_size == 16
    np.testing.assert_allclose(cs.pixel_size_angstrom, np.float32(1.1))
    assert cs.image_refs[0] == (tmp_path / "J1" / "imported" / "particles.mrcs", 4)
    poses = cs.poses()
    for i in range(4):
        expected = rodrigues(arr["alignments3D/pose"][i].astype(np.float64)).T
        np.testing.assert_allclose(poses.rotations[i], expected, atol=1e-6)
    np.testing.assert_allclose(poses.shifts_angstrom, arr["alignments3D/shift"] * np.float32(1.1), rtol=1e-6)
    ctf = cs.ctf()
    np.testing.assert_allclose(ctf.astigmatism_angle_deg, np.degrees(arr["ctf/df_angle_rad"]), rtol=1e-6)
    np.testing.assert_allclose(ctf.phase_shift_deg, [0.0, 90.0, 0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(ctf.defocus_u_angstrom, [10000.0, 12000.0, 14000.0, 16000.0])
    np.testing.assert_allclose(ctf.bfactor_angstrom2, [0.0, 10.0, 20.0, 30.0])
    np.testing.assert_allclose(ctf.voltage_kv, 300.0)
    np.testing.assert_allclose(ctf.amplitude_contrast, 0.07, rtol=1e-6)


def test_subset_keeps_all_fields(tmp_path):
    path, arr, _ = make_project(tmp_path)
    cs = read_cs(path)
    out = write_cs_subset(cs, [3, 1], tmp_path / "J5" / "subset.cs")
    assert out.exists() and not (tmp_path / "J5" / "subset.cs.npy").exists()
    back = np.load(out)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr[[3, 1]])


def test_write_cs_round_trip(tmp_path):
    path, arr, _ = make_project(tmp_path)
    rng = np.random.default_rng(6)
    rots = np.stack([rodrigues(r).T for r in rng.normal(size=(3, 3))])
    poses = Poses(rots, rng.normal(size=(3, 2)))
    ctf = CTFParams.create([10000.0, 11000, 12000], [9000.0, 9500, 9900], [10.0, -20, 45], 300.0, 2.7, 0.1,
                           [0.0, 30.0, 0.0], 5.0, 1.0)
    out = write_cs(tmp_path / "J5" / "new.cs", [">J1/imported/particles.mrcs"] * 3, [0, 1, 2], 1.1, 16,
                   poses, ctf)
    cs = read_cs(out)
    np.testing.assert_allclose(cs.poses().rotations, rots, atol=1e-6)
    np.testing.assert_allclose(cs.poses().shifts_angstrom, poses.shifts_angstrom, atol=1e-5)
    c = cs.ctf()
    np.testing.assert_allclose(c.astigmatism_angle_deg, [10.0, -20.0, 45.0], atol=1e-4)
    np.testing.assert_allclose(c.phase_shift_deg, [0.0, 30.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(c.bfactor_angstrom2, 5.0)


def test_datadir_and_errors(tmp_path):
    path, arr, _ = make_project(tmp_path)
    moved = tmp_path / "stacks"
    (tmp_path / "J1" / "imported").rename(moved)
    with pytest.raises(InputError, match=r"J5_particles\.cs.*particles\.mrcs.*not found.*--datadir"):
        read_cs(path)
    assert read_cs(path, datadir=moved).image_refs[1] == (moved / "particles.mrcs", 0)

    short = tmp_path / "short.cs"
    a2 = arr.copy()
    a2["blob/idx"][0] = 9
    save_cs(short, a2)
    with pytest.raises(InputError, match=r"short\.cs.*image 10 of .*only 5 images"):
        read_cs(short, datadir=moved)

    noblob = tmp_path / "noblob.cs"
    fields = [n for n in arr.dtype.names if n != "blob/psize_A"]
    save_cs(noblob, arr[fields])
    with pytest.raises(InputError, match=r"noblob\.cs.*missing blob field\(s\): blob/psize_A"):
        read_cs(noblob, datadir=moved)

    nopose = tmp_path / "nopose.cs"
    fields = [n for n in arr.dtype.names if not n.startswith("alignments3D/") and n != "ctf/df2_A"]
    save_cs(nopose, arr[fields])
    cs = read_cs(nopose, datadir=moved)
    assert not cs.has_poses()
    with pytest.raises(InputError, match=r"nopose\.cs.*missing pose field\(s\): alignments3D/pose, alignments3D/shift"):
        cs.poses()
    with pytest.raises(InputError, match=r"nopose\.cs.*missing CTF field\(s\): ctf/df2_A"):
        cs.ctf()

    wrongpsize = tmp_path / "wrongpsize.cs"
    a3 = arr.copy()
    a3["blob/psize_A"] = 2.0
    save_cs(wrongpsize, a3)
    with pytest.raises(InputError, match=r"wrongpsize\.cs.*2\.0000 A.*1\.1000 A.*--apix"):
        read_cs(wrongpsize, datadir=moved)

    notcs = tmp_path / "notcs.cs"
    notcs.write_text("hello")
    with pytest.raises(InputError, match=r"notcs\.cs.*not a readable cryoSPARC"):
        read_cs(notcs)
    plain = tmp_path / "plain.cs"
    save_cs(plain, np.zeros(3))
    with pytest.raises(InputError, match=r"plain\.cs.*structured array"):
        read_cs(plain)
