"""Evaluation against ground truth: ARI / confusion / matched accuracy, cluster entropy, Spearman, map scores."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest
from scipy.special import comb

from cryoscape.analysis.evaluate import (
    cluster_entropy,
    clustering_scores,
    continuous_correlation,
    evaluate_run,
    format_evaluation,
    hungarian_accuracy,
    map_scores,
    read_labels,
)
from cryoscape.errors import InputError


class FakeGenerator:
    """Volumes ``(n, 16, 16, 16)``: a fixed core blob plus a blob whose position follows z[:2]."""

    D, zdim, pixel_size_angstrom = 16, 2, 3.0

    def generate_volumes(self, z, batch_size=1):
        z = np.asarray(z, dtype=np.float64).reshape(-1, self.zdim)
        i = np.arange(self.D) - self.D // 2
        zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
        core = np.exp(-(xx ** 2 + yy ** 2 + zz ** 2) / (2 * 2.0 ** 2))
        out = []
        for x0, y0 in z:
            arm = np.exp(-((xx - 2.5 * x0) ** 2 + (yy - 2.5 * y0) ** 2 + zz ** 2) / (2 * 1.5 ** 2))
            out.append(core + arm)
        return np.asarray(out, dtype=np.float32)


STATE_MEANS = np.array([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.8]])


def ari_by_pair_counting(a, b):
    """Adjusted Rand index from its definition (Hubert & Arabie 1985)."""
    a, b = np.asarray(a), np.asarray(b)
    table = np.array([[np.sum((a == i) & (b == j)) for j in np.unique(b)] for i in np.unique(a)])
    index = comb(table, 2).sum()
    ra, rb = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
    expected = ra * rb / comb(len(a), 2)
    return (index - expected) / (0.5 * (ra + rb) - expected)


def test_clustering_scores_against_definitions():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, size=200)
    pred = np.array([7, 2, 5])[true]  # a perfect clustering under other names
    noisy = pred.copy()
    flip = rng.random(200) < 0.2
    noisy[flip] = rng.choice([7, 2, 5], size=flip.sum())
    perfect = clustering_scores(pred, true)
    assert perfect["ari"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0
    assert perfect["matching"] == {7: 0, 2: 1, 5: 2}
    s = clustering_scores(noisy, true)
    assert s["ari"] == pytest.approx(ari_by_pair_counting(noisy, true))
    cm = np.array(s["confusion"])
    for i, t in enumerate(s["states"]):
        for j, c in enumerate(s["clusters"]):
            assert cm[i, j] == np.sum((true == t) & (noisy == c))
    # matched accuracy = the best of all one-to-one relabelings (brute force over the 3! matchings)
    best = max(sum(cm[i, p[i]] for i in range(3)) for p in permutations(range(3))) / 200
    assert s["accuracy"] == pytest.approx(best)


def test_hungarian_accuracy_rectangular():
    cm = np.array([[5, 1, 0, 9], [0, 4, 7, 0]])  # 2 states, 4 clusters
    acc, pairs = hungarian_accuracy(cm)
    assert acc == pytest.approx((9 + 7) / cm.sum())
    assert {tuple(p) for p in pairs} == {(0, 3), (1, 2)}


def test_cluster_entropy_hand_values():
    true = np.repeat(np.arange(8), 10)
    mixed = np.tile(np.arange(2), 40)  # two clusters, each an even mix of the 8 states
    e = cluster_entropy(mixed, true)
    assert e["mean"] == pytest.approx(math.log10(8)) == pytest.approx(0.903, abs=1e-3)  # OPUS-DSD's baseline
    assert e["uniform"] == pytest.approx(math.log10(8))
    assert cluster_entropy(true, true)["mean"] == 0.0
    # one pure cluster and one 50/50 cluster; natural log on request
    t = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    c = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    e = cluster_entropy(c, t, base=math.e)
    assert e["per_cluster"] == {0: 0.0, 1: pytest.approx(math.log(2))}
    assert e["mean"] == pytest.approx(math.log(2) / 2)
    p = np.array([4, 2, 2]) / 8
    assert e["marginal"] == pytest.approx(-(p * np.log(p)).sum())


def test_continuous_correlation():
    rng = np.random.default_rng(1)
    coord = rng.uniform(0, 1, 300)
    z = np.column_stack([-np.exp(3 * coord), rng.normal(0, 0.01, 300), rng.normal(0, 0.01, 300)])
    r = continuous_correlation(z, coord)
    assert r["abs_spearman_pc1"] == pytest.approx(1.0)  # monotone decreasing -> |rho| = 1
    assert r["per_dimension"][0] == pytest.approx(1.0) and r["per_dimension"][1] < 0.3
    r1 = continuous_correlation(coord[:, None] ** 3, coord)
    assert r1["abs_spearman_pc1"] == pytest.approx(1.0)


def _fake_run(tmp_path, n_total=120, seed=0):
    """A run trained on a shuffled subset of a simulation with 3 states (latents near the state means)."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 3, size=n_total)
    coordinate = STATE_MEANS[state, 0] + rng.normal(0, 0.01, n_total)  # follows the x position
    indices = rng.permutation(n_total)[:90]
    z = STATE_MEANS[state[indices]] + rng.normal(0, 0.15, size=(90, 2))
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    np.save(run / "latents" / "epoch_002.npy", z.astype(np.float32))
    np.save(run / "indices.npy", indices.astype(np.int64))
    np.savez(tmp_path / "labels.npz", state=state, coordinate=coordinate)
    gt = {s: FakeGenerator().generate_volumes(STATE_MEANS[s:s + 1])[0] for s in range(3)}
    return run, tmp_path / "labels.npz", gt, state, indices


def test_evaluate_run_on_a_perfectly_separated_run(tmp_path):
    run, labels, gt, state, indices = _fake_run(tmp_path)
    res = evaluate_run(run, labels, gt, FakeGenerator(), batch_size=2)
    assert res["epoch"] == 2 and res["n_particles"] == 90 and res["zdim"] == 2
    c = res["clustering"]
    assert c["k"] == 3 and c["ari"] == pytest.approx(1.0) and c["accuracy"] == 1.0
    assert sorted(np.array(c["confusion"]).max(axis=1).tolist()) == sorted(np.bincount(state[indices]).tolist())
    assert res["entropy"]["mean"] == 0.0
    assert res["continuous"]["abs_spearman_pc1"] > 0.8
    maps = res["maps"]
    for s in ("0", "1", "2"):
        m = maps["states"][s]
        assert m["correlation"] > 0.98 and m["fsc_auc"] > 0.9
        assert m["resolution_0.5_angstrom"] == pytest.approx(2 * 3.0 * 8 / 7, rel=0.01)  # never below: last shell
    cm = np.array(maps["correlation_matrix"])
    assert cm.shape == (3, 3) and np.all(np.argmax(cm, axis=1) == [0, 1, 2])
    for cl, info in maps["centers"].items():
        assert info["state"] == c["matching"][cl] and info["correlation"] > 0.95
    text = format_evaluation(res)
    assert "adjusted Rand index     1.000" in text and "state  FSC-AUC" in text


def test_evaluate_run_uses_indices(tmp_path):
    run, labels, gt, state, indices = _fake_run(tmp_path)
    # the same latents scored against the unselected (first 90) labels give a poor ARI: the selection matters
    wrong = {"state": state[:90]}
    np.save(run / "indices.npy", np.arange(90))
    assert evaluate_run(run, wrong)["clustering"]["ari"] < 0.2
    np.save(run / "indices.npy", np.arange(90) + 100)
    with pytest.raises(InputError, match="refers to particle"):
        evaluate_run(run, labels)


def test_map_scores_resamples_gt_and_checks_field_of_view():
    gen = FakeGenerator()
    import torch

    from cryoscape.imaging.fft import resample_volume

    z = np.repeat(STATE_MEANS, 5, axis=0)
    states = np.repeat(np.arange(3), 5)
    gt32 = {s: resample_volume(torch.from_numpy(gen.generate_volumes(STATE_MEANS[s:s + 1])[0]), 32).numpy()
            for s in range(3)}
    res = map_scores(gen, z, states, gt32, gt_pixel_size_angstrom=1.5)
    assert all(v["correlation"] > 0.999 for v in res["states"].values())
    with pytest.raises(InputError, match="span"):
        map_scores(gen, z, states, gt32, gt_pixel_size_angstrom=3.0)


def test_read_labels_errors(tmp_path):
    np.savez(tmp_path / "a.npz", other=np.arange(3))
    with pytest.raises(InputError, match="neither"):
        read_labels(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", state=np.arange(3), coordinate=np.arange(4.0))
    with pytest.raises(InputError, match="differ in length"):
        read_labels(tmp_path / "b.npz")
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "missing.npz")
