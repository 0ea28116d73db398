"""Ground-truth maps: Gaussian rendering, presets and atomic models (cryoscape.simulate.volumes / .atomic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.simulate.atomic import atomic_volume, check_fits_box, read_atoms, states_from_atomic
from cryoscape.simulate.volumes import (
    PRESETS,
    SIGMA_PER_RESOLUTION,
    get_preset,
    preset_volumes,
    render_gaussians,
    states_from_preset,
)


def _moments(vol):
    """Integral, centroid (x, y, z) relative to the centre voxel, and mean per-axis variance (voxels^2)."""
    D = vol.shape[0]
    z, y, x = np.indices(vol.shape) - D // 2
    m = vol.sum()
    c = np.array([(vol * a).sum() / m for a in (x, y, z)])
    var = np.mean([(vol * (a - ci) ** 2).sum() / m for a, ci in zip((x, y, z), c, strict=True)])
    return m, c, var


def test_render_gaussian_integral_position_and_width():
    apix = 1.5
    vol = render_gaussians(np.array([[3.0, -6.0, 9.0]]), 2.0, 5.0, 32, apix)
    m, c, var = _moments(vol.astype(np.float64))
    assert m == pytest.approx(5.0, rel=1e-4)
    np.testing.assert_allclose(c, [2.0, -4.0, 6.0], atol=1e-4)  # (x, y, z) in voxels, array order [z, y, x]
    assert var == pytest.approx((2.0 / apix) ** 2, rel=1e-3)
    # the resolution low-pass widens the Gaussian analytically
    vol_lp = render_gaussians(np.zeros((1, 3)), 2.0, 1.0, 32, apix, resolution_angstrom=6.0)
    _, _, var_lp = _moments(vol_lp.astype(np.float64))
    assert var_lp == pytest.approx((4.0 + (SIGMA_PER_RESOLUTION * 6.0) ** 2) / apix**2, rel=1e-3)
    assert vol.min() >= 0


def test_render_gaussians_many_equals_sum_of_single():
    rng = np.random.default_rng(0)
    centers = rng.uniform(-10, 10, (7, 3))
    sig = rng.uniform(1.0, 3.0, 7)
    w = rng.uniform(0.5, 2.0, 7)
    total = render_gaussians(centers, sig, w, 24, 1.0, chunk_size=3)
    parts = sum(render_gaussians(centers[i : i + 1], sig[i], w[i], 24, 1.0) for i in range(7))
    np.testing.assert_allclose(total, parts, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_positive_smooth_and_fill_box(name):
    D = 32
    preset = get_preset(name)
    states = [0, preset.n_states - 1]
    vols = dict(preset_volumes(name, D, 3.0, states=states))
    for vol in vols.values():
        assert vol.shape == (D, D, D) and vol.dtype == np.float32
        assert vol.min() >= 0 and vol.max() > 0.5
        # density above 5% of the maximum lies within 0.38 D of the centre and reaches beyond 0.2 D
        z, y, x = np.indices(vol.shape) - D // 2
        r = np.sqrt(x**2 + y**2 + z**2)[vol > 0.05 * vol.max()]
        assert 0.2 * D < r.max() < 0.38 * D
        # smooth: almost no power beyond 3/4 of Nyquist
        F = np.abs(np.fft.fftshift(np.fft.fftn(vol))) ** 2
        k = np.sqrt(sum(a**2 for a in np.indices(vol.shape) - D // 2))
        assert F[k > 0.375 * D].sum() < 1e-3 * F.sum()
    if preset.n_states > 1:
        a, b = vols[states[0]], vols[states[1]]
        assert np.abs(a - b).sum() > 0.1 * a.sum()  # the states really differ
    assert preset.coordinates.min() >= 0 and preset.coordinates.max() <= 1


def test_preset_scales_with_box():
    small = next(preset_volumes("homogeneous", 32, 4.0))[1]
    large = next(preset_volumes("homogeneous", 64, 2.0))[1]
    # same physical object (32 * 4 = 64 * 2 Angstrom box): radius of gyration in Angstrom agrees
    _, _, var_s = _moments(small.astype(np.float64))
    _, _, var_l = _moments(large.astype(np.float64))
    assert math.sqrt(var_s) * 4.0 == pytest.approx(math.sqrt(var_l) * 2.0, rel=0.05)


def test_preset_definitions():
    assert get_preset("linear1d").n_states == 50
    np.testing.assert_allclose(get_preset("linear1d").coordinates, np.linspace(0, 1, 50))
    assert get_preset("discrete3").weights.tolist() == [10, 15, 25]
    hd = get_preset("hinge_discrete")
    assert sorted(set(hd.extra["subunit"].tolist())) == [0, 1]
    assert get_preset("eightconf").n_states == 8
    with pytest.raises(InputError, match="unknown preset"):
        get_preset("nope")
    s = states_from_preset("discrete3", 24, 2.0)
    assert s.n_states == 3 and s.render(2).shape == (24, 24, 24)


PDB = """\
ATOM      1  N   ALA A   1       1.000   2.000   3.000  1.00 10.00           N
ATOM      2  CA  ALA A   1       4.000   2.000   3.000  1.00 10.00           C
ATOM      3  O   ALA A   1       4.000   6.000   3.000  0.50 10.00           O
ATOM      4  H   ALA A   1       4.000   6.000   9.000  1.00 10.00           H
HETATM    5  O   HOH A   2      10.000  10.000  10.000  1.00 10.00           O
END
"""


def test_read_atoms_and_render(tmp_path):
    path = tmp_path / "m.pdb"
    path.write_text(PDB)
    xyz, w = read_atoms(path)
    np.testing.assert_allclose(w, [7.0, 6.0, 4.0])  # N, C, O at half occupancy; H and water removed
    np.testing.assert_allclose(xyz[1], [4.0, 2.0, 3.0])
    vol = atomic_volume(xyz, w, 32, 1.0, resolution_angstrom=3.0)
    m, c, _ = _moments(vol.astype(np.float64))
    assert m == pytest.approx(17.0, rel=1e-3)
    np.testing.assert_allclose(c, 0.0, atol=1e-3)  # centre of mass at the box centre
    # an explicit centre shifts the map: atom N at the box centre
    vol2 = atomic_volume(xyz[:1], w[:1], 32, 1.0, 3.0, center_angstrom=[1.0, 2.0, 3.0])
    assert np.unravel_index(np.argmax(vol2), vol2.shape) == (16, 16, 16)
    # the same file as mmCIF through gemmi
    import gemmi

    st = gemmi.read_structure(str(path))
    st.setup_entities()
    cif = tmp_path / "m.cif"
    st.make_mmcif_document().write_file(str(cif))
    xyz_c, w_c = read_atoms(cif)
    np.testing.assert_allclose(xyz_c, xyz)
    np.testing.assert_allclose(w_c, w)


def test_atomic_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_atoms(tmp_path / "missing.pdb")
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\nloop_\n_foo.bar\n")
    with pytest.raises(InputError):
        read_atoms(bad)
    with pytest.raises(InputError, match="box radius"):
        check_fits_box(np.array([[30.0, 0.0, 0.0]]), 16, 2.0)
    path = tmp_path / "m.pdb"
    path.write_text(PDB)
    s = states_from_atomic([path, path], 16, 1.0)
    assert s.n_states == 2 and s.render(1).shape == (16, 16, 16)
