"""No output is overwritten or deleted without --overwrite; --overwrite replaces only a command's own files; a
failed command leaves neither an empty nor a half-written output (docs/reliability.md)."""

from __future__ import annotations

import numpy as np
import pytest

import cryoscape.demo as demo_module
from cryoscape.cli.main import main
from cryoscape.errors import OutputError
from cryoscape.utils.outputs import check_output_file, prepare_output_dir

SMALL = ["--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
         "--no-progress", "--threads", "1", "--device", "cpu"]
SIM = ["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2"]


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tree(root):
    """Relative path -> file content of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "sim"
    assert main([*SIM, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(out), "-n", "1", "--seed", "0", *SMALL]) == 0
    return out


# ------------------------------------------------------------------------------------------------ the helper
def test_new_or_empty_folder_is_accepted_and_created_only_on_writing(tmp_path):
    target = tmp_path / "a" / "b"
    out_dir = prepare_output_dir(target, "x", own=("f.txt",))
    assert not (tmp_path / "a").exists()  # checking creates nothing
    with out_dir as out:
        (out / "f.txt").write_text("new")
    assert (target / "f.txt").read_text() == "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("")  # hidden files do not make a folder non-empty
    with prepare_output_dir(empty, "x", own=("f.txt",)) as out:
        (out / "f.txt").write_text("new")


def test_non_empty_folder_is_refused_in_one_line_naming_it_and_the_option(tmp_path):
    (tmp_path / "data.star").write_text("keep")
    with pytest.raises(OutputError) as exc:
        prepare_output_dir(tmp_path, "filter", own=("indices.npy",))
    text = str(exc.value)
    assert str(tmp_path) in text and "not empty" in text and "--overwrite" in text and "\n" not in text
    assert tree(tmp_path) == {"data.star": b"keep"}


def test_overwrite_replaces_own_files_only_and_removes_stale_ones(tmp_path):
    for name, text in (("particles.star", "old"), ("particles.cs", "stale"), ("notes.txt", "mine")):
        (tmp_path / name).write_text(text)
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "state_009.mrc").write_text("stale map")
    with prepare_output_dir(tmp_path, "simulate", True, own=("particles.star", "particles.cs", "gt")) as out:
        (out / "particles.star").write_text("new")
        (out / "gt").mkdir()
        (out / "gt" / "state_000.mrc").write_text("new map")
    assert tree(tmp_path) == {"particles.star": b"new", "notes.txt": b"mine", "gt/state_000.mrc": b"new map"}


def test_error_in_a_new_folder_removes_it_and_the_parents_it_created(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with prepare_output_dir(target, "x", own=("f.txt",)) as out:
            (out / "f.txt").write_text("half")
            raise RuntimeError("failed mid-way")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_with_overwrite_puts_the_previous_files_back(tmp_path, error):
    (tmp_path / "f.txt").write_text("old")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.txt").write_text("old g")
    (tmp_path / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(error):
        with prepare_output_dir(tmp_path, "x", True, own=("f.txt", "sub", "new.txt")) as out:
            (out / "f.txt").write_text("new")
            (out / "new.txt").write_text("new")
            assert not (out / "sub").exists()  # set aside while the command writes
            raise error()
    assert tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "notes.txt", "sub"]  # no backup left behind


def test_keep_carries_user_files_into_the_new_output(tmp_path):
    sel = tmp_path / "run" / "explore_selections" / "selection_001"
    sel.mkdir(parents=True)
    (sel / "indices.txt").write_text("1\n2\n")
    (tmp_path / "run" / "config.yaml").write_text("old run")
    with prepare_output_dir(tmp_path, "demo", True, own=("run",), keep=("run/explore_selections",)) as out:
        (out / "run").mkdir()
        (out / "run" / "config.yaml").write_text("new run")
    assert tree(tmp_path) == {"run/config.yaml": b"new run",
                              "run/explore_selections/selection_001/indices.txt": b"1\n2\n"}


def test_a_file_where_a_folder_is_expected_and_existing_output_files(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        prepare_output_dir(f, "fsc")
    with pytest.raises(OutputError, match="exists already.*--overwrite"):
        check_output_file(f, "evaluate")
    assert check_output_file(f, "evaluate", overwrite=True) == f
    assert check_output_file(tmp_path / "new.json", "evaluate") == tmp_path / "new.json"
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "evaluate", overwrite=True)


# --------------------------------------------------------------------------------------------- the commands
def test_simulate_refuses_an_existing_data_set_and_overwrite_leaves_no_stale_file(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main([*SIM, "--cs", "--pkl", "-o", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    first = tree(out)
    capsys.readouterr()
    assert main([*SIM, "--seed", "1", "-o", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "--overwrite" in line
    assert tree(out) == first  # nothing touched
    assert main([*SIM, "--seed", "1", "-o", str(out), "--overwrite"]) == 0
    names = set(tree(out))
    assert not {"particles.cs", "pose.pkl", "ctf.pkl"} & names  # an earlier run's extra files are gone
    assert (out / "notes.txt").read_text() == "mine"  # the user's file is kept
    assert (out / "particles.star").read_bytes() != first["particles.star"]  # the new data (seed 1)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_train_refuses_a_folder_of_data(sim, tmp_path, capsys):
    before = tree(sim)
    capsys.readouterr()
    assert main(["train", str(sim / "particles.star"), "-o", str(sim), "-n", "1", *SMALL]) == 2
    line = one_error_line(capsys)
    assert str(sim) in line and "not a cryoscape run" in line
    assert tree(sim) == before


def test_backproject_of_a_missing_file_creates_nothing(tmp_path, capsys):
    out = tmp_path / "bp"
    assert main(["backproject", str(tmp_path / "missing.star"), "-o", str(out)]) == 2
    one_error_line(capsys)
    assert not out.exists()


def test_backproject_refuses_and_overwrites_its_own_files(sim, tmp_path, capsys):
    out = tmp_path / "bp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["backproject", str(sim / "particles.star"), "-o", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert main(["backproject", str(sim / "particles.star"), "-o", str(out), "--overwrite"]) == 0
    assert {"backproject.mrc", "fsc.txt", "notes.txt"} <= set(tree(out))


def test_filter_refuses_an_earlier_selection_and_overwrite_replaces_it(run, tmp_path, capsys):
    out = tmp_path / "selected"
    assert main(["filter", str(run), "--z-range", "0", "-100", "100", "-o", str(out)]) == 0
    first = np.load(out / "indices.npy")
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["filter", str(run), "--z-range", "0", "-100", "100", "--invert", "-o", str(out)]) == 2
    assert str(out) in one_error_line(capsys)
    assert np.array_equal(np.load(out / "indices.npy"), first)
    (tmp_path / "ind.txt").write_text("0\n1\n2\n")
    assert main(["filter", str(run), "--ind", str(tmp_path / "ind.txt"), "-o", str(out), "--overwrite"]) == 0
    assert np.array_equal(np.load(out / "indices.npy"), [0, 1, 2]) and (out / "notes.txt").read_text() == "mine"


def test_analyze_again_needs_overwrite(run, capsys):
    args = ["analyze", str(run), "--skip-vol", "--skip-umap", "--ksample", "2"]
    assert main(args) == 0
    folder = run / "analysis" / "epoch_001"
    report = folder / "index.html"
    (folder / "notes.txt").write_text("mine")
    stamp = report.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    line = one_error_line(capsys)
    assert str(folder) in line and "--overwrite" in line and report.stat().st_mtime_ns == stamp
    assert main([*args, "--overwrite"]) == 0
    assert report.stat().st_mtime_ns != stamp and (folder / "notes.txt").read_text() == "mine"


def test_single_file_outputs_are_not_replaced_without_overwrite(run, sim, tmp_path, capsys):
    out = tmp_path / "eval.json"
    out.write_text("{}")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--truth", str(sim), "--no-maps", "-o", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys) and out.read_text() == "{}"
    assert main(["evaluate", str(run), "--truth", str(sim), "--no-maps", "-o", str(out), "--overwrite"]) == 0
    assert out.read_text() != "{}"
    z = tmp_path / "z.npy"
    z.write_bytes(b"x")
    assert main(["eval-images", str(run), "-o", str(z), "--device", "cpu"]) == 2
    assert "--overwrite" in one_error_line(capsys) and z.read_bytes() == b"x"
    stack = tmp_path / "small.mrcs"
    stack.write_bytes(b"x")
    assert main(["downsample", str(sim / "particles.star"), "-D", "8", "-o", str(stack)]) == 2
    assert "--overwrite" in one_error_line(capsys) and stack.read_bytes() == b"x"


# ------------------------------------------------------------------------------------------------- the demo
@pytest.fixture
def fake_demo(monkeypatch):
    """The demo's folder handling with a stand-in for the minutes of simulating, training and analysing."""
    calls = []

    def fake(out, settings, progress):
        calls.append(out)
        if len(calls) == 3:
            raise RuntimeError("the third demo fails")
        for rel in ("data/particles.star", "run/config.yaml", "demo_scores.json"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(f"demo {len(calls)}")
        return {"discrete_accuracy": 1.0, "continuous_spearman": 1.0, "clusters_with_subunit": [0],
                "discrete_ari": 1.0, "minutes": 0.0, "report": str(out / "run")}

    monkeypatch.setattr(demo_module, "_run_demo", fake)
    monkeypatch.setattr(demo_module, "format_scores", lambda scores: "scores", raising=False)
    return calls


def test_demo_twice_is_refused_and_overwrite_keeps_the_explorer_selections(fake_demo, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--no-progress"]) == 0
    sel = out / "run" / "explore_selections" / "selection_001"
    sel.mkdir(parents=True)
    (sel / "indices.txt").write_text("3\n5\n")
    (out / "notes.txt").write_text("mine")
    first = tree(out)
    capsys.readouterr()
    assert main(["demo", "-o", str(out), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "--overwrite" in line and tree(out) == first and len(fake_demo) == 1
    assert main(["demo", "-o", str(out), "--no-progress", "--overwrite"]) == 0
    assert tree(out) == {"data/particles.star": b"demo 2", "demo_scores.json": b"demo 2", "notes.txt": b"mine",
                         "run/config.yaml": b"demo 2", "run/explore_selections/selection_001/indices.txt": b"3\n5\n"}
    second = tree(out)
    with pytest.raises(RuntimeError):  # a failing demo puts the previous one back
        main(["demo", "-o", str(out), "--no-progress", "--overwrite"])
    assert tree(out) == second
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_fsc_and_traversal_folders(tmp_path, capsys):
    from cryoscape.io.mrc import write_mrc

    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "a.mrc", a, 2.0)
    write_mrc(tmp_path / "b.mrc", a + 0.5 * rng.normal(size=a.shape).astype(np.float32), 2.0)
    write_mrc(tmp_path / "c.mrc", np.zeros((8, 8, 8), np.float32), 2.0)
    out = tmp_path / "fsc"
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "c.mrc"), "-o", str(out)]) == 2
    assert not out.exists()  # a bad input creates no folder
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--mask", "auto", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "-o", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "-o", str(out), "--overwrite"]) == 0
    assert sorted(tree(out)) == ["fsc.png", "fsc.txt"]  # the stale mask.mrc of the masked run is gone

    np.save(tmp_path / "z.npy", rng.normal(size=(50, 3)).astype(np.float32))
    trav = tmp_path / "traj"
    argv = ["direct-traversal", str(tmp_path / "z.npy"), "--anchors", "0", "1", "-n", "4", "-o", str(trav)]
    assert main(argv) == 0
    first = tree(trav)
    assert main([*argv[:-2], "-n", "6", "-o", str(trav)]) == 2
    assert tree(trav) == first
    assert main([*argv[:-2], "-n", "6", "-o", str(trav), "--overwrite"]) == 0
    assert len((trav / "z_values.txt").read_text().splitlines()) == 6


def test_train_folder_rule(tmp_path):
    from cryoscape.utils.diskspace import check_output_location

    for name, content in (("empty", {}), ("hidden", {".DS_Store": ""}),
                          ("run", {"config.yaml": "cryoscape_version: 0.1\nmodel: {}\n", "path/z_values.txt": "0"}),
                          ("partial", {"checkpoints/epoch_001.pt": "", "latents/epoch_001.npy": ""})):
        folder = tmp_path / name
        folder.mkdir()
        for rel, text in content.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
        check_output_location(folder)  # accepted
    for name, content in (("data", {"particles.mrcs": "", "particles.star": ""}),
                          ("cryodrgn", {"config.yaml": "dataset_args: {}\nmodel_args: {}\n", "weights.10.pkl": ""}),
                          ("other_config", {"config.yaml": "dataset_args: {}\n"})):
        folder = tmp_path / name
        folder.mkdir()
        for rel, text in content.items():
            (folder / rel).write_text(text)
        with pytest.raises(OutputError, match="not a cryoscape run"):
            check_output_location(folder)
