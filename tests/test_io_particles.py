"""load_particles / write_particle_subset across STAR, .cs and .mrcs inputs with pkl overrides."""

import numpy as np
import pytest
import starfile

from cryoscape.errors import InputError
from cryoscape.io.cs import read_cs, write_cs
from cryoscape.io.indices import write_indices
from cryoscape.io.mrc import write_mrc
from cryoscape.io.particles import load_particles, write_particle_subset
from cryoscape.io.pkl import write_ctf_pkl, write_pose_pkl
from cryoscape.io.star import format_image_names, write_star
from cryoscape.metadata import CTFParams, Poses

N, D, APIX = 6, 16, 1.6


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(8)
    images = rng.normal(size=(N, D, D)).astype(np.float32)
    write_mrc(tmp_path / "stack.mrcs", images, APIX)
    q, _ = np.linalg.qr(rng.normal(size=(N, 3, 3)))
    rots = q * np.sign(np.linalg.det(q))[:, None, None]
    poses = Poses(rots, rng.normal(size=(N, 2)))
    ctf = CTFParams.create(rng.uniform(1e4, 2e4, N), rng.uniform(1e4, 2e4, N), rng.uniform(-90, 90, N), 300.0,
                           2.7, 0.1)
    write_star(tmp_path / "p.star", format_image_names(["stack.mrcs"] * N, np.arange(N)), APIX, D, poses, ctf,
               extra_columns={"rlnClassNumber": np.arange(N) % 3 + 1})
    write_cs(tmp_path / "p.cs", ["stack.mrcs"] * N, np.arange(N), APIX, D, poses, ctf)
    return tmp_path, images, poses, ctf


@pytest.mark.parametrize("name", ["p.star", "p.cs"])
def test_load_metadata_files(dataset, name):
    root, images, poses, ctf = dataset
    ps = load_particles(root / name)
    assert len(ps) == N and ps.D == D and ps.pixel_size_angstrom == pytest.approx(APIX)
    assert ps.source_format == name[2:]
    np.testing.assert_array_equal(ps.images.to_array(), images)
    np.testing.assert_allclose(ps.poses.rotations, poses.rotations, atol=1e-5)
    np.testing.assert_allclose(ps.poses.shifts_angstrom, poses.shifts_angstrom, atol=1e-5)
    np.testing.assert_allclose(ps.ctf.defocus_u_angstrom, ctf.defocus_u_angstrom, rtol=1e-6)
    sub = load_particles(root / name, indices=[4, 1], lazy=False)
    np.testing.assert_array_equal(sub.images.to_array(), images[[4, 1]])
    np.testing.assert_allclose(sub.poses.rotations, poses.rotations[[4, 1]], atol=1e-5)
    np.testing.assert_array_equal(sub.source_indices, [4, 1])


def test_mrcs_with_pkls_and_index_file(dataset):
    root, images, poses, ctf = dataset
    write_pose_pkl(root / "pose.pkl", poses, D, APIX)
    write_ctf_pkl(root / "ctf.pkl", ctf, 2 * D, APIX / 2)  # made for the data before 2x downsampling
    write_indices(root / "ind.npy", [5, 0, 2])
    ps = load_particles(root / "stack.mrcs", poses=root / "pose.pkl", ctf=root / "ctf.pkl", indices=root / "ind.npy")
    assert ps.source_format == "mrcs" and len(ps) == 3
    assert ps.pixel_size_angstrom == pytest.approx(APIX)  # 2D * (APIX/2) / D
    np.testing.assert_array_equal(ps.images[[0, 1, 2]], images[[5, 0, 2]])
    np.testing.assert_allclose(ps.poses.shifts_angstrom, poses.shifts_angstrom[[5, 0, 2]], atol=1e-5)
    np.testing.assert_allclose(ps.ctf.astigmatism_angle_deg, ctf.astigmatism_angle_deg[[5, 0, 2]], atol=1e-4)


def test_pkl_overrides_star(dataset):
    root, _, poses, ctf = dataset
    zero = Poses(np.tile(np.eye(3), (N, 1, 1)), np.zeros((N, 2)))
    write_pose_pkl(root / "zero.pkl", zero, D, APIX)
    ps = load_particles(root / "p.star", poses=root / "zero.pkl")
    np.testing.assert_allclose(ps.poses.rotations, zero.rotations)


def test_length_mismatch_names_both_files(dataset):
    root, _, poses, ctf = dataset
    write_pose_pkl(root / "short_pose.pkl", poses.subset(slice(0, 4)), D, APIX)
    with pytest.raises(InputError, match=r"short_pose\.pkl.*4 poses but .*p\.star has 6"):
        load_particles(root / "p.star", poses=root / "short_pose.pkl")
    write_ctf_pkl(root / "short_ctf.pkl", ctf.subset(slice(0, 5)), D, APIX)
    with pytest.raises(InputError, match=r"short_ctf\.pkl.*for 5 particles but .*stack\.mrcs has 6"):
        load_particles(root / "stack.mrcs", ctf=root / "short_ctf.pkl")
    with pytest.raises(InputError, match=r"p\.star.*index 6 is out of range for 6"):
        load_particles(root / "p.star", indices=[0, 6])
    with pytest.raises(InputError, match=r"p\.xyz.*unknown particle file type"):
        (root / "p.xyz").write_text("")
        load_particles(root / "p.xyz")


def test_write_subset_same_format_keeps_metadata(dataset):
    root, images, poses, _ = dataset
    ps = load_particles(root / "p.star").subset([5, 3, 1, 0])
    out = write_particle_subset(ps, [2, 0], root / "sel.star")  # rows 1 and 5 of the source
    blocks = starfile.read(out, always_dict=True)
    original = starfile.read(root / "p.star", always_dict=True)
    assert list(blocks["particles"].columns) == list(original["particles"].columns)
    assert blocks["optics"].equals(original["optics"])
    np.testing.assert_array_equal(blocks["particles"]["rlnClassNumber"],
                                  original["particles"]["rlnClassNumber"].to_numpy()[[1, 5]])
    again = load_particles(out)
    np.testing.assert_array_equal(again.images.to_array(), images[[1, 5]])

    cs = load_particles(root / "p.cs")
    out = write_particle_subset(cs, [3], root / "sel.cs")
    np.testing.assert_array_equal(read_cs(out).array, read_cs(root / "p.cs").array[[3]])


def test_write_subset_other_formats(dataset, tmp_path):
    root, images, poses, _ = dataset
    ps = load_particles(root / "stack.mrcs")
    out = write_particle_subset(ps, [1, 4], root / "out" / "sel.mrcs")
    np.testing.assert_array_equal(load_particles(out).images.to_array(), images[[1, 4]])
    ps = load_particles(root / "p.cs")
    out = write_particle_subset(ps, [4, 2], root / "out" / "from_cs.star")  # paths relative to the new folder
    back = load_particles(out)
    np.testing.assert_array_equal(back.images.to_array(), images[[4, 2]])
    np.testing.assert_allclose(back.poses.rotations, poses.rotations[[4, 2]], atol=1e-5)


def test_negative_ctf_bfactor_of_warp_files_is_not_applied(dataset, caplog):
    # Warp/M image-series STAR files store -4 x exposure as rlnCtfBfactor; applied as a RELION B-factor it would
    # amplify high frequencies exponentially, so the cryoDRGN-family reader sets it to 0 and says so
    root, _, _, _ = dataset
    star = starfile.read(root / "p.star", always_dict=True)
    bfactors = np.array([0.0, -8.0, -16.0, 20.0, -24.0, 0.0])
    star["particles"]["rlnCtfBfactor"] = bfactors
    starfile.write(star, root / "warp.star")
    with caplog.at_level("WARNING"):
        ps = load_particles(root / "warp.star")
    np.testing.assert_allclose(ps.ctf.bfactor_angstrom2, [0.0, 0.0, 0.0, 20.0, 0.0, 0.0])
    assert "3 particles have a negative CTF B-factor" in caplog.text and "warp.star" in caplog.text
