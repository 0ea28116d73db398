"""CryoBench metrics: AU-FSC, per-image / per-conformation AU-FSC and neighbourhood similarity."""

from __future__ import annotations

import numpy as np
import pytest

from cryoscape.analysis.evaluate import (
    AU_FSC_MAX,
    au_fsc,
    cryobench_metrics,
    neighborhood_similarity,
    per_conformation_au_fsc,
    per_image_au_fsc,
    sample_images,
)
from cryoscape.analysis.fsc import fsc

D = 16


def _blob(center, width=2.0):
    i = np.arange(D) - D / 2
    zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
    c = np.asarray(center, dtype=np.float64)
    return np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * width ** 2)).astype(np.float32)


class LatentBlobs:
    """Maps a 1-D latent to a blob displaced along x by the latent (a stand-in for a trained decoder)."""

    pixel_size_angstrom = 2.0

    def __init__(self):
        self.calls = []

    def generate_volumes(self, z, batch_size=1):
        z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
        self.calls.append(len(z))
        return np.stack([_blob((float(v[0]), 0.0, 0.0)) for v in z])


def test_au_fsc_of_a_map_with_itself_is_the_maximum_and_of_unrelated_maps_near_zero():
    rng = np.random.default_rng(0)
    a = _blob((1, 0, -1)) + 0.1 * rng.standard_normal((D, D, D)).astype(np.float32)
    assert au_fsc(a, a) == pytest.approx(AU_FSC_MAX, abs=1e-9)
    assert au_fsc(a, 3.0 * a) == pytest.approx(0.5, abs=1e-9)  # FSC ignores scale
    noise_a = rng.standard_normal((32, 32, 32))
    noise_b = rng.standard_normal((32, 32, 32))
    assert abs(au_fsc(noise_a, noise_b)) < 0.03
    # stated normalisation: 0.5 x the trapezoid area over shells mapped onto [0, 1]
    curve = fsc(a, _blob((2, 0, 0)))[1]
    x = 0.5 * np.arange(curve.size) / (curve.size - 1)
    assert au_fsc(a, _blob((2, 0, 0))) == pytest.approx(float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(x))))


def test_per_image_au_fsc_equals_a_hand_computation():
    gen = LatentBlobs()
    states = np.array([0, 0, 1, 1, 2, 2])
    z = np.array([[0.0], [0.5], [3.0], [2.0], [-3.0], [-4.0]])
    gt = {0: _blob((0, 0, 0)), 1: _blob((3, 0, 0)), 2: _blob((-3, 0, 0))}
    res = per_image_au_fsc(gen, z, states, gt, n_images=4, seed=3, mask=None, batch_size=3)
    idx = sample_images(states, 4, seed=3)
    assert res["indices"] == idx.tolist() and res["n_images"] == 4
    hand = []
    for i in idx:
        a, b = _blob((z[i, 0], 0, 0)), gt[int(states[i])]
        curve = fsc(a, b)[1]
        hand.append(0.5 * np.trapezoid(curve, dx=1 / (curve.size - 1)))
    assert res["values"] == pytest.approx(hand)
    assert res["mean"] == pytest.approx(np.mean(hand))
    # exact latents of the true maps score the maximum, displaced ones less
    exact = per_image_au_fsc(gen, np.array([[0.0], [3.0], [-3.0]]), np.array([0, 1, 2]), gt, mask="auto")
    assert exact["mean"] == pytest.approx(0.5, abs=1e-6) and exact["n_images"] == 3
    assert res["mean"] < 0.5


def test_per_conformation_au_fsc_uses_each_state_mean_latent():
    gen = LatentBlobs()
    states = np.array([0, 0, 1, 1])
    z = np.array([[-1.0], [1.0], [2.0], [4.0]])  # means 0 and 3: exactly the true maps
    gt = {0: _blob((0, 0, 0)), 1: _blob((3, 0, 0))}
    res = per_conformation_au_fsc(gen, z, states, gt, mask=None)
    assert res["per_state"] == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    swapped = per_conformation_au_fsc(gen, z, 1 - states, gt, mask=None)
    assert swapped["mean"] < 0.45


def test_neighborhood_similarity_against_definition():
    rng = np.random.default_rng(1)
    states = np.repeat(np.arange(4), 30)
    z = states[:, None] * 10.0 + rng.standard_normal((120, 2))  # well separated clusters of 30
    res = neighborhood_similarity(z, states, ks=(5, 29, 60, 500))
    assert res["ks"] == [5, 29, 60]  # k >= N dropped
    assert res["state"][5] == 1.0 and res["state"][29] == 1.0
    assert res["state"][60] == pytest.approx(29 / 60)
    assert res["state_chance"] == pytest.approx(29 / 119)
    # coordinate version: 1-D latent equal to the coordinate, neighbours within the distance
    c = np.linspace(0, 1, 101)
    res = neighborhood_similarity(c[:, None], coordinate=c, ks=(2, 10), distance=0.0201)
    assert res["coordinate"][2] == 1.0  # the two nearest are 0.01 away
    assert res["coordinate"][10] < 0.5
    shuffled = neighborhood_similarity(rng.permutation(c)[:, None], coordinate=c, ks=(10,), distance=0.0201)
    assert shuffled["coordinate"][10] < 0.15
    # default distance: the neighbouring states of 50 evenly spaced conformations count, the next ones do not
    c50 = np.repeat(np.linspace(0, 1, 50), 4)
    res = neighborhood_similarity(c50[:, None], coordinate=c50, ks=(7, 20))
    assert res["coordinate_distance"] == pytest.approx(0.025)
    assert res["coordinate"][7] == 1.0  # 3 of its own state and 4 of a neighbouring one
    assert res["coordinate"][20] < 0.7


def test_cryobench_metrics_names_what_was_not_computed():
    z = np.arange(20, dtype=np.float64)[:, None]
    out = cryobench_metrics(z, {"coordinate": np.arange(20.0)}, ks=(2,), distance=2.0)
    assert set(out["not_computed"]) == {"per_image_au_fsc", "per_conformation_au_fsc",
                                        "neighborhood_similarity_state"}
    assert "state" in out["not_computed"]["per_image_au_fsc"]
    assert out["neighborhood_similarity"]["coordinate"][2] == 1.0
    gen = LatentBlobs()
    gt = {0: _blob((0, 0, 0)), 1: _blob((3, 0, 0))}
    states = np.repeat([0, 1], 10)
    z = np.where(states == 0, 0.0, 3.0)[:, None]
    out = cryobench_metrics(z, {"state": states}, gen, gt, n_images=5, ks=(3,))
    assert out["per_image_au_fsc"]["n_images"] == 5
    assert out["per_image_au_fsc"]["mean"] == pytest.approx(0.5, abs=1e-6)
    assert out["neighborhood_similarity"]["state"][3] == 1.0
    assert set(out["not_computed"]) == {"neighborhood_similarity_coordinate"}


def test_report_shows_cryobench_metrics_and_what_was_not_computed():
    from cryoscape.analysis.evaluate import format_cryobench
    from cryoscape.analysis.report import evaluation_section

    cb = {"per_image_au_fsc": {"mean": 0.31, "std": 0.02, "median": 0.3, "n_images": 100, "seed": 0,
                               "mask": "auto"},
          "neighborhood_similarity": {"ks": [10], "state": {"10": 0.42}, "state_chance": 0.02},
          "not_computed": {"per_conformation_au_fsc": "needs ground-truth maps (gt/state_XXX.mrc)"}}
    sec = evaluation_section({"epoch": 3, "n_particles": 100, "cryobench": cb})
    cells = [" ".join(str(c) for c in row) for t in sec.tables for row in t.rows]
    assert any("per-image AU-FSC" in c and "0.310" in c and "100 sampled images" in c for c in cells)
    assert any("k = 10" in c and "0.420" in c for c in cells)
    assert any("not computed" in c and "gt/state_XXX.mrc" in c for c in cells)
    text = "\n".join(format_cryobench(cb))
    assert "0.310" in text and "not computed: per_conformation_au_fsc" in text
