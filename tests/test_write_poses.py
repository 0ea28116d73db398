"""Particle files with new poses (io/pose_output.py): rows, blocks and columns kept; the new poses read back in
RELION's (ZYZ Euler, origins in A or 3.0 pixels) and cryoSPARC's (rotation vector, shift in px) conventions."""

import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryoscape.errors import InputError
from cryoscape.imaging.rotations import random_rotations
from cryoscape.io.cs import read_cs, write_cs
from cryoscape.io.mrc import write_mrc
from cryoscape.io.particles import load_particles
from cryoscape.io.pose_output import write_particles_with_poses
from cryoscape.io.star import format_image_names, write_star
from cryoscape.metadata import CTFParams, Poses

N, D, APIX = 6, 16, 1.6


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(3)
    write_mrc(tmp_path / "stack.mrcs", rng.normal(size=(N, D, D)).astype(np.float32), APIX)
    poses = Poses(random_rotations(N, seed=1), rng.normal(size=(N, 2)))
    ctf = CTFParams.create(rng.uniform(1e4, 2e4, N), rng.uniform(1e4, 2e4, N), rng.uniform(-90, 90, N), 300.0,
                           2.7, 0.1)
    names = format_image_names(["stack.mrcs"] * N, np.arange(N))
    write_star(tmp_path / "p.star", names, APIX, D, poses, ctf, extra_columns={"rlnClassNumber": np.arange(N) + 1})
    write_star(tmp_path / "p30.star", names, APIX, D, poses, ctf, relion30=True,
               extra_columns={"rlnRandomSubset": np.arange(N) % 2 + 1})
    write_cs(tmp_path / "p.cs", ["stack.mrcs"] * N, np.arange(N), APIX, D, poses, ctf)
    return tmp_path


def _new_poses(n, seed=9):
    rng = np.random.default_rng(seed)
    return Poses(random_rotations(n, seed=seed), rng.normal(scale=3.0, size=(n, 2)))


@pytest.mark.parametrize("name", ["p.star", "p30.star", "p.cs"])
def test_written_poses_read_back(dataset, name, tmp_path):
    src = load_particles(dataset / name)
    positions = np.array([4, 1, 2])
    new = _new_poses(len(positions))
    out = tmp_path / f"out{name[name.index('.'):]}"
    write_particles_with_poses(src, positions, new, out)
    back = load_particles(out, datadir=dataset)
    assert len(back) == 3
    np.testing.assert_allclose(back.poses.rotations, new.rotations, atol=2e-5)
    np.testing.assert_allclose(back.poses.shifts_angstrom, new.shifts_angstrom, atol=1e-4)
    np.testing.assert_allclose(back.ctf.to_array(), src.ctf.subset(positions).to_array(), rtol=1e-5)
    np.testing.assert_array_equal(back.images.to_array(), src.images[positions])


def test_star_keeps_every_column_and_block(dataset, tmp_path):
    src = load_particles(dataset / "p.star")
    new = _new_poses(N)
    write_particles_with_poses(src, np.arange(N)[::-1], new, tmp_path / "o.star")
    before, after = starfile.read(dataset / "p.star"), starfile.read(tmp_path / "o.star")
    assert set(after) == set(before) == {"optics", "particles"}
    assert list(after["particles"].columns) == list(before["particles"].columns)
    np.testing.assert_array_equal(after["particles"]["rlnClassNumber"], np.arange(N)[::-1] + 1)
    assert after["optics"].equals(before["optics"])
    np.testing.assert_allclose(after["particles"]["rlnOriginXAngst"], new.shifts_angstrom[:, 0], atol=1e-5)


def test_relion30_origins_stay_in_pixels(dataset, tmp_path):
    src = load_particles(dataset / "p30.star")
    new = _new_poses(N)
    write_particles_with_poses(src, np.arange(N), new, tmp_path / "o.star")
    table = starfile.read(tmp_path / "o.star")
    assert "rlnOriginXAngst" not in table.columns and "rlnRandomSubset" in table.columns
    np.testing.assert_allclose(table["rlnOriginX"], new.shifts_angstrom[:, 0] / APIX, atol=1e-5)
    np.testing.assert_allclose(table["rlnOriginY"], new.shifts_angstrom[:, 1] / APIX, atol=1e-5)


def test_cs_uses_the_rotation_vector_and_pixel_shifts(dataset, tmp_path):
    src = load_particles(dataset / "p.cs")
    new = _new_poses(N)
    write_particles_with_poses(src, np.arange(N), new, tmp_path / "o.cs")
    arr = read_cs(tmp_path / "o.cs", datadir=dataset).array
    assert arr.dtype.names == np.load(dataset / "p.cs").dtype.names
    expected = Rotation.from_matrix(new.rotations.transpose(0, 2, 1)).as_rotvec()  # A = expmap(r)^T
    np.testing.assert_allclose(arr["alignments3D/pose"], expected, atol=1e-5)
    np.testing.assert_allclose(arr["alignments3D/shift"], new.shifts_angstrom / APIX, atol=1e-5)


def test_star_from_a_cs_input_is_new_metadata_with_the_new_poses(dataset, tmp_path):
    src = load_particles(dataset / "p.cs")
    new = _new_poses(2)
    out = write_particles_with_poses(src, np.array([3, 0]), new, tmp_path / "sub" / "o.star")
    back = load_particles(out)
    np.testing.assert_allclose(back.poses.rotations, new.rotations, atol=2e-5)
    np.testing.assert_allclose(back.poses.shifts_angstrom, new.shifts_angstrom, atol=1e-4)
    with pytest.raises(InputError, match="cannot write poses"):
        write_particles_with_poses(src, np.array([0]), _new_poses(1), tmp_path / "o.mrcs")
