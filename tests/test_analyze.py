"""`cryoscape analyze` end to end on a tiny trained run, and `filter --clusters` on its k-means result."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc

pytestmark = pytest.mark.slow  # the module's fixture trains and analyses a run (over a minute on 2 cores)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    sim = root / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "80", "-D", "16", "--apix", "6", "--snr", "5",
                 "-o", str(sim)]) == 0
    run = root / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "2", "--zdim", "3", "--enc-dim", "16",
                 "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8", "--no-progress"]) == 0
    assert main(["analyze", str(run), "--ksample", "4", "--pc", "2", "--truth", str(sim), "--device", "cpu"]) == 0
    return sim, run


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_analyze_writes_everything_it_promises(trained):
    sim, run = trained
    out = run / "analysis" / "epoch_002"
    labels = np.load(out / "kmeans4" / "labels.npy")
    assert labels.shape == (80,) and set(labels) <= set(range(4))
    sizes = np.loadtxt(out / "kmeans4" / "sizes.txt", dtype=int)
    assert sizes[:, 1].sum() == 80
    centers = np.loadtxt(out / "kmeans4" / "centers.txt")
    z = np.load(run / "latents" / "epoch_002.npy")
    pos = np.loadtxt(out / "kmeans4" / "centers_ind.txt", dtype=int)[:, 0]
    np.testing.assert_allclose(centers, z[pos], atol=1e-4)  # on-data centres
    vol, info = read_mrc(out / "kmeans4" / "vol_004.mrc")
    assert vol.shape == (16, 16, 16) and info.voxel_size_angstrom == pytest.approx(6.0)
    for pc in ("pc1", "pc2"):
        assert np.loadtxt(out / pc / "z_values.txt").shape == (10, 3)
        assert (out / pc / "vol_010.mrc").is_file()
    for png in ("z_pca.png", "z_pca_hexbin.png", "explained_variance.png", "loss.png", "umap.png"):
        assert (out / png).stat().st_size > 1000, png
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["clustering"]["n_states"] == 3
    parser = _Images()
    parser.feed((out / "index.html").read_text())
    assert len(parser.srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in parser.srcs)


def test_filter_by_cluster(trained, tmp_path):
    _, run = trained
    labels = np.load(run / "analysis" / "epoch_002" / "kmeans4" / "labels.npy")
    assert main(["filter", str(run), "--clusters", "0", "2", "-o", str(tmp_path / "sel")]) == 0
    chosen = np.load(tmp_path / "sel" / "indices.npy")
    expected = np.sort(np.load(run / "indices.npy")[np.isin(labels, [0, 2])])
    np.testing.assert_array_equal(chosen, expected)
    assert (tmp_path / "sel" / "particles.star").is_file()


def test_analyze_refuses_homogeneous_and_missing_runs(trained, tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
