"""The explorer's data, export and static page (no browser): views, labels, metadata colours, filter-equal export."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import starfile

from _explore_run import N_INPUT, make_fake_run, snapshot
from cryoscape.cli.main import main
from cryoscape.errors import InputError
from cryoscape.explore import SelectionExists, export_selection, load_explorer_data, validate_selection_indices


class _References(HTMLParser):
    """Counts script elements and collects every src/href of the page's own elements (not of script text)."""

    def __init__(self):
        super().__init__()
        self.scripts, self.urls = 0, []

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.urls += [v for k, v in attrs if k in ("src", "href")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_fake_run(tmp_path_factory.mktemp("explore"))


def test_views_labels_and_metadata_in_run_order(run):
    data = load_explorer_data(run, k=2, umap=False)
    z = np.load(run / "latents" / "epoch_001.npy").astype(np.float64)
    indices = np.load(run / "indices.npy")
    assert data.n == len(indices) and data.n_input == N_INPUT and data.label_source == "computed"
    # PCA by hand (SVD of the centred latents); components agree up to sign
    zc = z - z.mean(axis=0)
    u, s, vt = np.linalg.svd(zc, full_matrices=False)
    expected = zc @ vt[:2].T
    got = data.views["PCA"].xy
    for j in range(2):
        sign = np.sign(got[:, j] @ expected[:, j])
        np.testing.assert_allclose(got[:, j], sign * expected[:, j], atol=1e-5)
    assert data.views["PCA"].axes[0].startswith("PC1 (") and "UMAP" not in data.views
    # the two groups along z1 are the two clusters
    groups = z[:, 0] > 1.5
    assert len(set(data.labels[groups])) == 1 and len(set(data.labels[~groups])) == 1
    assert data.labels[groups][0] != data.labels[~groups][0]
    # a STAR column, row for row in run order
    table = starfile.read(run.parent / "sim" / "particles.star")["particles"]
    np.testing.assert_allclose(data.column("rlnDefocusU"), table["rlnDefocusU"].to_numpy()[indices])
    np.testing.assert_allclose(data.column("z2"), z[:, 1], rtol=1e-6)
    assert "rlnImageName" not in data.metadata  # not numeric
    with pytest.raises(InputError):
        data.column("no_such_column")


def test_labels_and_umap_come_from_an_analysis(run, tmp_path):
    base = run / "analysis" / "epoch_001"
    (base / "kmeans3").mkdir(parents=True)
    labels = np.arange(20) % 3
    umap = np.column_stack([np.arange(20.0), -np.arange(20.0)])
    np.save(base / "kmeans3" / "labels.npy", labels)
    np.save(base / "umap.npy", umap)
    try:
        data = load_explorer_data(run, umap=True)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.label_source.endswith("kmeans3/labels.npy")
        np.testing.assert_array_equal(data.views["UMAP"].xy, umap)
    finally:
        import shutil

        shutil.rmtree(run / "analysis")


def test_cs_columns(tmp_path):
    run = make_fake_run(tmp_path, fmt="cs")
    data = load_explorer_data(run, k=2, umap=False)
    cs = np.load(run.parent / "sim" / "particles.cs")
    np.testing.assert_allclose(data.column("ctf/df1_A"), cs["ctf/df1_A"][np.load(run / "indices.npy")])
    out = export_selection(data, [0, 4, 38], "pick")
    assert out["files"] == ["indices.npy", "indices.txt", "particles.cs"]
    sub = np.load(run / "explore_selections" / "pick" / "particles.cs")
    np.testing.assert_array_equal(sub["uid"], cs["uid"][[0, 4, 38]])


def test_export_writes_what_filter_writes(run, tmp_path):
    data = load_explorer_data(run, k=2, umap=False)
    before = snapshot(run)
    chosen = [2, 10, 12, 30]
    result = export_selection(data, chosen, "four")
    out = run / "explore_selections" / "four"
    assert result["n_selected"] == 4 and result["folder"] == str(out.resolve())
    assert sorted(set(snapshot(run)) - set(before)) == [f"explore_selections/four/{f}" for f in
                                                          ("indices.npy", "indices.txt", "particles.star")]
    assert main(["filter", str(run), "--ind", str(out / "indices.txt"), "-o", str(tmp_path / "f")]) == 0
    np.testing.assert_array_equal(np.load(out / "indices.npy"), np.load(tmp_path / "f" / "indices.npy"))
    def body(path):  # the STAR writer's first line is a time stamp
        return [line for line in path.read_text().splitlines() if not line.startswith("#")]

    assert body(out / "particles.star") == body(tmp_path / "f" / "particles.star")
    table = starfile.read(out / "particles.star")["particles"]
    original = starfile.read(run.parent / "sim" / "particles.star")["particles"]
    assert list(table["rlnImageName"]) == list(original["rlnImageName"].iloc[chosen])
    with pytest.raises(SelectionExists):
        export_selection(data, chosen, "four")
    second = export_selection(data, [0], None)
    assert second["name"] == "selection_001"


@pytest.mark.parametrize("values, message", [
    ("1,2", "JSON list"),
    ([1, 2.5], "integers"),
    ([True], "integers"),
    (["3"], "integers"),
    ([], "empty"),
    ([-2], "0..39"),
    ([40], "0..39"),
    ([1], "not particles of this run"),
    (list(range(0, 40, 2)) + [0], "only 20"),
])
def test_bad_selections_are_refused(values, message):
    run_indices = np.arange(0, 40, 2)
    with pytest.raises(InputError, match=re.escape(message)):
        validate_selection_indices(values, run_indices, 40)


def test_duplicates_are_merged_and_sorted():
    got = validate_selection_indices([8, 2, 8], np.arange(0, 40, 2), 40)
    np.testing.assert_array_equal(got, [2, 8])


def test_static_page_is_self_contained(run, tmp_path):
    before = snapshot(run)
    page = tmp_path / "explore.html"
    assert main(["explore", str(run), "--write-html", str(page), "--skip-umap", "--k", "2"]) == 0
    assert snapshot(run) == before  # nothing written into the run
    text = page.read_text()
    refs = _References()
    refs.feed(text)
    assert refs.scripts >= 3 and refs.urls == ["data:,"]  # inline scripts only; the favicon is a data: URL
    assert len(text) > 1_000_000  # plotly.js inline
    doc = json.loads(re.search(r'<script id="cryoscape-data" type="application/json">(.*?)</script>', text,
                               re.S).group(1))
    assert doc["server"] is False and doc["n"] == 20 and doc["n_input"] == N_INPUT
    assert doc["input_index"] == list(range(0, 40, 2))
    assert {"cluster", "z1", "z3", "rlnDefocusU"} <= set(doc["color_options"])
    assert len(doc["columns"]["rlnDefocusU"]) == 20  # metadata embedded in a static page


def test_cli_refuses_a_bad_port(run, capsys):
    assert main(["explore", str(run), "--port", "70000", "--no-browser"]) == 2
    assert "70000" in capsys.readouterr().err


def test_one_dimensional_latents_are_spread_by_jitter(run, tmp_path):
    import shutil

    one = tmp_path / "run_z1"
    shutil.copytree(run, one, ignore=shutil.ignore_patterns("explore_selections", "analysis"))
    z1 = np.linspace(-2, 2, 20, dtype=np.float32)[:, None]
    np.save(one / "latents" / "epoch_001.npy", z1)
    data = load_explorer_data(one, k=2, umap=True)
    assert list(data.views) == ["z"] and data.views["z"].axes == ("z1", "random jitter")
    np.testing.assert_allclose(data.views["z"].xy[:, 0], z1[:, 0])
    assert np.all(np.abs(data.views["z"].xy[:, 1]) <= 1) and np.ptp(data.views["z"].xy[:, 1]) > 0.5
    np.testing.assert_array_equal(data.labels, (z1[:, 0] > 0).astype(int) if data.labels[-1] else
                                  (z1[:, 0] < 0).astype(int))


def test_tilt_series_export_goes_through_the_family(tmp_path):
    """A tomoDRGN run: particles are tilt series; the export writes every tilt row of each chosen particle."""
    from cryoscape.config import DataConfig, ModelConfig, RunConfig, save_config

    assert main(["simulate-tilt", "--preset", "discrete3", "-N", "12", "-D", "16", "--apix", "6", "--tilt-max", "30",
                 "--tilt-step", "15", "-o", str(tmp_path / "sim")]) == 0
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    np.save(run / "latents" / "epoch_001.npy", np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32))
    np.save(run / "indices.npy", np.arange(0, 12, 2))
    save_config(RunConfig(data=DataConfig(particles=str(tmp_path / "sim" / "particles.star")),
                          model=ModelConfig(family="tomodrgn")), run / "config.yaml")
    data = load_explorer_data(run, k=2, umap=False)
    assert data.particles_problem is None and data.n_input == 12
    result = export_selection(data, [2, 10], "tilts")
    assert result["files"] == ["indices.npy", "indices.txt", "particles.star"]
    table = starfile.read(run / "explore_selections" / "tilts" / "particles.star")
    table = table["particles"] if isinstance(table, dict) else table
    original = starfile.read(tmp_path / "sim" / "particles.star")
    original = original["particles"] if isinstance(original, dict) else original
    groups = list(dict.fromkeys(original["rlnGroupName"]))  # particles in order of first appearance
    assert set(table["rlnGroupName"]) == {groups[2], groups[10]}
    assert len(table) == int(original["rlnGroupName"].isin([groups[2], groups[10]]).sum()) == 2 * 5  # 5 tilts
