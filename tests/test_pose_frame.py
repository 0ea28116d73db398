"""The global frame of a set of poses (cryoscape.analysis.pose_frame), checked against the simulator's image
formation: a map moved by (G, t) with compensating poses gives the same images, the drift is recovered from the
poses, and the moved map is brought back."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoscape.analysis.pose_frame import frame_drift, map_in_reference_frame, mean_rotation
from cryoscape.simulate.particles import form_images
from cryoscape.simulate.volumes import render_gaussians

D = 32
CENTRES = np.array([[0.0, 0.0, 0.0], [5.0, -2.0, 1.0], [-3.0, 4.0, -2.0], [1.0, 3.0, 5.0]])  # px from the centre
G = Rotation.from_rotvec(np.deg2rad(12.0) * np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])).as_matrix()
T = np.array([1.5, -1.0, 0.7])  # px


def _map(centres: np.ndarray) -> np.ndarray:
    return render_gaussians(centres, 1.6, [1.0, 0.8, 0.6, 0.9], D, 1.0)


def _poses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return Rotation.random(n, random_state=seed).as_matrix(), rng.normal(scale=1.0, size=(n, 2))


def test_moved_map_with_compensating_poses_gives_the_same_images():
    """The module's convention: a feature at p moves to G^T (p + t) while A -> A G and s -> s + (A t)_xy."""
    A, s = _poses(6)
    moved = (CENTRES + T) @ G  # rows: G^T (p + t)
    ref = form_images(torch.from_numpy(_map(CENTRES)).double(), torch.from_numpy(A), torch.from_numpy(s), None, 1.0)
    A_l, s_l = A @ G, s + (A @ T)[:, :2]
    img = form_images(torch.from_numpy(_map(moved)).double(), torch.from_numpy(A_l), torch.from_numpy(s_l), None, 1.0)
    assert float((img - ref).norm() / ref.norm()) < 0.02  # the projector's interpolation (0.5 % measured)
    # the other sign of t (or G^T for G) does not: the test can tell the conventions apart
    wrong = form_images(torch.from_numpy(_map(moved)).double(), torch.from_numpy(A_l),
                        torch.from_numpy(s - (A @ T)[:, :2]), None, 1.0)
    assert float((wrong - ref).norm() / ref.norm()) > 0.3


def test_frame_drift_recovers_rotation_and_translation():
    A, s = _poses(400, seed=1)
    rng = np.random.default_rng(2)
    noise = Rotation.from_rotvec(rng.normal(scale=np.deg2rad(2.0), size=(400, 3))).as_matrix()
    A_l = noise @ A @ G  # per-particle errors of ~3 degrees on top of the global rotation
    s_l = s + (A @ T)[:, :2] + rng.normal(scale=0.2, size=(400, 2))
    G_est, t_est = frame_drift(A, s, A_l, s_l)
    angle = np.rad2deg(np.arccos(np.clip((np.trace(G_est.T @ G) - 1) / 2, -1, 1)))
    assert angle < 0.3
    assert np.abs(t_est - T).max() < 0.05
    # exact data: exact answer; no drift: identity and zero
    G0, t0 = frame_drift(A, s, A @ G, s + (A @ T)[:, :2])
    assert np.allclose(G0, G, atol=1e-10) and np.allclose(t0, T, atol=1e-10)
    G1, t1 = frame_drift(A, s, A, s)
    assert np.allclose(G1, np.eye(3), atol=1e-12) and np.allclose(t1, 0.0, atol=1e-12)
    assert np.linalg.det(mean_rotation(A, A_l)) == pytest.approx(1.0)


def test_map_in_reference_frame_undoes_the_drift():
    ref = _map(CENTRES)
    moved = _map((CENTRES + T) @ G)
    back = map_in_reference_frame(moved, G, T)
    assert np.corrcoef(back.ravel(), ref.ravel())[0, 1] > 0.995
    assert np.corrcoef(moved.ravel(), ref.ravel())[0, 1] < 0.8  # it had moved
    # the inverse choices do not bring it back
    assert np.corrcoef(map_in_reference_frame(moved, G.T, T).ravel(), ref.ravel())[0, 1] < 0.9
    assert np.corrcoef(map_in_reference_frame(moved, G, -T).ravel(), ref.ravel())[0, 1] < 0.9


def test_report_states_the_drift_of_the_refined_frame():
    """The refined-pose section of the report names the common rotation and translation of the pose changes."""
    from cryoscape.analysis.report import pose_section

    consensus, _ = _poses(200, seed=3)
    learned = consensus @ G  # every particle's change is the global frame motion
    rotvec = Rotation.from_matrix(learned @ np.transpose(consensus, (0, 2, 1))).as_rotvec()  # learned = exp(w) A
    arrays = {"rotations": learned, "rotvec": rotvec, "shift_px": (consensus @ T)[:, :2],
              "refined": np.ones(200, dtype=bool)}
    text = " ".join(pose_section(arrays, epoch=2).paragraphs)
    assert "a rotation of 12.00 degrees" in text
    assert f"translation of ({T[0]:.2f}, {T[1]:.2f}, {T[2]:.2f}) pixels" in text
    # no drift: zero
    still = {**arrays, "rotations": consensus, "rotvec": np.zeros((200, 3)), "shift_px": np.zeros((200, 2))}
    assert "a rotation of 0.00 degrees" in " ".join(pose_section(still, epoch=2).paragraphs)
