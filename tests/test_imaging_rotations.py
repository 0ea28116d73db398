"""RELION Euler matrices, cryoSPARC poses, quaternions and uniform random rotations."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from cryoscape.imaging.rotations import (
    cryosparc_pose_to_matrix,
    euler_relion_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
)


def Rz(t):  # passive (frame) rotation about z
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def Ry(t):  # passive (frame) rotation about y
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


angles = st.tuples(
    st.floats(-180, 180, allow_nan=False), st.floats(0.5, 179.5, allow_nan=False), st.floats(-180, 180, allow_nan=False)
)


@settings(max_examples=60, deadline=None)
@given(angles)
def test_relion_matrix_is_product_of_elementary_rotations(a):
    rot, tilt, psi = np.deg2rad(a)
    expected = Rz(psi) @ Ry(tilt) @ Rz(rot)
    np.testing.assert_allclose(euler_relion_to_matrix([a])[0], expected, atol=1e-12)
    # and scipy's intrinsic ZYZ active rotation, transposed
    sp = Rotation.from_euler("ZYZ", a, degrees=True).as_matrix().T
    np.testing.assert_allclose(euler_relion_to_matrix([a])[0], sp, atol=1e-12)


def test_relion_matrix_known_values():
    A = euler_relion_to_matrix([[90.0, 0.0, 0.0], [0.0, 90.0, 0.0]])
    np.testing.assert_allclose(A[0], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(A[1], [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)
    R = euler_relion_to_matrix(np.random.default_rng(0).uniform(-180, 180, (20, 3)))
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(angles)
def test_euler_round_trip(a):
    a = np.array([a])
    back = matrix_to_euler_relion(euler_relion_to_matrix(a))
    np.testing.assert_allclose(back[0, 1], a[0, 1], atol=1e-7)  # tilt in [0, 180] is unique
    np.testing.assert_allclose(euler_relion_to_matrix(back), euler_relion_to_matrix(a), atol=1e-10)
    d = (back - a + 180) % 360 - 180
    np.testing.assert_allclose(d, 0, atol=1e-7)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_euler_gimbal_lock(tilt):
    a = np.array([[40.0, tilt, 25.0]])
    back = matrix_to_euler_relion(euler_relion_to_matrix(a))
    assert back[0, 0] == 0.0 and back[0, 1] == pytest.approx(tilt)
    np.testing.assert_allclose(euler_relion_to_matrix(back), euler_relion_to_matrix(a), atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=3, max_size=3))
def test_cryosparc_round_trip(r):
    r = np.array([r])
    A = cryosparc_pose_to_matrix(r)
    # A = expmap(r)^T built independently with Rodrigues' formula
    theta = np.linalg.norm(r[0])
    if theta > 1e-9:
        k = r[0] / theta
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        R = np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K
    else:  # first order: exp([r]x) = I + [r]x + O(theta^2)
        x, y, z = r[0]
        R = np.eye(3) + np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    np.testing.assert_allclose(A[0], R.T, atol=1e-10)
    np.testing.assert_allclose(cryosparc_pose_to_matrix(matrix_to_cryosparc_pose(A)), A, atol=1e-10)


def test_quaternions():
    s = np.sqrt(0.5)
    R = quaternion_to_matrix([[s, 0, 0, s]])  # 90 degrees about z, active
    np.testing.assert_allclose(R[0], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    A = random_rotations(30, seed=1)
    q = matrix_to_quaternion(A)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(q), A, atol=1e-12)
    # q and -q are the same rotation
    np.testing.assert_allclose(quaternion_to_matrix(-q), A, atol=1e-12)


def test_random_rotations_uniform():
    A = random_rotations(20000, seed=3)
    assert A.shape == (20000, 3, 3) and A.dtype == np.float64
    np.testing.assert_allclose(np.linalg.det(A), 1.0, atol=1e-10)
    # Haar measure: E[A] = 0 and the viewing direction (third row) is uniform on the sphere: E[z^2] = 1/3
    assert np.abs(A.mean(0)).max() < 0.02
    assert np.mean(A[:, 2, 2] ** 2) == pytest.approx(1 / 3, abs=0.01)
    # the rotation angle has density (1 - cos w) / pi on [0, pi]; its mean is pi/2 + 2/pi
    w = np.arccos(np.clip((np.trace(A, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert w.mean() == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.02)
    np.testing.assert_array_equal(random_rotations(5, seed=3), random_rotations(5, seed=3))
