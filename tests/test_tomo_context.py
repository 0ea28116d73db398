"""Tomogram context (clusters per tomogram, nearest neighbours) and the ChimeraX placement scripts."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from cryoscape.analysis.tomogram import (
    chimerax_script,
    cluster_colors,
    cluster_distribution,
    nearest_neighbours,
    neighbour_summary,
    read_placements,
)
from cryoscape.cli.main import main
from cryoscape.imaging.rotations import euler_relion_to_matrix


def test_nearest_neighbours_distance_and_direction_in_the_particle_frame():
    x = np.array([[0.0, 0, 0], [100, 0, 0], [0, 0, 500], [10, 10, 10], [1000, 0, 0]])
    tomos = np.array(["a", "a", "a", "b", "b"])
    rz90 = euler_relion_to_matrix([[90.0, 0, 0]])[0]  # A: particle frame -> tomogram frame
    rot = np.stack([rz90, np.eye(3), np.eye(3), np.eye(3), np.eye(3)])
    nn = nearest_neighbours(x, tomos, rot)
    np.testing.assert_array_equal(nn["index"], [1, 0, 0, 4, 3])  # never across tomograms
    np.testing.assert_allclose(nn["distance_angstrom"], [100, 100, 500, math.dist(x[3], x[4]), math.dist(x[3], x[4])])
    np.testing.assert_allclose(nn["direction"][0], rz90.T @ [1.0, 0, 0], atol=1e-12)  # A^T (x_nn - x) / |.|
    np.testing.assert_allclose(nn["direction"][1], [-1.0, 0, 0])
    alone = nearest_neighbours(x[:1], tomos[:1])
    assert alone["index"][0] == -1 and np.isnan(alone["distance_angstrom"][0])


def test_neighbour_summary_and_distribution():
    # a "polysome": every cluster-0 particle has its neighbour 80 A along its own +x
    x = np.array([[0.0, 0, 0], [80, 0, 0], [1000, 0, 0], [1080, 0, 0], [5000, 5000, 0]])
    tomos = np.array(["t1"] * 5)
    labels = np.array([0, 0, 0, 0, 1])
    nn = nearest_neighbours(x, tomos)
    summary = neighbour_summary(nn, labels).set_index("cluster")
    assert summary.loc[0, "median_distance_angstrom"] == pytest.approx(80.0)
    assert summary.loc[0, "same_cluster_fraction"] == 1.0
    assert summary.loc[0, "resultant_length"] == pytest.approx(0.0, abs=1e-12)  # +x and -x cancel
    assert summary.loc[1, "resultant_length"] == pytest.approx(1.0)
    table = cluster_distribution(np.array(["b", "a", "a", "b", "b"]), np.array([0, 2, 2, 0, 1]))
    assert list(table.columns) == [0, 1, 2] and list(table.index) == ["a", "b"]
    np.testing.assert_array_equal(table.to_numpy(), [[0, 0, 2], [2, 1, 0]])


def test_chimerax_markers_and_map_placement():
    coords = np.array([[10.0, 20, 30], [40, 50, 60]])
    labels = np.array([0, 1])
    colors = cluster_colors(2)
    text = chimerax_script("TS_1", coords, labels, colors, marker_radius=25)
    markers = re.findall(r"marker #(\d+) position ([\d.,-]+) color (#[0-9a-f]{6}) radius 25", text)
    assert [(m[0], m[1]) for m in markers] == [("100", "10.00,20.00,30.00"), ("101", "40.00,50.00,60.00")]
    rot = euler_relion_to_matrix([[30.0, 60, 90], [0, 0, 0]])
    text = chimerax_script("TS_1", coords, labels, colors, rot, volumes={0: ("a.mrc", 16, 4.0), 1: ("b.mrc", 16, 4.0)},
                           level=0.5)
    mats = re.findall(r"view matrix models #(\d+),([\d.,e-]+)", text)
    assert [m[0] for m in mats] == ["1", "2"]
    for (_model, numbers), c, A in zip(mats, coords, rot, strict=True):
        M = np.array([float(v) for v in numbers.split(",")]).reshape(3, 4)
        np.testing.assert_allclose(M[:, :3], A, atol=1e-6)
        centre = np.full(3, 8 * 4.0)  # map centre (D // 2) * voxel
        np.testing.assert_allclose(M[:, :3] @ centre + M[:, 3], c, atol=1e-4)  # map centre -> particle centre
    assert "open a.mrc" in text and "volume #2 level 0.5 step 1" in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    sim = tmp_path_factory.mktemp("sim")
    assert main(["simulate-tilt", "--preset", "tilt4", "--size", "tiny", "--tomograms", "2", "--optimisation-set",
                 "-o", str(sim)]) == 0
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--model", "tomodrgn", "--zdim",
                 "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1",
                 "--tilt-embed-dim", "4", "-b", "4", "--no-progress"]) == 0
    return sim, run


def test_placements_agree_between_formats(trained):
    sim, _ = trained
    vs = read_placements(sim / "particles_volumeseries.star")
    opt = read_placements(sim / "particles_optimisation_set.star")
    img = read_placements(sim / "particles.star")
    np.testing.assert_allclose(vs.coordinates_angstrom, opt.coordinates_angstrom, atol=1e-3)
    np.testing.assert_allclose(vs.rotations, opt.rotations, atol=1e-5)
    assert list(vs.tomograms) == list(opt.tomograms) == list(img.tomograms)
    assert img.rotations is None and len(img) == 20
    # the image series carries coordinates as written (origin not removed): within the 2 px origins
    assert np.abs(img.coordinates_angstrom - vs.coordinates_angstrom).max() <= 2 * 10.0 * math.sqrt(3) + 1e-3


def test_chimerax_placement_command(trained, tmp_path):
    sim, run = trained
    out = tmp_path / "place"
    assert main(["chimerax-placement", str(run), "-k", "3", "--star", str(sim / "particles_optimisation_set.star"),
                 "-o", str(out)]) == 0
    scripts = sorted(p.name for p in out.glob("*.cxc"))
    assert scripts == ["TS_001.cxc", "TS_002.cxc"]
    n_markers = sum(p.read_text().count("marker #") for p in out.glob("*.cxc"))
    assert n_markers == 20
    nb = pd.read_csv(out / "neighbours.csv")
    assert len(nb) == 20 and (nb["distance_angstrom"] > 0).all()
    dist = pd.read_csv(out / "cluster_distribution.csv", index_col=0)
    assert dist.to_numpy().sum() == 20 and (out / "cluster_distribution.png").stat().st_size > 1000
    labels = np.zeros(20, np.int64)
    labels[10:] = 1
    np.save(tmp_path / "lab.npy", labels)
    assert main(["eval-vol", str(run), "--zfile", str(_two_points(tmp_path)), "-o", str(tmp_path / "maps"),
                 "--device", "cpu"]) == 0
    assert main(["chimerax-placement", str(run), "--labels", str(tmp_path / "lab.npy"), "--mode", "volumes",
                 "--volumes", str(tmp_path / "maps"), "--star", str(sim / "particles_volumeseries.star"),
                 "-o", str(tmp_path / "vols")]) == 0
    text = "".join(p.read_text() for p in (tmp_path / "vols").glob("*.cxc"))
    assert text.count("view matrix models") == 20 and text.count("vol_002.mrc") == 10
    # markers only from the image series (no poses there)
    assert main(["chimerax-placement", str(run), "--labels", str(tmp_path / "lab.npy"), "--mode", "volumes",
                 "--volumes", str(tmp_path / "maps"), "-o", str(tmp_path / "bad")]) == 2


def _two_points(tmp_path):
    path = tmp_path / "z.txt"
    np.savetxt(path, np.zeros((2, 2)))
    return path
