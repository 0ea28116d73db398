"""End-to-end runs of fsc, evaluate, pc-/graph-/direct-traversal (fake model, no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoscape.analysis.fsc import fsc, resolution_at
from cryoscape.analysis.latent import pc_traversal_points
from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc, write_mrc


class FakeGenerator:
    D, zdim, pixel_size_angstrom = 16, 3, 4.0

    def generate_volumes(self, z, batch_size=1):
        z = np.asarray(z, dtype=np.float64).reshape(-1, self.zdim)
        i = np.arange(self.D) - self.D // 2
        zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
        return np.asarray([np.exp(-((xx - a) ** 2 + (yy - b) ** 2 + (zz - c) ** 2) / 5.0) for a, b, c in z],
                          dtype=np.float32)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    state = np.repeat([0, 1], 60)
    z = np.array([[-1.2, 0, 0], [1.2, 0, 0]])[state] + rng.normal(0, 0.5, size=(120, 3))
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    np.save(run / "latents" / "epoch_001.npy", z.astype(np.float32))
    np.save(run / "indices.npy", np.arange(120))
    monkeypatch.setattr("cryoscape.analysis.volume_space.load_generator", lambda *a, **k: FakeGenerator())
    sim = tmp_path / "sim"
    (sim / "gt").mkdir(parents=True)
    np.savez(sim / "labels.npz", state=state, coordinate=np.where(state == 0, 0.0, 1.0))
    for s, centre in enumerate([[-1.2, 0, 0], [1.2, 0, 0]]):
        write_mrc(sim / "gt" / f"state_{s:03d}.mrc", FakeGenerator().generate_volumes([centre])[0], 4.0)
    return run, sim, z.astype(np.float32)


def test_fsc_command(tmp_path, capsys):
    rng = np.random.default_rng(1)
    i = np.arange(24) - 12
    zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
    signal = np.exp(-(xx ** 2 + 2 * yy ** 2 + zz ** 2) / 8.0) + 0.5 * np.exp(-((xx - 5) ** 2 + yy ** 2 + zz ** 2) / 3)
    a = signal + rng.normal(0, 0.02, signal.shape)
    b = signal + rng.normal(0, 0.02, signal.shape)
    write_mrc(tmp_path / "a.mrc", a, 2.0)
    write_mrc(tmp_path / "b.mrc", b, 2.0)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--mask", "auto",
                 "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    table = np.loadtxt(tmp_path / "out" / "fsc.txt")
    assert table.shape == (12, 6)  # freq, resolution, unmasked, masked, randomised, corrected
    freqs, curve = fsc(a.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(table[:, 0], freqs / 2.0, rtol=1e-5)
    np.testing.assert_allclose(table[1:, 1], 2.0 / freqs[1:], rtol=1e-5)
    np.testing.assert_allclose(table[:, 2], curve, atol=1e-5)
    mask, info = read_mrc(tmp_path / "out" / "mask.mrc")
    assert info.voxel_size_angstrom == pytest.approx(2.0) and mask.max() == 1.0
    res = resolution_at(freqs, table[:, 5], 0.143, 2.0)
    assert f"resolution at FSC 0.143: {res:.2f} A" in out
    assert f"map correlation: {np.corrcoef(a.ravel(), b.ravel())[0, 1]:.4f}" in out
    assert (tmp_path / "out" / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    # without a mask: three columns; mismatched boxes: a clean error
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "-o", str(tmp_path / "o2")]) == 0
    assert np.loadtxt(tmp_path / "o2" / "fsc.txt").shape == (12, 3)
    write_mrc(tmp_path / "c.mrc", a[:16, :16, :16], 2.0)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "c.mrc"), "-o", str(tmp_path / "o3")]) == 2
    assert "shape" in capsys.readouterr().err


def test_pc_traversal_command(run_dir, tmp_path):
    run, _, z = run_dir
    out = tmp_path / "pcs"
    assert main(["pc-traversal", str(run), "--pc", "1", "2", "-n", "5", "-o", str(out)]) == 0
    for pc in (1, 2):
        zv = np.loadtxt(out / f"pc{pc}" / "z_values.txt")
        np.testing.assert_allclose(zv, pc_traversal_points(z, pc, 5), rtol=1e-4, atol=1e-5)
        assert (out / f"pc{pc}" / "pca_traversal.png").is_file()
        vol, info = read_mrc(out / f"pc{pc}" / "vol_005.mrc")
        assert info.voxel_size_angstrom == pytest.approx(4.0)
        np.testing.assert_allclose(vol, FakeGenerator().generate_volumes(zv[4:5])[0], atol=1e-4)
    assert not (out / "pc1" / "vol_006.mrc").exists()
    # a bare .npy gives z values only
    np.save(tmp_path / "z.npy", z)
    assert main(["pc-traversal", str(tmp_path / "z.npy"), "--pc", "3", "-o", str(tmp_path / "p3")]) == 0
    assert np.loadtxt(tmp_path / "p3" / "pc3" / "z_values.txt").shape == (10, 3)
    assert not list((tmp_path / "p3" / "pc3").glob("*.mrc"))
    assert main(["pc-traversal", str(run), "--pc", "4", "-o", str(tmp_path / "p4")]) == 2


def test_graph_and_direct_traversal_commands(run_dir, tmp_path):
    run, _, z = run_dir
    a = int(np.argmin(np.linalg.norm(z - [-1.6, 0, 0], axis=1)))  # two points of the first blob
    b = int(np.argmin(np.linalg.norm(z - [-0.8, 0, 0], axis=1)))
    out = tmp_path / "graph"
    assert main(["graph-traversal", str(run), "--anchors", str(a), str(b), "-o", str(out)]) == 0
    idx = np.loadtxt(out / "path_indices.txt", dtype=int)
    assert idx[0] == a and idx[-1] == b
    np.testing.assert_allclose(np.loadtxt(out / "z_values.txt"), z[idx], rtol=1e-4, atol=1e-5)
    assert (out / "path_pca.png").is_file()
    assert len(list(out.glob("vol_*.mrc"))) == len(idx)
    out = tmp_path / "direct"
    assert main(["direct-traversal", str(run), "--anchors", str(a), str(b), "-n", "6", "--no-volumes",
                 "-o", str(out)]) == 0
    zv = np.loadtxt(out / "z_values.txt")
    assert zv.shape == (6, 3)
    np.testing.assert_allclose(zv[[0, -1]], z[[a, b]], rtol=1e-4, atol=1e-5)
    assert not list(out.glob("*.mrc"))
    assert main(["direct-traversal", str(run), "--z-start", "0", "0", "0", "--z-end", "1", "1", "1", "-n", "3",
                 "-o", str(tmp_path / "d2")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "d2" / "z_values.txt"), [[0] * 3, [0.5] * 3, [1] * 3])
    assert len(list((tmp_path / "d2").glob("vol_*.mrc"))) == 3
    assert main(["direct-traversal", str(run), "--z-start", "0", "0", "-o", str(tmp_path / "d3")]) == 2


def test_evaluate_command(run_dir, tmp_path, capsys):
    run, sim, _ = run_dir
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--truth", str(sim), "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["clustering"]["ari"] > 0.8 and res["clustering"]["k"] == 2
    assert res["maps"]["states"]["0"]["correlation"] > 0.9
    assert res["continuous"]["abs_spearman_pc1"] > 0.7
    assert "adjusted Rand index" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--truth", str(tmp_path), "-o", str(out), "--overwrite"]) == 2
    assert "labels.npz" in capsys.readouterr().err
