"""`downsample` of a cryoSPARC .cs file also writes a STAR file: the .cs poses and CTF in RELION's conventions."""

import numpy as np
import pytest
import starfile

from cryoscape.cli.main import main
from cryoscape.io.particles import load_particles


def test_downsample_cs_writes_a_star_with_the_cs_poses_and_ctf(tmp_path):
    sim = tmp_path / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "12", "-D", "16", "--apix", "3", "--snr", "2", "--cs",
                 "-o", str(sim)]) == 0
    out = tmp_path / "data" / "p.8.mrcs"
    assert main(["downsample", str(sim / "particles.cs"), "--datadir", str(sim), "-D", "8", "-o", str(out)]) == 0
    star = starfile.read(out.with_suffix(".star"))
    rows = star["particles"]
    assert list(rows["rlnImageName"]) == [f"{i:06d}@p.8.mrcs" for i in range(1, 13)]
    assert star["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(6.0)
    assert star["optics"]["rlnImageSize"].iloc[0] == 8
    cs = np.load(sim / "particles.cs")
    np.testing.assert_allclose(rows["rlnDefocusU"], cs["ctf/df1_A"], rtol=1e-5)
    original = load_particles(sim / "particles.cs", datadir=sim)
    converted = load_particles(out.with_suffix(".star"))
    assert converted.D == 8 and len(converted) == 12
    np.testing.assert_allclose(converted.poses.rotations, original.poses.rotations, atol=1e-5)
    np.testing.assert_allclose(converted.poses.shifts_angstrom, original.poses.shifts_angstrom, atol=1e-4)
    for field in ("defocus_v_angstrom", "astigmatism_angle_deg", "voltage_kv", "cs_mm", "amplitude_contrast"):
        np.testing.assert_allclose(getattr(converted.ctf, field), getattr(original.ctf, field), rtol=1e-5, atol=1e-4)
    # the images are those of the downsampled stack, in order
    stack = load_particles(out, apix=6.0)
    np.testing.assert_array_equal(converted.images[:], stack.images[:])
