"""cryoDRGN pickles: pose/CTF round trips, unit conversions, and refusal of pickles that would run code."""

import os
import pickle

import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.io.pkl import load_pickle, read_ctf_pkl, read_pose_pkl, write_ctf_pkl, write_pose_pkl
from cryoscape.metadata import CTFParams, Poses


class Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "pose.pkl"
    path.write_bytes(pickle.dumps((Malicious(marker), np.zeros((1, 2)))))
    with pytest.raises(InputError, match=r"pose\.pkl.*refusing to load.*(posix|os|nt)\.system"):
        read_pose_pkl(path, 16, 1.0)
    assert not marker.exists()
    # sanity check of the test itself: an ordinary unpickler would have run the command
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_other_globals_refused(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"f": print}))
    with pytest.raises(InputError, match=r"x\.pkl.*builtins\.print"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_load(tmp_path, protocol):
    obj = (np.arange(6, dtype=np.float32).reshape(2, 3), [np.int64(4), 2.5], np.zeros(2, dtype=[("a", "<f4")]))
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    back = load_pickle(path)
    np.testing.assert_array_equal(back[0], obj[0])
    assert back[1] == [4, 2.5]
    assert back[2].dtype == obj[2].dtype


def test_pose_pkl_round_trip_and_units(tmp_path):
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3, 3)))
    rots = q * np.sign(np.linalg.det(q))[:, None, None]
    poses = Poses(rots, np.array([[1.0, -2.0], [0.5, 0.0], [3.2, 6.4]]))
    path = write_pose_pkl(tmp_path / "pose.pkl", poses, D=32, pixel_size_angstrom=2.0)
    rot, trans = pickle.loads(path.read_bytes())
    assert rot.shape == (3, 3, 3) and trans.shape == (3, 2)
    np.testing.assert_allclose(trans, poses.shifts_angstrom / 64.0, rtol=1e-6)  # fraction of a 64 A box
    back = read_pose_pkl(path, 32, 2.0)
    np.testing.assert_allclose(back.rotations, rots, atol=1e-6)
    np.testing.assert_allclose(back.shifts_angstrom, poses.shifts_angstrom, atol=1e-5)
    # rotations only
    only = tmp_path / "rot.pkl"
    only.write_bytes(pickle.dumps(rots))
    np.testing.assert_array_equal(read_pose_pkl(only, 32, 2.0).shifts_angstrom, 0.0)


def test_pose_pkl_bad(tmp_path):
    path = tmp_path / "pixels.pkl"
    path.write_bytes(pickle.dumps((np.tile(np.eye(3), (2, 1, 1)), np.array([[5.0, 0.0], [0.0, 0.0]]))))
    with pytest.raises(InputError, match=r"pixels\.pkl.*fraction of the box"):
        read_pose_pkl(path, 16, 1.0)
    path = tmp_path / "shape.pkl"
    path.write_bytes(pickle.dumps(np.zeros((4, 3))))
    with pytest.raises(InputError, match=r"shape\.pkl.*not a cryoDRGN pose file"):
        read_pose_pkl(path, 16, 1.0)
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(np.zeros((4, 3, 3)))[:40])
    with pytest.raises(InputError, match=r"cut\.pkl.*not a readable pose file"):
        read_pose_pkl(path, 16, 1.0)


def test_ctf_pkl_round_trip_layout(tmp_path):
    ctf = CTFParams.create([12000.0, 15000.0], [11000.0, 14900.0], [33.0, -12.0], 300.0, 2.7, 0.1, [0.0, 90.0])
    path = write_ctf_pkl(tmp_path / "ctf.pkl", ctf, D=128, pixel_size_angstrom=1.35)
    raw = pickle.loads(path.read_bytes())
    assert raw.dtype == np.float32 and raw.shape == (2, 9)
    np.testing.assert_allclose(raw[1], [128, 1.35, 15000.0, 14900.0, -12.0, 300.0, 2.7, 0.1, 90.0], rtol=1e-6)
    back, D, apix = read_ctf_pkl(path)
    assert D == 128 and apix == pytest.approx(1.35)
    np.testing.assert_allclose(back.defocus_v_angstrom, [11000.0, 14900.0])
    np.testing.assert_allclose(back.phase_shift_deg, [0.0, 90.0])
    np.testing.assert_array_equal(back.scale, 1.0)


def test_ctf_pkl_bad(tmp_path):
    path = tmp_path / "eight.pkl"
    path.write_bytes(pickle.dumps(np.zeros((3, 8), np.float32)))
    with pytest.raises(InputError, match=r"eight\.pkl.*\(N, 9\)"):
        read_ctf_pkl(path)
    with pytest.raises(InputError, match=r"absent\.pkl.*not found"):
        read_ctf_pkl(tmp_path / "absent.pkl")
