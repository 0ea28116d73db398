"""bench/ is a package: its helper builds ``cryoscape train`` argument lists that the real parser accepts."""

import dataclasses
import subprocess
import sys
from pathlib import Path

from bench.common import TrainSpec, timed_train, train_command
from cryoscape.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_every_train_spec_field_reaches_the_train_parser():
    spec = TrainSpec("p.star", "out", model="tomodrgn", zdim=8, enc_dim=32, enc_layers=2, dec_dim=64, dec_layers=3,
                     pe_type="gaussian", feat_sigma=0.5, batch=16, epochs=3, lr=1.23456789e-4, val_frac=0.0, seed=5,
                     checkpoint_every=3, freq_march=2.0, ind="i.pkl", amp=True, lazy=True, resume=True,
                     extra=["--tilt-embed-dim", "16"])
    args = build_parser().parse_args(spec.args())
    expected = {"command": "train", "particles": "p.star", "outdir": "out", "model": "tomodrgn", "zdim": 8,
                "enc_dim": 32, "enc_layers": 2, "dec_dim": 64, "dec_layers": 3, "pe_type": "gaussian",
                "feat_sigma": 0.5, "batch_size": 16, "epochs": 3, "lr": 1.23456789e-4, "val_frac": 0.0, "seed": 5,
                "checkpoint_every": 3, "freq_march": 2.0, "ind": "i.pkl", "amp": True, "lazy": True, "resume": True,
                "no_progress": True, "tilt_embed_dim": 16}
    assert {k: getattr(args, k) for k in expected} == expected
    # every field of the spec is covered above (a new field must be given a flag and checked here)
    assert {f.name for f in dataclasses.fields(TrainSpec)} - {"particles", "out", "batch", "progress", "extra"} <= \
        set(expected)


def test_unset_fields_are_left_to_the_command_defaults():
    spec = TrainSpec("p.star", "out", progress=True)
    assert spec.args() == ["train", "p.star", "-o", "out"]
    args = build_parser().parse_args(spec.args())
    assert args.zdim is None and args.lr is None and not args.amp and not args.no_progress
    assert train_command(spec)[-4:] == spec.args()


def test_timed_train_reports_failure_and_no_epochs(tmp_path):
    res, rows = timed_train(TrainSpec(tmp_path / "missing.star", tmp_path / "run", epochs=1))
    assert res["returncode"] != 0 and rows == []
    assert "missing.star" in (tmp_path / "run.log").read_text()


def test_bench_scripts_import_as_modules_without_sys_path_edits():
    for name in ("accuracy", "opus_dsd", "scale", "throughput", "tomodrgn", "tomodrgn_continue"):
        source = (ROOT / "bench" / f"{name}.py").read_text()
        assert "sys.path" not in source, name
    proc = subprocess.run([sys.executable, "-m", "bench.throughput", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--sizes" in proc.stdout, proc.stderr
