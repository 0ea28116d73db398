"""docs/tutorial.md cannot rot: its `bash tested` blocks run, in order, on a small simulated stand-in.

The sizes and paths are replaced with the substitution table of the tutorial's last section (parsed from the
document itself; every row must be used). `cryoscape` commands run in-process through the CLI entry point
(``main``), `python -c` one-liners with ``exec``; any other command in a tested block fails the test. Afterwards
every output path the tutorial names under data/ or runs/ must exist, and the subsets it writes must hold the
particles it selected.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryoscape.cli.main import main

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
STAND_IN = "cryoscape simulate --preset discrete3 -N 120 -D 32 --apix 3 --snr 2 --cs -o sim"


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
    argv = shlex.split(line)
    if argv[0] == "cryoscape":
        assert main(argv[1:]) == 0, line
    elif argv[:2] == ["python", "-c"] and len(argv) == 3:
        exec(compile(argv[2], "<tutorial>", "exec"), {"__name__": "__main__"})
    else:
        pytest.fail(f"tests cannot run this tutorial command: {line}")


def test_document_structure():
    text = TUTORIAL.read_text()
    commands = commands_to_run(text)
    names = [shlex.split(c)[1] for c in commands if c.startswith("cryoscape ")]
    for step in ("downsample", "backproject", "train", "analyze", "filter", "graph-traversal", "eval-vol"):
        assert step in names, step
    assert any("--zdim 1 " in c for c in commands) and any("--zdim 10 " in c for c in commands)
    assert all(c.startswith(("cryoscape ", "python -c ")) for c in commands), commands


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
    original = starfile.read("sim/particles.star")
    subset = starfile.read("runs/z10/keep/run_data_selected.star")
    assert list(subset["particles"]["rlnImageName"]) == list(original["particles"]["rlnImageName"].iloc[chosen])
    assert list(subset["optics"].columns) == list(original["optics"].columns)
    # the cryoSPARC route: the STAR written from the .cs has the .cs particles' defocus, in order
    cs = np.load("sim/particles.cs")
    converted = starfile.read("data/from_cryosparc.star")["particles"]
    np.testing.assert_allclose(converted["rlnDefocusU"], cs["ctf/df1_A"], rtol=1e-5)
