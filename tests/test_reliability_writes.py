"""Outputs are written atomically; a full disk or an unwritable output folder gives one clear line, early, and
never damages an earlier checkpoint."""

from __future__ import annotations

import ast
import io
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

import cryoscape
from cryoscape.cli.main import main
from cryoscape.errors import OutputError
from cryoscape.train.checkpoint import load_checkpoint
from cryoscape.utils import diskspace
from cryoscape.utils.atomic import atomic_path

SMALL = ["--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
         "--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(out)]) == 0
    return out


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------ atomic writes everywhere
SRC = Path(cryoscape.__file__).parent
_WRITERS = {("np", "save"), ("np", "savez"), ("np", "savez_compressed"), ("np", "savetxt"), ("torch", "save"),
            ("starfile", "write"), ("mrcfile", "new"), ("mrcfile", "new_mmap"), ("json", "dump"), ("yaml", "dump"),
            ("yaml", "safe_dump")}
_METHODS = {"savefig", "write_text", "write_bytes", "to_csv", "tofile"}
_ATOMIC_CONTEXTS = {"atomic_path", "open_stack_for_writing"}


def _non_atomic_writes(path: Path, root: Path = SRC) -> list[str]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def inside_atomic(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.With):
                for item in node.items:
                    c = item.context_expr
                    if isinstance(c, ast.Call) and getattr(c.func, "id", getattr(c.func, "attr", "")) in \
                            _ATOMIC_CONTEXTS:
                        return True
            if isinstance(node, ast.FunctionDef) and node.name in ("atomic_path", "atomic_write_text"):
                return True
        return False

    buffers = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
               and getattr(node.value.func, "attr", getattr(node.value.func, "id", "")) in ("BytesIO", "StringIO")
               for t in node.targets if isinstance(t, ast.Name)}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Attribute, ast.Name)):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        is_write = (owner, name) in _WRITERS or (isinstance(f, ast.Attribute) and name in _METHODS)
        if owner == "yaml" and len(node.args) < 2 and "stream" not in {k.arg for k in node.keywords}:
            is_write = False  # yaml.dump(doc) returns a string
        if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in buffers:
            is_write = False  # an in-memory buffer
        if name == "open" and isinstance(f, ast.Name) and len(node.args) > 1:
            mode = node.args[1]
            is_write = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax")
        if is_write and not inside_atomic(node):
            bad.append(f"{path.relative_to(root)}:{node.lineno}: {owner + '.' if owner else ''}{name}")
    return bad


def test_every_output_file_is_written_through_atomic_path():
    """Checkpoints, latents, volumes, metadata, reports and plots: all written to a temporary name and renamed.

    (An in-memory buffer, e.g. ``fig.savefig(buf)`` for an embedded image, is not a file.)
    """
    bad = [b for p in sorted(SRC.rglob("*.py")) for b in _non_atomic_writes(p)]
    assert not bad, "writes outside atomic_path:\n" + "\n".join(bad)


def test_scanner_catches_a_plain_write(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("import numpy as np\nfrom cryoscape.utils.atomic import atomic_path\n\n"
                      "def f(p, a, fig):\n    np.save(p, a)\n    with atomic_path(p) as tmp:\n"
                      "        np.save(tmp, a)\n    fig.savefig(p)\n    with open(p, 'w') as fh:\n"
                      "        fh.write('x')\n")
    assert _non_atomic_writes(module, tmp_path) == ["probe.py:5: np.save", "probe.py:8: fig.savefig",
                                                    "probe.py:9: open"]


def test_atomic_path_keeps_the_old_file_when_a_write_fails(tmp_path):
    target = tmp_path / "z.npy"
    np.save(target, np.arange(3))
    with pytest.raises(OutputError, match=r"z\.npy: could not write this file .*disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(28, "No space left on device")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npy"]


# ------------------------------------------------------------------------------------ disk full while training
def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resume_recovers(sim, tmp_path, capsys, monkeypatch):
    star = str(sim / "particles.star")
    ref = tmp_path / "ref"
    assert main(["train", star, "-o", str(ref), "-n", "2", *SMALL]) == 0

    real_save = torch.save
    calls = {"n": 0}

    def save_until_disk_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 2:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()  # what torch does on a full disk: a partial file, then a RuntimeError
        real_save(obj, buf, *args, **kwargs)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_until_disk_full)
    capsys.readouterr()
    assert main(["train", star, "-o", str(run), "-n", "2", *SMALL]) == 2
    line = one_error_line(capsys)
    assert str(run / "checkpoints" / "epoch_002.pt") in line and "disk full" in line and "--resume" in line
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.pt"]  # no partial file left
    first = load_checkpoint(run / "checkpoints" / "epoch_001.pt")
    expected = load_checkpoint(ref / "checkpoints" / "epoch_001.pt")
    for k, v in expected["model"].items():
        assert torch.equal(first["model"][k], v)
    assert main(["train", star, "-o", str(run), "-n", "2", "--resume", *SMALL]) == 0
    np.testing.assert_array_equal(np.load(run / "latents" / "epoch_002.npy"),
                                  np.load(ref / "latents" / "epoch_002.npy"))


def test_not_enough_free_space_is_reported_before_anything_is_written(sim, tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 50_000, 50_000))
    before = snapshot(tmp_path)
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "20", *SMALL]) == 2
    line = one_error_line(capsys)
    assert str(run) in line and "not enough free disk space" in line and "20 checkpoint(s)" in line
    assert "48.8 KiB free" in line and "--checkpoint-every" in line
    assert snapshot(tmp_path) == before


def test_free_space_estimate_bounds_the_real_files(sim, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "3", "--checkpoint-every", "2",
                 *SMALL[:6], "--dec-dim", "48", "--dec-layers", "2", *SMALL[10:]]) == 0
    from cryoscape.models.loading import load_run

    model = load_run(run).model
    per_ckpt = diskspace.estimate_checkpoint_bytes(model)
    actual = (run / "checkpoints" / "epoch_002.pt").stat().st_size
    assert actual <= per_ckpt <= 2 * actual + 128 * 1024
    n = diskspace.checkpoint_count(0, 3, 2)
    assert n == 2 and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_002.pt", "epoch_003.pt"]
    written = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    assert written <= diskspace.estimate_training_bytes(per_ckpt, n, 24, 2)
    assert diskspace.checkpoint_count(0, 10, 3) == 4 and diskspace.checkpoint_count(4, 10, 1) == 6


# ------------------------------------------------------------------------------------ unwritable output folders
def _unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot create files in: chmod for ordinary users, a read-only system folder for
    root (which ignores permissions)."""
    if os.geteuid() != 0:
        d = tmp_path / "readonly"
        d.mkdir()
        d.chmod(0o555)
        return d
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            with open(candidate / ".cryoscape-probe", "w"):
                pass
        except OSError:
            return candidate
    pytest.skip("no unwritable folder available")


@pytest.mark.parametrize("where", ["file_in_path", "unwritable"])
def test_unwritable_output_folder_fails_before_loading_data(sim, tmp_path, capsys, monkeypatch, where):
    if where == "file_in_path":
        (tmp_path / "afile").write_text("not a folder")
        out = tmp_path / "afile" / "run"
        expected = "is a file, not a folder"
    else:
        out = _unwritable_folder(tmp_path) / "cryoscape-run"
        expected = "cannot write to this output folder"

    import cryoscape.train.run as run_module

    def must_not_load(config):
        raise AssertionError("particles were loaded before the output folder was checked")

    monkeypatch.setattr(run_module, "load_training_particles", must_not_load)
    capsys.readouterr()
    assert main(["train", str(sim / "particles.star"), "-o", str(out), "-n", "1", *SMALL]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and expected in line
    assert not out.exists()


def test_output_location_checks_create_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    assert diskspace.check_output_location(target) == tmp_path
    assert diskspace.free_bytes(target) == shutil.disk_usage(tmp_path).free
    assert sorted(tmp_path.iterdir()) == []
