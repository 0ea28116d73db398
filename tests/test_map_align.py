"""Map alignment (analysis.align): known rotations, shifts and hand flips are recovered; fsc and evaluate --align."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoscape.analysis.align import MIRROR, MapAlignment, align_maps
from cryoscape.analysis.fsc import fsc
from cryoscape.analysis.maps import map_correlation
from cryoscape.errors import InputError
from cryoscape.imaging.so3_grid import geodesic_distance_deg

# an asymmetric set of gaussian blobs (no rotational symmetry, chiral): centres (x, y, z) in voxels at D = 32
CENTRES = np.array([[0, 0, 0], [5, 0, 0], [0, 8, 0], [0, 0, -6], [4, 4, 3], [-5, 2, 4]], dtype=np.float64)
WIDTHS = np.array([3, 2, 2, 2.5, 1.5, 1.8])
WEIGHTS = np.array([1, 0.8, 0.7, 0.9, 0.6, 0.5])
APIX = 2.0


def blobs(D: int, L: np.ndarray | None = None, t_px=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The blob map ``(D, D, D)`` with every centre ``p`` moved to ``L p + t`` (``L`` a rotation, maybe mirrored),
    evaluated analytically (no interpolation): the map ``M`` transformed as ``M(L^-1 (r - t))``."""
    s = D / 32
    c = CENTRES * s
    if L is not None:
        c = c @ np.asarray(L).T
    c = c + np.asarray(t_px)
    i = np.arange(D) - D // 2
    z, y, x = np.meshgrid(i, i, i, indexing="ij")
    vol = np.zeros((D, D, D))
    for (cx, cy, cz), w, a in zip(c, WIDTHS * s, WEIGHTS, strict=True):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * w ** 2))
    return vol.astype(np.float32)


def test_apply_follows_the_stated_convention():
    """``aligned(r) = M(F^h R^T (r - t))``: a feature at ``p`` goes to ``R F^h p + t`` (t in A, (x, y, z))."""
    R = Rotation.from_rotvec(np.deg2rad([20.0, -35.0, 50.0])).as_matrix()
    t_px = np.array([1.5, -2.0, 0.75])
    M = blobs(32)
    for flipped in (False, True):
        a = MapAlignment(R, t_px * APIX, flipped, np.nan, np.nan, APIX)
        expected = blobs(32, R @ MIRROR if flipped else R, t_px)
        assert map_correlation(a.apply(M), expected) > 0.9995
        # the mirror is of the z axis (first array axis): without rotation and shift it is a flip of that axis
        m = MapAlignment(np.eye(3), np.zeros(3), flipped, np.nan, np.nan, APIX).apply(M, order=1)
        np.testing.assert_allclose(m[1:], (M[::-1][:-1] if flipped else M[1:]), atol=1e-6)
    assert a.to_dict()["hand_flipped"] is True and a.to_dict()["correlation"] is None


def _check(result: MapAlignment, R, t_px, flipped: bool):
    assert result.hand_flipped is flipped
    assert float(geodesic_distance_deg(result.rotation, R)) < 1.0
    np.testing.assert_allclose(result.translation_angstrom / APIX, t_px, atol=0.2)
    assert np.linalg.det(result.rotation) == pytest.approx(1.0)


def test_recovers_a_known_rotation_and_translation():
    R = Rotation.from_rotvec(np.deg2rad([60.0, -100.0, 35.0])).as_matrix()
    t_px = np.array([2.3, -1.6, 0.8])
    M, ref = blobs(32), blobs(32, R, t_px)
    result = align_maps(M, ref, APIX)
    _check(result, R, t_px, False)
    assert result.correlation > 0.999
    assert result.correlation_other_hand < result.correlation - 0.01
    # the reported Euler angles are RELION's for the rotation matrix
    from cryoscape.imaging.rotations import euler_relion_to_matrix

    np.testing.assert_allclose(euler_relion_to_matrix(result.euler_deg)[0], result.rotation, atol=1e-9)
    # noise-free: after alignment the FSC is ~1 wherever the map has power (to 0.7 x Nyquist here)
    _, curve = fsc(result.apply(M), ref)
    assert curve[: int(0.7 * 16)].min() > 0.98
    _, before = fsc(M, ref)
    assert before[1:8].mean() < 0.5


def test_recovers_a_mirrored_rotated_map_with_the_hand_flipped():
    R = Rotation.from_rotvec(np.deg2rad([-30.0, 80.0, 120.0])).as_matrix()
    t_px = np.array([-1.2, 0.4, 1.7])
    M, ref = blobs(24), blobs(24, R @ MIRROR, t_px)
    result = align_maps(M, ref, APIX)
    _check(result, R, t_px, True)
    assert result.correlation > 0.995 > result.correlation_other_hand
    text = result.describe()
    assert "hand flipped" in text and "rotation (RELION rot, tilt, psi)" in text
    # without the flip the hand cannot be matched: the best rotation fits clearly worse
    kept = align_maps(M, ref, APIX, flip=False)
    assert kept.hand_flipped is False and kept.correlation < result.correlation - 0.01
    assert "hand not searched" in kept.describe()


def test_bad_inputs_are_refused_in_one_line():
    M = blobs(24)
    with pytest.raises(InputError, match="differ in box"):
        align_maps(M, blobs(32))
    with pytest.raises(InputError, match="constant"):
        align_maps(np.zeros((24, 24, 24)), M)
    with pytest.raises(InputError, match="even"):
        align_maps(M[:23, :23, :23], M[:23, :23, :23])


def test_cli_fsc_align_reports_rotation_translation_and_hand(tmp_path, capsys):
    from cryoscape.cli.main import main
    from cryoscape.io.mrc import read_mrc, write_mrc

    R = Rotation.from_rotvec(np.deg2rad([40.0, 25.0, -70.0])).as_matrix()
    t_px = np.array([1.0, 0.5, -1.5])
    write_mrc(tmp_path / "a.mrc", blobs(24), voxel_size_angstrom=APIX)
    write_mrc(tmp_path / "b.mrc", blobs(24, R @ MIRROR, t_px), voxel_size_angstrom=APIX)
    out = tmp_path / "out"
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--align", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rotation (RELION rot, tilt, psi)" in text and "hand flipped" in text and "translation" in text
    assert "after alignment" in text
    info = json.loads((out / "align.json").read_text())
    assert info["hand_flipped"] is True
    assert geodesic_distance_deg(np.array(info["rotation_matrix"]), R) < 2.0
    np.testing.assert_allclose(np.array(info["translation_angstrom"]) / APIX, t_px, atol=0.5)
    assert set(info["euler_relion_deg"]) == {"rot", "tilt", "psi"}
    aligned, _ = read_mrc(out / "aligned.mrc")
    assert map_correlation(aligned, blobs(24, R @ MIRROR, t_px)) > 0.99
    table = np.loadtxt(out / "fsc.txt")
    assert table[: 8, 2].min() > 0.98
    assert (out / "fsc.png").is_file()
    # --no-flip without --align is refused in one line
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--no-flip", "-o",
                 str(tmp_path / "o2")]) == 2


class _RotatedGenerator:
    """Maps of two states at latent z < 0 (state 0) or z >= 0 (state 1), in a rotated, shifted and mirrored frame."""

    D, zdim, pixel_size_angstrom = 24, 1, APIX
    L = Rotation.from_rotvec(np.deg2rad([70.0, 10.0, -40.0])).as_matrix() @ MIRROR
    t_px = np.array([0.5, -1.0, 1.0])

    def generate_volumes(self, z, batch_size=1):
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        second = blobs(24, self.L @ np.diag([1.0, -1.0, 1.0]), self.t_px)  # a second, different map
        return np.stack([blobs(24, self.L, self.t_px) if v < 0 else second for v in z])


def test_evaluate_run_aligns_the_maps_to_the_truth(tmp_path):
    from cryoscape.analysis.evaluate import evaluate_run, format_evaluation

    rng = np.random.default_rng(0)
    state = np.repeat([0, 1], [40, 20])
    z = np.where(state == 0, -1.0, 1.0) + rng.normal(0, 0.1, state.size)
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    np.save(run / "latents" / "epoch_001.npy", z[:, None].astype(np.float32))
    np.savez(tmp_path / "labels.npz", state=state)
    gt = {0: blobs(24), 1: blobs(24, np.diag([1.0, -1.0, 1.0]))}
    plain = evaluate_run(run, tmp_path / "labels.npz", gt, _RotatedGenerator(), n_images=8)
    res = evaluate_run(run, tmp_path / "labels.npz", gt, _RotatedGenerator(), n_images=8, align=True)
    a = res["alignment"]
    assert a["state"] == 0 and a["hand_flipped"] is True
    # the transform undoes the generator's L = R0 F: R F = L^-1 = F R0^T, so R = F R0^T F
    R0 = _RotatedGenerator.L @ MIRROR
    R_true = MIRROR @ R0.T @ MIRROR
    assert geodesic_distance_deg(np.array(a["rotation_matrix"]), R_true) < 2.0
    for s in ("0", "1"):
        assert res["maps"]["states"][s]["correlation"] > 0.99
        assert plain["maps"]["states"][s]["correlation"] < 0.8
    assert res["cryobench"]["per_conformation_au_fsc"]["mean"] > plain["cryobench"]["per_conformation_au_fsc"]["mean"]
    text = format_evaluation(res)
    assert "maps aligned to the truth" in text and "hand flipped" in text


def test_cli_evaluate_align_reports_the_transform(tmp_path, monkeypatch, capsys):
    from cryoscape.cli.main import main
    from cryoscape.io.mrc import write_mrc

    state = np.repeat([0, 1], [30, 20])
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    np.save(run / "latents" / "epoch_001.npy", np.where(state == 0, -1.0, 1.0)[:, None].astype(np.float32))
    sim = tmp_path / "sim"
    (sim / "gt").mkdir(parents=True)
    np.savez(sim / "labels.npz", state=state)
    write_mrc(sim / "gt" / "state_000.mrc", blobs(24), APIX)
    write_mrc(sim / "gt" / "state_001.mrc", blobs(24, np.diag([1.0, -1.0, 1.0])), APIX)
    monkeypatch.setattr("cryoscape.analysis.volume_space.load_generator", lambda *a, **k: _RotatedGenerator())
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--truth", str(sim), "--align", "--n-images", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "maps aligned to the truth" in text and "hand flipped" in text
    res = json.loads(out.read_text())
    assert res["alignment"]["hand_flipped"] is True and res["alignment"]["correlation"] > 0.99
    assert res["maps"]["states"]["1"]["correlation"] > 0.99
    assert main(["evaluate", str(run), "--truth", str(sim), "--align", "--no-maps", "-o", str(out),
                 "--overwrite"]) == 2
    assert "--no-maps" in capsys.readouterr().err
