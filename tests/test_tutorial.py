"""docs/tutorial.md and the README's short tour cannot rot: their commands run, in order, on small simulated data.

Tutorial: its `bash tested` blocks; the sizes and paths are replaced with the substitution table of the
tutorial's last section (parsed from the document itself; every row must be used). README: the bash block of
"A short tour", with the substitutions of ``TOUR_SUBSTITUTIONS`` below. `cryoscape` commands run in-process
through the CLI entry point (``main``); any other command fails the test. Afterwards every output path the
documents name must exist, and the subsets they write must hold the particles they selected.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryoscape.cli.main import main

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
README = Path(__file__).resolve().parents[1] / "README.md"
STAND_IN = "cryoscape simulate --preset discrete3 -N 120 -D 32 --apix 3 --snr 2 --cs -o sim"
TOUR_STAND_IN = "cryoscape simulate --preset discrete3 -N 120 -D 32 --apix 3 --snr 2 -o refine"
TINY = "--enc-dim 16 --enc-layers 1 --dec-dim 16 --dec-layers 1"
# (in the README, in the test): the user's particles -> the stand-in, sizes and epochs -> tiny ones
TOUR_SUBSTITUTIONS = [
    ("cryoscape downsample particles.star ", "cryoscape downsample refine/particles.star "),
    ("-D 128", "-D 16"),
    ("--zdim 8 -n 25", f"--zdim 8 -n 1 {TINY}"),
    ("-o runs/z8/analysis ", "-o runs/z8/analysis --ksample 6 --skip-umap "),
    ("kmeans20", "kmeans6"),
    ("--anchors 12 803 4410", "--anchors 3 40 77"),
    ("cryoscape explore runs/z8 ", "cryoscape explore runs/z8 --write-html runs/z8/explore.html --skip-umap "),
    ("-N 5000 -D 64", "-N 100 -D 16"),
]


def substitutions(text: str) -> list[tuple[str, str]]:
    """The rows ``| `tutorial` | `test` |`` of the section "How this tutorial is tested"."""
    section = text.split("## How this tutorial is tested", 1)[1]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", section, re.M)
    assert len(rows) >= 10, "the substitution table is missing"
    return rows


def commands_to_run(text: str) -> list[str]:
    """The command lines of the ```` ```bash tested ```` blocks, in order (comments and blank lines dropped)."""
    blocks = re.findall(r"^```bash tested\n(.*?)^```$", text, re.M | re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def named_outputs(text: str) -> list[str]:
    """Concrete output paths the tutorial names in inline code (under data/ or runs/, without placeholders)."""
    spans = re.findall(r"`((?:data|runs)/[^`\s]+)`", text)
    return [s for s in spans if not re.search(r"NAME|NNN|\*|\.\.\.", s)]


def run_line(line: str) -> None:
    argv = shlex.split(line, comments=True)
    if argv[0] == "cryoscape":
        assert main(argv[1:]) == 0, line
    else:
        pytest.fail(f"tests cannot run this command (only cryoscape commands): {line}")


def tour_commands(text: str) -> list[str]:
    """The command lines of the README's "A short tour" bash block (comments kept: shlex drops them)."""
    section = text.split("## A short tour", 1)[1]
    block = re.search(r"^```bash\n(.*?)^```$", section, re.M | re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_document_structure():
    text = TUTORIAL.read_text()
    commands = commands_to_run(text)
    names = [shlex.split(c)[1] for c in commands if c.startswith("cryoscape ")]
    for step in ("downsample", "backproject", "train", "analyze", "filter", "graph-traversal", "eval-vol"):
        assert step in names, step
    assert any("--zdim 1 " in c for c in commands) and any("--zdim 10 " in c for c in commands)
    assert all(c.startswith("cryoscape ") for c in commands), commands  # no python one-liners


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    text = TUTORIAL.read_text()
    rows = substitutions(text)
    for old, new in rows:
        assert old in text, f"substitution {old!r} is not used by the tutorial"
        text = text.replace(old, new)
    monkeypatch.chdir(tmp_path)
    run_line(STAND_IN)
    commands = commands_to_run(text)
    assert len(commands) >= 12
    for line in commands:
        run_line(line)

    missing = [p for p in named_outputs(text) if not Path(p).exists()]
    assert not missing, f"outputs named in the tutorial were not written: {missing}"

    # the pilot's filter kept particles with -1 <= z1 <= 1000, and the 10-D run trained on exactly those
    z1 = np.load("runs/pilot_z1/latents/epoch_001.npy")[:, 0]
    kept = np.load("runs/pilot_z1/keep/indices.npy")
    np.testing.assert_array_equal(kept, np.load("runs/pilot_z1/indices.npy")[(z1 >= -1) & (z1 <= 1000)])
    np.testing.assert_array_equal(np.load("runs/z10/indices.npy"), kept)
    # the final subset: clusters 0 and 2 of the analysis, written back as rows of the original refinement STAR
    labels = np.load("runs/z10/analysis/epoch_001/kmeans4/labels.npy")
    chosen = np.sort(kept[np.isin(labels, [0, 2])])
    np.testing.assert_array_equal(np.load("runs/z10/keep/indices.npy"), chosen)
    np.testing.assert_array_equal(np.load("runs/z10/keep_full/indices.npy"), chosen)
    original = starfile.read("sim/particles.star")
    subset = starfile.read("runs/z10/keep_full/particles.star")
    assert list(subset["particles"]["rlnImageName"]) == list(original["particles"]["rlnImageName"].iloc[chosen])
    assert list(subset["optics"].columns) == list(original["optics"].columns)
    # ... and as rows of the cryoSPARC .cs file, every field kept
    cs = np.load("sim/particles.cs")
    cs_subset = np.load("runs/z10/keep_cs/particles.cs")
    assert cs_subset.dtype == cs.dtype
    np.testing.assert_array_equal(cs_subset["uid"], cs["uid"][chosen])
    # the cryoSPARC route: the STAR written from the .cs has the .cs particles' defocus, in order
    converted = starfile.read("data/from_cryosparc.128.star")["particles"]
    np.testing.assert_allclose(converted["rlnDefocusU"], cs["ctf/df1_A"], rtol=1e-5)
    assert list(converted["rlnImageName"]) == [f"{i:06d}@from_cryosparc.128.mrcs" for i in range(1, len(cs) + 1)]


@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    commands = tour_commands(text)
    names = [shlex.split(c)[1] for c in commands]
    for step in ("downsample", "backproject", "train", "analyze", "graph-traversal", "eval-vol", "filter",
                 "explore", "fsc", "simulate", "evaluate"):
        assert step in names, step
    lines, used = [], set()
    for line in commands:
        line = shlex.join(shlex.split(line, comments=True)) + " "
        for old, new in TOUR_SUBSTITUTIONS:
            if old in line:
                used.add(old)
                line = line.replace(old, new)
        lines.append(line.strip())
    unused = [old for old, _ in TOUR_SUBSTITUTIONS if old not in used]
    assert not unused, f"substitutions not used by the tour: {unused}"
    monkeypatch.chdir(tmp_path)
    run_line(TOUR_STAND_IN)
    for line in lines:
        run_line(line)

    # what the tour names exists
    for path in ("data/p128.mrcs", "data/p128.star", "data/bp/backproject.mrc", "runs/z8/analysis/index.html",
                 "runs/z8/analysis/chimerax.cxc", "runs/z8/path/z_values.txt", "maps/vol_001.mrc",
                 "fsc/fsc.txt", "runs/z8/explore.html", "eval.json"):
        assert Path(path).exists(), path
    # filter found the k-means labels that analyze wrote with -o runs/z8/analysis
    labels = np.load("runs/z8/analysis/kmeans6/labels.npy")
    expected = np.sort(np.load("runs/z8/indices.npy")[np.isin(labels, [2, 5])])
    np.testing.assert_array_equal(np.load("runs/z8/keep/indices.npy"), expected)
    # the maps along the path are those of its latent points
    path_z = np.loadtxt("runs/z8/path/z_values.txt", ndmin=2)
    assert len(list(Path("maps").glob("vol_*.mrc"))) == len(path_z)
