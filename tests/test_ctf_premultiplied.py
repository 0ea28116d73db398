"""CTF-premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``): readers set the flag, models render CTF^2 x slice.

STAR files are written here the way RELION 3.1+ (flag per optics group), RELION 3.0 (a particle column) and
WarpTools / RELION 5 (optics table of the optimisation set's particles file) write them.
"""

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoscape.errors import InputError
from cryoscape.imaging.rotations import euler_relion_to_matrix
from cryoscape.io.mrc import write_mrc
from cryoscape.io.particles import load_particles
from cryoscape.io.tilt_series import TomogramGeometry, load_tilt_series, write_image_series_star, \
    write_optimisation_set
from cryoscape.metadata import CTFParams

D, APIX = 8, 5.0


def _images(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, D, D)).astype(np.float32)


def _relion31_star(path, flags_per_group, groups):
    """A RELION 3.1 particle STAR: one optics group per entry of ``flags_per_group``; particle ``i`` in
    ``groups[i]`` (1-based)."""
    n = len(groups)
    write_mrc(path.parent / "stack.mrcs", _images(n), APIX)
    optics = pd.DataFrame({"rlnOpticsGroupName": [f"g{g + 1}" for g in range(len(flags_per_group))],
                           "rlnOpticsGroup": np.arange(1, len(flags_per_group) + 1),
                           "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
                           "rlnImagePixelSize": APIX, "rlnImageSize": D, "rlnImageDimensionality": 2,
                           "rlnCtfDataAreCtfPremultiplied": list(flags_per_group)})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
                          "rlnAngleRot": 10.0 * np.arange(n), "rlnAngleTilt": 30.0, "rlnAnglePsi": 5.0,
                          "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnDefocusU": 15000.0,
                          "rlnDefocusV": 14000.0, "rlnDefocusAngle": 20.0, "rlnOpticsGroup": list(groups)})
    starfile.write({"optics": optics, "particles": parts}, path)
    return path


def test_single_particle_star_flag(tmp_path):
    path = _relion31_star(tmp_path / "pre.star", [1], [1, 1, 1, 1])
    ps = load_particles(path)
    assert ps.ctf_premultiplied is True
    assert ps.subset([2, 0]).ctf_premultiplied is True  # subsets keep it
    assert load_particles(path, indices=[1]).ctf_premultiplied is True
    plain = _relion31_star(tmp_path / "plain.star", [0], [1, 1, 1])
    assert load_particles(plain).ctf_premultiplied is False
    # only the groups the particles use count
    assert load_particles(_relion31_star(tmp_path / "used.star", [0, 1], [2, 2])).ctf_premultiplied is True


def test_single_particle_star_without_flag_and_other_sources(tmp_path):
    path = _relion31_star(tmp_path / "p.star", [0], [1, 1])
    blocks = starfile.read(path, always_dict=True)
    blocks["optics"] = blocks["optics"].drop(columns="rlnCtfDataAreCtfPremultiplied")
    starfile.write(blocks, path)
    assert load_particles(path).ctf_premultiplied is False  # RELION's default
    assert load_particles(tmp_path / "stack.mrcs", apix=APIX).ctf_premultiplied is False


def test_relion30_column_and_bad_values(tmp_path):
    path = _relion31_star(tmp_path / "p.star", [0], [1, 1, 1])
    blocks = starfile.read(path, always_dict=True)
    table = blocks["particles"].drop(columns="rlnOpticsGroup")
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        table[c] = blocks["optics"][c].iloc[0]
    table["rlnDetectorPixelSize"], table["rlnMagnification"] = APIX, 10000.0
    table["rlnCtfDataAreCtfPremultiplied"] = 1
    starfile.write({"": table}, tmp_path / "r30.star")
    assert load_particles(tmp_path / "r30.star").ctf_premultiplied is True
    table["rlnCtfDataAreCtfPremultiplied"] = [1, 0, 1]
    starfile.write({"": table}, tmp_path / "r30.star")
    with pytest.raises(InputError, match="mixes CTF-premultiplied") as err:
        load_particles(tmp_path / "r30.star")
    assert "r30.star" in str(err.value)
    table["rlnCtfDataAreCtfPremultiplied"] = 2
    starfile.write({"": table}, tmp_path / "r30.star")
    with pytest.raises(InputError, match="is 2; expected 0 or 1"):
        load_particles(tmp_path / "r30.star")


def test_mixed_optics_groups_refused(tmp_path):
    path = _relion31_star(tmp_path / "mixed.star", [0, 1], [1, 2, 1])
    with pytest.raises(InputError, match="mixes CTF-premultiplied"):
        load_particles(path)


def _geometry(F=4):
    tilts = np.array([0.0, 3.0, -3.0, -6.0])[:F]
    R = euler_relion_to_matrix(np.stack([np.zeros(F), tilts, np.zeros(F)], 1))
    return TomogramGeometry("TS_1", R, np.full(F, 2e4), np.full(F, 1.9e4), np.full(F, 5.0), np.arange(F) * 2.0,
                            tilts, 2.0, (100, 100, 40), APIX, hand=-1.0)


@pytest.mark.parametrize("premultiplied", [False, True])
def test_optimisation_set_flag(tmp_path, premultiplied):
    """WarpTools / RELION 5 write the flag in the optics table of the particles file."""
    rng = np.random.default_rng(5)
    geo = _geometry()
    for i in range(3):
        write_mrc(tmp_path / f"p{i}.mrcs", _images(4, seed=i), APIX, is_stack=True)
    path = write_optimisation_set(tmp_path, APIX, D, [geo], ["TS_1"] * 3, ["a", "b", "c"],
                                  rng.normal(size=(3, 3)) * 20, euler_relion_to_matrix(rng.uniform(0, 90, (3, 3))),
                                  np.zeros((3, 3)), ["p0.mrcs", "p1.mrcs", "p2.mrcs"], np.ones((3, 4), bool),
                                  ctf_premultiplied=premultiplied)
    optics = starfile.read(tmp_path / "particles_tomo.star", always_dict=True)["optics"]
    assert int(optics["rlnCtfDataAreCtfPremultiplied"].iloc[0]) == int(premultiplied)
    t = load_tilt_series(path)
    assert t.ctf_premultiplied is premultiplied
    assert t.subset([2, 0]).ctf_premultiplied is premultiplied


def test_optimisation_set_mixed_groups_refused(tmp_path):
    geo = _geometry()
    for i in range(2):
        write_mrc(tmp_path / f"p{i}.mrcs", _images(4, seed=i), APIX, is_stack=True)
    path = write_optimisation_set(tmp_path, APIX, D, [geo], ["TS_1"] * 2, ["a", "b"], np.zeros((2, 3)),
                                  np.tile(np.eye(3), (2, 1, 1)), np.zeros((2, 3)), ["p0.mrcs", "p1.mrcs"],
                                  np.ones((2, 4), bool))
    pfile = tmp_path / "particles_tomo.star"
    blocks = starfile.read(pfile, always_dict=True)
    second = blocks["optics"].iloc[[0]].assign(rlnOpticsGroup=2, rlnOpticsGroupName="g2",
                                               rlnCtfDataAreCtfPremultiplied=1)
    blocks["optics"] = pd.concat([blocks["optics"], second], ignore_index=True)
    blocks["particles"]["rlnOpticsGroup"] = [1, 2]
    starfile.write(blocks, pfile)
    with pytest.raises(InputError, match="mixes CTF-premultiplied") as err:
        load_tilt_series(path)
    assert "particles_tomo.star" in str(err.value)


def test_image_series_flag(tmp_path):
    m = 4
    write_mrc(tmp_path / "ts.mrcs", _images(m), APIX)
    ctf = CTFParams.create(np.full(m, 2e4), np.full(m, 1.9e4), np.zeros(m), 300.0, 2.7, 0.1)
    rot = np.tile(np.eye(3), (m, 1, 1))
    for flag in (False, True):
        path = write_image_series_star(tmp_path / f"s{int(flag)}.star", "ts.mrcs", APIX, D, rot, np.zeros((m, 2)),
                                       ctf, np.arange(m) * 3.0, np.zeros(m), ["1_1", "1_1", "1_2", "1_2"],
                                       ["1"] * m, ctf_premultiplied=flag)
        t = load_tilt_series(path)
        assert t.ctf_premultiplied is flag and t.subset([1]).ctf_premultiplied is flag
