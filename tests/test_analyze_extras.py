"""cryoDRGN users' analysis extras on one tiny trained run: filter finds analyze's k-means labels whatever -o was,
analyze --flip/--invert/-D, the ChimeraX script of the analysis maps, graph traversal between k-means centres
with the default neighbour settings, and per-cluster maps from analyze-volumes."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc

pytestmark = pytest.mark.slow  # one tiny training run shared by the tests below (about 15 s on a loaded CPU)

ANALYZE = ["--ksample", "3", "--pc", "1", "--skip-umap", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    sim = root / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "120", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(sim)]) == 0
    run = root / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "2", "--zdim", "4", "--enc-dim", "16",
                 "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8", "--no-progress"]) == 0
    # as in the README tour: the analysis goes to RUN/analysis, not to the default RUN/analysis/epoch_NNN
    assert main(["analyze", str(run), "-o", str(run / "analysis"), *ANALYZE]) == 0
    return run


def test_filter_finds_the_labels_of_analyze_wherever_it_wrote_them(run, tmp_path):
    labels = np.load(run / "analysis" / "kmeans3" / "labels.npy")
    indices = np.load(run / "indices.npy")
    assert main(["filter", str(run), "--clusters", "0", "2", "-o", str(tmp_path / "keep")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "keep" / "indices.npy"),
                                  np.sort(indices[np.isin(labels, [0, 2])]))
    # an analysis outside the run folder, with another k: the newest analysis of the epoch is the one used
    elsewhere = tmp_path / "elsewhere"
    assert main(["analyze", str(run), "-o", str(elsewhere), "--ksample", "2", "--pc", "1", "--skip-umap",
                 "--skip-vol"]) == 0
    assert str(elsewhere.resolve()) in (run / "analyses.txt").read_text()
    labels2 = np.load(elsewhere / "kmeans2" / "labels.npy")
    assert main(["filter", str(run), "--clusters", "1", "-o", str(tmp_path / "keep2")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "keep2" / "indices.npy"), np.sort(indices[labels2 == 1]))
    # the explorer shows the same labels (and would take that analysis' UMAP)
    from cryoscape.explore.data import load_explorer_data

    shown = load_explorer_data(run, umap=False)
    assert shown.label_source == str(elsewhere / "kmeans2" / "labels.npy")
    np.testing.assert_array_equal(shown.labels, labels2)
    # --k picks the older one back
    assert main(["filter", str(run), "--clusters", "1", "--k", "3", "-o", str(tmp_path / "keep3")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "keep3" / "indices.npy"), np.sort(indices[labels == 1]))


def test_filter_without_any_analysis_names_where_it_looked(tmp_path, capsys):
    from _explore_run import make_fake_run

    fake = make_fake_run(tmp_path)
    assert main(["filter", str(fake), "--clusters", "0", "-o", str(tmp_path / "keep")]) == 2
    err = capsys.readouterr().err
    assert "no k-means labels found" in err and "epoch_001" in err


def test_analyze_flip_invert_and_downsample_the_maps(run, tmp_path):
    plain, info = read_mrc(run / "analysis" / "kmeans3" / "vol_001.mrc")
    assert main(["analyze", str(run), "-o", str(tmp_path / "fi"), "--flip", "--invert", *ANALYZE]) == 0
    flipped, finfo = read_mrc(tmp_path / "fi" / "kmeans3" / "vol_001.mrc")
    np.testing.assert_allclose(flipped, -plain[::-1], atol=1e-5)  # mirrored along z, contrast inverted
    assert finfo.voxel_size_angstrom == pytest.approx(info.voxel_size_angstrom)
    traversal, _ = read_mrc(tmp_path / "fi" / "pc1" / "vol_005.mrc")
    plain_traversal, _ = read_mrc(run / "analysis" / "pc1" / "vol_005.mrc")
    np.testing.assert_allclose(traversal, -plain_traversal[::-1], atol=1e-5)

    assert main(["analyze", str(run), "-o", str(tmp_path / "d8"), "-D", "8", *ANALYZE]) == 0
    small, sinfo = read_mrc(tmp_path / "d8" / "kmeans3" / "vol_001.mrc")
    assert small.shape == (8, 8, 8)
    assert sinfo.voxel_size_angstrom == pytest.approx(info.voxel_size_angstrom * 16 / 8)
    from cryoscape.imaging.fft import resample_volume

    expected = resample_volume(torch.from_numpy(plain), 8).numpy()
    np.testing.assert_allclose(small, expected, atol=1e-4 * np.abs(expected).max())
    assert "voxelSize 12" in (tmp_path / "d8" / "chimerax.cxc").read_text()

    assert main(["analyze", str(run), "-o", str(tmp_path / "odd"), "-D", "7", *ANALYZE]) == 2


def _script_commands(script: Path) -> list[list[str]]:
    return [shlex.split(line) for line in script.read_text().splitlines() if line and not line.startswith("#")]


def test_analyze_writes_a_chimerax_script_that_opens_its_maps(run):
    out = run / "analysis"
    commands = _script_commands(out / "chimerax.cxc")
    opens = [c[1:] for c in commands if c[0] == "open"]
    kmeans = [o for o in opens if len(o) == 1]
    series = [o for o in opens if o[-2:] == ["vseries", "true"]]
    assert [o[0] for o in kmeans] == [f"kmeans3/vol_{i:03d}.mrc" for i in (1, 2, 3)]
    assert len(series) == 1 and series[0][:-2] == [f"pc1/vol_{i:03d}.mrc" for i in range(1, 11)]
    for name in [o[0] for o in kmeans] + series[0][:-2]:
        assert (out / name).is_file(), name  # paths relative to the script's folder, as ChimeraX reads them
    voxel = read_mrc(out / "kmeans3" / "vol_001.mrc")[1].voxel_size_angstrom
    sizes = [float(c[c.index("voxelSize") + 1]) for c in commands if "voxelSize" in c]
    assert len(sizes) == 2 and sizes == pytest.approx([voxel, voxel])
    renames = {c[1]: c[2] for c in commands if c[0] == "rename"}
    assert renames == {"#1": "cluster_0", "#2": "cluster_1", "#3": "cluster_2", "#4": "pc1"}
    assert ["vseries", "slider", "#4"] in commands


def test_graph_traversal_between_kmeans_centres_with_default_settings(run, tmp_path, caplog):
    from scipy.sparse.csgraph import connected_components

    from cryoscape.analysis.latent import kmeans_on_data, load_latents
    from cryoscape.analysis.traversal import neighbor_graph

    z = load_latents(run).z
    centres = kmeans_on_data(z, 20, seed=0).center_indices  # the README's --ksample 20 analysis
    _, parts = connected_components(neighbor_graph(z)[0], directed=False)
    disconnected = len(set(parts[centres])) > 1  # what made the paper's strict graph fail here
    with caplog.at_level(logging.WARNING, logger="cryoscape"):
        assert main(["graph-traversal", str(run), "--anchors", *map(str, centres), "--no-volumes",
                     "-o", str(tmp_path / "path")]) == 0
    path = np.loadtxt(tmp_path / "path" / "path_indices.txt", dtype=int)
    position = 0
    for c in centres:  # the path visits the centres in the order given
        position = list(path).index(c, position)
    assert np.loadtxt(tmp_path / "path" / "z_values.txt").shape == (len(path), 4)
    if disconnected:
        assert "gap" in caplog.text and "--strict" in caplog.text
        assert main(["graph-traversal", str(run), "--anchors", *map(str, centres), "--no-volumes", "--strict",
                     "-o", str(tmp_path / "strict")]) == 2


def test_analyze_volumes_writes_per_cluster_maps(run, tmp_path):
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.volume_space import generate_volumes, load_generator

    out = tmp_path / "vs"
    assert main(["analyze-volumes", str(run), "--sample", "24", "-k", "3", "--pcs", "4", "--mask", "none",
                 "--skip-umap", "--device", "cpu", "-o", str(out)]) == 0
    rows = np.load(out / "sample_indices.npy")
    labels = np.load(out / "labels.npy")
    z = load_latents(run).z
    maps = generate_volumes(load_generator(run, device="cpu"), z[rows])
    sizes = np.loadtxt(out / "kmeans3" / "sizes.txt", dtype=int)
    np.testing.assert_array_equal(sizes[:, 1], np.bincount(labels, minlength=3))
    centre_rows = np.loadtxt(out / "kmeans3" / "centers_ind.txt", dtype=int)
    for c in range(3):
        mean, info = read_mrc(out / "kmeans3" / f"mean_{c + 1:03d}.mrc")
        np.testing.assert_allclose(mean, maps[labels == c].mean(axis=0), atol=1e-4)
        centre, _ = read_mrc(out / "kmeans3" / f"vol_{c + 1:03d}.mrc")
        i, row = centre_rows[c]
        assert labels[i] == c and rows[i] == row
        np.testing.assert_allclose(centre, maps[i], atol=1e-4)
        assert info.voxel_size_angstrom == pytest.approx(6.0)
    opened = [c[1] for c in _script_commands(out / "chimerax.cxc") if c[0] == "open"]
    assert opened == [f"kmeans3/vol_{c:03d}.mrc" for c in (1, 2, 3)]
    assert re.search(r"voxelSize 6\b", (out / "chimerax.cxc").read_text())


def test_eval_vol_help_example_reads_a_file_that_analyze_writes(run, tmp_path):
    import cryoscape.cli.eval_vol as eval_vol
    from cryoscape.analysis.latent import load_latents

    example = shlex.split(next(line for line in eval_vol.__doc__.splitlines() if "--zfile" in line))
    zfile = example[example.index("--zfile") + 1]
    match = re.fullmatch(r"runs/vae8/(analysis/epoch_(\d{3})/pc1/z_values\.txt)", zfile)
    assert match, zfile
    assert main(["analyze", str(run), *ANALYZE]) == 0  # without -o: RUN/analysis/epoch_NNN
    written = run / match.group(1).replace(f"epoch_{match.group(2)}", f"epoch_{load_latents(run).epoch:03d}")
    assert written.is_file()
    assert main(["eval-vol", str(run), "--zfile", str(written), "-o", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("vol_*.mrc"))) == 10


def test_the_analysis_record_is_best_effort_and_skips_what_is_gone(tmp_path, caplog):
    from cryoscape.analysis.analysis_index import INDEX_NAME, analysis_dirs, record_analysis

    run = tmp_path / "run"
    (run / "analysis" / "epoch_004").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    record_analysis(run, 4, outside)
    record_analysis(run, 4, run / "analysis" / "epoch_004")
    record_analysis(run, 3, run / "other")
    assert (run / INDEX_NAME).read_text().splitlines() == [f"4\t{outside.resolve()}", "4\tanalysis/epoch_004",
                                                          "3\tother"]
    record_analysis(run, 4, outside)  # analysed again: now the newest
    assert analysis_dirs(run, 4) == [outside.resolve(), run / "analysis" / "epoch_004"]
    assert analysis_dirs(run, 3) == [run / "analysis" / "epoch_003"]  # "other" was never written
    (run / INDEX_NAME).unlink()
    (run / INDEX_NAME).mkdir()  # cannot be written as a file: a warning, no error
    with caplog.at_level(logging.WARNING, logger="cryoscape"):
        assert record_analysis(run, 4, outside) is None
    assert "filter --analysis" in caplog.text
