"""Streaming Fourier-crop downsampling (cryoscape.data.downsample) and the `downsample` command."""

from __future__ import annotations

import numpy as np
import pytest

from cryoscape.cli.main import main
from cryoscape.data.downsample import downsample_images
from cryoscape.errors import InputError
from cryoscape.io.mrc import read_mrc, write_mrc
from cryoscape.io.particles import load_particles


def _gaussians(n, D, sigma_px, rng):
    """Images of 2-D Gaussians (peak 1) at random sub-pixel centres plus offsets; also returns centres (px)."""
    centers = rng.uniform(-3, 3, (n, 2))
    offsets = rng.uniform(-1, 1, n)
    y, x = np.indices((D, D)) - D // 2
    imgs = np.exp(-((x - centers[:, 0, None, None]) ** 2 + (y - centers[:, 1, None, None]) ** 2) / (2 * sigma_px**2))
    return (imgs + offsets[:, None, None]).astype(np.float32), centers, offsets


def test_downsample_images_is_resampling(tmp_path):
    """A band-limited image cropped from 32 to 16 pixels equals the same function sampled on the coarser grid."""
    rng = np.random.default_rng(0)
    imgs, centers, offsets = _gaussians(25, 32, 3.0, rng)
    out = downsample_images(imgs, 16, tmp_path / "ds.mrcs", 1.5, chunk_size=7, progress=False)
    small, info = read_mrc(out)
    assert small.shape == (25, 16, 16)
    assert info.voxel_size_angstrom == pytest.approx(3.0)  # pixel size doubled
    np.testing.assert_allclose(small.mean((1, 2)), imgs.mean((1, 2)), atol=1e-5)  # mean preserved
    y, x = np.indices((16, 16)) - 8
    expected = np.exp(-((x - centers[:, 0, None, None] / 2) ** 2 + (y - centers[:, 1, None, None] / 2) ** 2)
                      / (2 * 1.5**2)) + offsets[:, None, None]
    assert np.abs(small - expected).max() < 0.01
    # chunking does not change the result
    one = read_mrc(downsample_images(imgs, 16, tmp_path / "one.mrcs", 1.5, chunk_size=100, progress=False))[0]
    np.testing.assert_array_equal(one, small)
    with pytest.raises(InputError):
        downsample_images(imgs, 40, tmp_path / "x.mrcs", 1.5)
    with pytest.raises(InputError):
        downsample_images(imgs, 15, tmp_path / "x.mrcs", 1.5)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "eightconf", "-N", "40", "-D", "32", "--apix", "2.5", "--snr", "1",
                 "--cs", "-o", str(out)]) == 0
    return out


def test_downsample_star(sim, tmp_path):
    out = tmp_path / "sub" / "ds.mrcs"
    assert main(["downsample", str(sim / "particles.star"), "-D", "16", "-o", str(out), "--chunk-size", "9"]) == 0
    ds = load_particles(out.with_suffix(".star"))
    orig = load_particles(sim / "particles.star")
    assert len(ds) == 40 and ds.D == 16 and ds.pixel_size_angstrom == pytest.approx(5.0)
    np.testing.assert_allclose(ds.poses.rotations, orig.poses.rotations, atol=1e-5)
    np.testing.assert_allclose(ds.poses.shifts_angstrom, orig.poses.shifts_angstrom, atol=1e-5)
    np.testing.assert_allclose(ds.ctf.defocus_u_angstrom, orig.ctf.defocus_u_angstrom, atol=1e-3)
    a, b = ds.images[np.arange(40)], orig.images[np.arange(40)]
    np.testing.assert_allclose(a.mean((1, 2)), b.mean((1, 2)), atol=1e-5)
    assert ds.images.files[0].resolve() == out.resolve()
    assert read_mrc(out)[1].voxel_size_angstrom == pytest.approx(5.0)


def test_downsample_cs_and_mrcs(sim, tmp_path):
    assert main(["downsample", str(sim / "particles.cs"), "-D", "16", "-o", str(tmp_path / "a.mrcs")]) == 0
    assert main(["downsample", str(sim / "particles.mrcs"), "-D", "16", "-o", str(tmp_path / "b.mrcs")]) == 0
    a, info = read_mrc(tmp_path / "a.mrcs")
    b, _ = read_mrc(tmp_path / "b.mrcs")
    assert a.shape == (40, 16, 16) and info.voxel_size_angstrom == pytest.approx(5.0)
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "a.star").is_file()  # a .cs input gets a STAR file (poses and CTF converted)
    assert not (tmp_path / "b.star").exists()  # a bare stack has no metadata to write


def test_downsample_errors(sim, tmp_path, capsys):
    assert main(["downsample", str(sim / "particles.mrcs"), "-D", "64", "-o", str(tmp_path / "c.mrcs")]) == 2
    assert "larger" in capsys.readouterr().err
    assert main(["downsample", str(sim / "particles.mrcs"), "-D", "15", "-o", str(tmp_path / "c.mrcs")]) == 2
    assert main(["downsample", str(sim / "particles.mrcs"), "-D", "16", "-o", str(tmp_path / "c.star")]) == 2
    assert not any(tmp_path.iterdir())  # nothing (not even a temporary file) left behind


def test_downsample_relion30_star(tmp_path):
    """A RELION 3.0 table: pixel origins rescaled, detector pixel size scaled."""
    import pandas as pd
    import starfile

    stack = write_mrc(tmp_path / "p.mrcs", np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32), 2.0)
    df = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@p.mrcs" for i in range(3)], "rlnOriginX": [2.0, -4.0, 0.0],
                       "rlnOriginY": [0.0, 1.0, 2.0], "rlnDetectorPixelSize": 2.0, "rlnMagnification": 10000.0,
                       "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0, "rlnAnglePsi": 0.0})
    starfile.write(df, tmp_path / "p.star")
    assert stack.exists()
    assert main(["downsample", str(tmp_path / "p.star"), "-D", "8", "-o", str(tmp_path / "q.mrcs")]) == 0
    q = load_particles(tmp_path / "q.star")
    assert q.pixel_size_angstrom == pytest.approx(4.0) and q.D == 8
    np.testing.assert_allclose(q.poses.shifts_angstrom[:, 0], [4.0, -8.0, 0.0])  # Angstrom unchanged
