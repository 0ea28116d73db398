"""Untrusted files never run code: pickles go through the restricted unpickler, checkpoints through
``torch.load(weights_only=True)``. Shown at the CLI level with payloads that would create a marker file."""

from __future__ import annotations

import ast
import gc
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cryoscape
from cryoscape.cli.main import main

SMALL = ["--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
         "--no-progress", "--threads", "1", "--device", "cpu", "-n", "1"]


class _Payload:
    """Unpickling this calls ``func(*args)``: what an attacker's pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def evil_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that would create ``marker`` when loaded by a plain unpickler, in several disguises."""
    cmd = f"touch {marker}"
    rot = np.eye(3, dtype=np.float32)[None].repeat(4, 0)
    return {
        "os_system": pickle.dumps(_Payload(os.system, cmd), protocol=4),
        "os_system_protocol0": pickle.dumps(_Payload(os.system, cmd), protocol=0),
        "inside_pose_tuple": pickle.dumps((rot, _Payload(os.system, cmd)), protocol=2),
        "builtins_exec": pickle.dumps(_Payload(exec, f"open({str(marker)!r}, 'w').close()"), protocol=4),
        "subprocess": pickle.dumps(_Payload(__import__("subprocess").call, ["touch", str(marker)]), protocol=4),
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "16", "-D", "16", "--apix", "6", "--snr", "2",
                 "--pkl", "-o", str(out)]) == 0
    return out


def test_payloads_would_really_run(tmp_path):
    """The payloads are live: a plain unpickler runs them (so the refusals below mean something)."""
    marker = tmp_path / "ran"
    pickle.loads(evil_pickles(marker)["os_system"])
    assert marker.exists()


@pytest.mark.parametrize("option", ["--poses", "--ctf", "--ind"])
@pytest.mark.parametrize("kind", ["os_system", "os_system_protocol0", "inside_pose_tuple", "builtins_exec",
                                  "subprocess"])
def test_train_refuses_malicious_pickles(sim, tmp_path, capsys, option, kind):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(evil_pickles(marker)[kind])
    files = {"--poses": sim / "pose.pkl", "--ctf": sim / "ctf.pkl"}
    files[option] = evil
    argv = ["train", str(sim / "particles.mrcs"), "--poses", str(files["--poses"]), "--ctf", str(files["--ctf"]),
            "-o", str(tmp_path / "run"), *SMALL]
    if option == "--ind":
        argv[6:6] = ["--ind", str(evil)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(evil) in err and "refusing to load this pickle" in err
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "run").exists()


def corrupt_dtype_pickle() -> bytes:
    """An index array whose pickled int64 dtype claims to hold Python objects (found by bench/fuzz_readers.py)."""
    raw = pickle.dumps(np.array([0, 2, 4]), protocol=4)
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # (..., elsize -1, alignment -1, flags 0)
    assert raw.count(flags) == 1
    return raw.replace(flags, flags.replace(b"K\x00", b"K\x11"))


def test_dtype_flagged_as_objects_is_refused(sim, tmp_path, capsys, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    arr = pickle.loads(corrupt_dtype_pickle())  # a plain unpickler builds it ...
    assert arr.dtype.flags & 1
    del arr
    gc.collect()
    assert unraisable, "numpy did not object when freeing the corrupt array"  # ... and numpy trips over it
    unraisable.clear()
    evil = tmp_path / "ind.pkl"
    evil.write_bytes(corrupt_dtype_pickle())
    capsys.readouterr()
    assert main(["train", str(sim / "particles.star"), "--ind", str(evil), "-o", str(tmp_path / "run"),
                 *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(evil) in err and "flagged as holding Python objects" in err
    gc.collect()
    assert not unraisable and not (tmp_path / "run").exists()


def test_malicious_checkpoint_is_refused(sim, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), *SMALL]) == 0
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / "epoch_001.pt"
    state = torch.load(ckpt, weights_only=True)
    state["history"] = [_Payload(os.system, f"touch {marker}")]
    torch.save(state, ckpt)
    assert not marker.exists()
    capsys.readouterr()
    for argv in (["eval-vol", str(run), "--z", "0", "0", "-o", str(tmp_path / "vol.mrc"), "--device", "cpu"],
                 ["eval-images", str(run), "-o", str(tmp_path / "z.npy"), "--device", "cpu"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(ckpt) in err and "cannot read checkpoint" in err
        assert "UnpicklingError" in err
    assert not marker.exists(), "the checkpoint's payload ran"
    assert not (tmp_path / "vol.mrc").exists() and not (tmp_path / "z.npy").exists()


def test_malicious_interrupted_checkpoint_is_ignored_on_resume(sim, tmp_path):
    """A planted ``interrupted.pt`` cannot run code; --resume falls back to the last complete epoch."""
    run = tmp_path / "run"
    star = str(sim / "particles.star")
    assert main(["train", star, "-o", str(run), *SMALL]) == 0
    marker = tmp_path / "pwned"
    evil = run / "checkpoints" / "interrupted.pt"
    torch.save({"epoch": 5, "family": "cryodrgn", "model": _Payload(os.system, f"touch {marker}")}, evil)
    assert main(["train", star, "-o", str(run), "--resume", *SMALL[:-1], "2"]) == 0
    assert not marker.exists()
    assert (run / "checkpoints" / "epoch_002.pt").exists()
    assert "resuming from" in (run / "log.txt").read_text() and "epoch_001.pt" in (run / "log.txt").read_text()


# ------------------------------------------------------------------------------------------ static checks
SRC = Path(cryoscape.__file__).parent


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_every_loader_in_the_package_is_safe():
    """torch.load always with weights_only=True; np.load never with allow_pickle=True; no plain unpickling."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if owner == "torch" and name == "load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("np", "numpy") and name == "load":
                v = kw.get("allow_pickle")
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
            if owner in ("pickle", "joblib", "dill") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name} (use cryoscape.io.pkl.load_pickle)")
            if owner == "pd" and name == "read_pickle":
                problems.append(f"{where}: pandas.read_pickle")
    assert not problems, "\n".join(problems)
