"""The hierarchical SO(3) grid (cryoscape.imaging.so3_grid): counts, coverage, hierarchy, RELION convention."""

import healpy
import numpy as np
import pytest

from cryoscape.imaging import so3_grid as g
from cryoscape.imaging.rotations import euler_relion_to_matrix, matrix_to_euler_relion, random_rotations


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_counts_per_level(level):
    assert g.n_directions(level) == 12 * 4 ** level
    assert g.n_psi(level) == 6 * 2 ** level
    assert g.grid_size(level) == 72 * 8 ** level
    assert g.grid_spacing_deg(level) == pytest.approx(60.0 / 2 ** level)
    if level <= 2:
        R = g.grid_rotations(level)
        assert R.shape == (72 * 8 ** level, 3, 3)
        # each grid point is its own nearest point, and no two grid points are closer than a fifth of the spacing
        sample = np.arange(0, len(R), max(1, len(R) // 300))
        nearest, d = g.nearest_grid_point(R[sample], level)
        np.testing.assert_array_equal(nearest, sample)
        assert d.max() < 1e-9
        pair = g.geodesic_distance_deg(R[sample][:, None], R[None])
        pair[np.arange(len(sample)), sample] = np.inf
        assert pair.min() > 0.2 * g.grid_spacing_deg(level)


@pytest.mark.parametrize("level", [0, 2])
def test_matrices_are_proper_rotations(level):
    R = g.grid_rotations(level)
    eye = np.broadcast_to(np.eye(3), R.shape)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


def test_coverage_bound_holds_and_halves_per_level():
    """Random rotations are within the stated covering radius of the grid; max and mean halve per level."""
    R = random_rotations(2000, seed=7)
    maxima, means = [], []
    for level in range(4):
        _, d = g.nearest_grid_point(R, level)
        assert d.max() < g.covering_radius_deg(level)
        assert 0.35 * g.grid_spacing_deg(level) < d.mean() < 0.6 * g.grid_spacing_deg(level)
        maxima.append(d.max())
        means.append(d.mean())
    for k in range(3):
        assert 1.8 < means[k] / means[k + 1] < 2.2
        assert 1.6 < maxima[k] / maxima[k + 1] < 2.5


def test_grid_direction_is_the_healpix_direction_in_relion_convention():
    """The viewing direction (third row of A) of each grid point's Euler angles is its HEALPix pixel's vector."""
    level = 2
    idx = np.arange(g.grid_size(level))
    angles = g.grid_euler(level, idx)
    A = euler_relion_to_matrix(angles)
    np.testing.assert_allclose(A, g.grid_rotations(level, idx), atol=1e-12)
    pix = idx // g.n_psi(level)
    vec = np.stack(healpy.pix2vec(2 ** level, pix, nest=True), axis=-1)
    np.testing.assert_allclose(A[:, 2, :], vec, atol=1e-12)
    np.testing.assert_allclose(g.grid_directions(level)[pix], vec)
    # the Euler angles read back from the matrices give the same rotations (RELION helpers round-trip)
    np.testing.assert_allclose(euler_relion_to_matrix(matrix_to_euler_relion(A)), A, atol=1e-9)
    # the in-plane angles of one direction are evenly spaced by the psi step
    psi = np.sort(angles[pix == 17, 2])
    np.testing.assert_allclose(np.diff(psi), 360.0 / g.n_psi(level))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_children_lie_in_the_parent_cell(level):
    idx = np.arange(g.grid_size(level))
    children = g.child_indices(level, idx)
    assert children.shape == (len(idx), 8)
    assert len(np.unique(children)) == g.grid_size(level + 1)  # the children partition the next level
    flat, parent = children.ravel(), np.repeat(idx, 8)
    np.testing.assert_array_equal(g.parent_indices(level + 1, flat), parent)
    # direction inside the parent's HEALPix pixel
    child_dir = g.grid_directions(level + 1)[flat // g.n_psi(level + 1)]
    np.testing.assert_array_equal(healpy.vec2pix(2 ** level, *child_dir.T, nest=True), parent // g.n_psi(level))
    # nearest-parent check: (almost) every child's nearest point of the parent level is its parent, and the
    # others are within a degree and a half of being so; all are within 0.7 x the parent spacing of it
    Rc = g.grid_rotations(level + 1, flat)
    nearest, d_nearest = g.nearest_grid_point(Rc, level)
    d_parent = g.geodesic_distance_deg(Rc, g.grid_rotations(level, parent))
    assert np.mean(nearest == parent) >= 0.98
    assert np.all(d_parent - d_nearest < 2.0)
    assert d_parent.max() < 0.7 * g.grid_spacing_deg(level)


def test_child_indices_layout_and_errors():
    np.testing.assert_array_equal(g.child_indices(0, 0), (np.arange(4)[:, None] * 12 + np.arange(2)).ravel())
    np.testing.assert_array_equal(g.child_indices(1, [[5]]).shape, (1, 1, 8))
    with pytest.raises(ValueError, match="level 0"):
        g.parent_indices(0, 3)
    with pytest.raises(ValueError, match=r"\[0, 72\)"):
        g.child_indices(0, 72)
    with pytest.raises(ValueError, match="integer"):
        g.grid_rotations(1.5)


def test_local_grid_around_arbitrary_rotations():
    A = random_rotations(3, seed=1)
    L = g.local_grid(A, 2.0, radius=1)
    assert L.shape == (3, 27, 3, 3)
    np.testing.assert_allclose(L[:, 13], A, atol=1e-12)  # the centre is the rotation itself
    d = g.geodesic_distance_deg(L, A[:, None])
    # face, edge and corner neighbours of the cube are 2, 2 sqrt 2 and 2 sqrt 3 degrees away
    np.testing.assert_allclose(np.sort(np.unique(np.round(d, 5))), [0, 2, 2 * np.sqrt(2), 2 * np.sqrt(3)], atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(L), 1.0, atol=1e-12)
    # a rotation 1.5 degrees from A is within spacing * sqrt(3) / 2 of the local grid of spacing 2
    from scipy.spatial.transform import Rotation

    B = Rotation.from_rotvec(np.deg2rad([0.9, -1.1, 0.5])).as_matrix() @ A[0]
    assert g.geodesic_distance_deg(L[0], B).min() <= np.sqrt(3)
