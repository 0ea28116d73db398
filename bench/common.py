"""Shared helpers of the benchmark scripts: machine description, ``cryoscape train`` arguments from a typed
spec, timed subprocess runs, run-log parsing.

Nothing here is imported by the cryoscape package; the scripts are run from the repository root as modules,
``.venv/bin/python -m bench.NAME``, and import this one as ``bench.common`` (no ``sys.path`` edits).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "_work"
CRYOSCAPE = ROOT / ".venv" / "bin" / "cryoscape"
# The command that runs cryoscape: the venv's entry point, or (a machine without the venv, e.g. bench/gpu_check.sh
# on a lent GPU machine) ``python -m cryoscape`` with the interpreter running the benchmark.
CRYOSCAPE_CMD = [str(CRYOSCAPE)] if CRYOSCAPE.is_file() else [sys.executable, "-m", "cryoscape"]
# the reference install (bench/setup_cryodrgn.sh); BENCH_CRYODRGN_VENV names another one (bench/gpu_check.sh's)
CRYODRGN_VENV = Path(os.environ.get("BENCH_CRYODRGN_VENV") or BENCH / "cryodrgn-venv")
CRYODRGN = CRYODRGN_VENV / "bin" / "cryodrgn"


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (as ``uptime`` prints them)."""
    return tuple(round(x, 2) for x in os.getloadavg())


def machine_info() -> dict:
    """CPU model, core count, memory, torch/python versions of this machine."""
    import torch

    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else ""
        bf16 = "avx512_bf16" in out
    except OSError:
        bf16 = False
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": bf16, "memory_gib": round(mem_gb, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": load_average(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_timed(cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; return wall seconds, peak RSS (MiB), load averages, exit code.

    stdout+stderr go to ``log_path``; the load averages are read just before and just after the run.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # without GNU time (a bare machine) the run is still timed; its peak RSS is then None
    full = (["/usr/bin/time", "-v"] if os.path.isfile("/usr/bin/time") else []) + [str(c) for c in cmd]
    load_before = load_average()
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
        fh.flush()
        proc = subprocess.run(full, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False)
    wall = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"cmd": " ".join(shlex.quote(str(c)) for c in cmd), "returncode": proc.returncode,
            "wall_s": round(wall, 2), "peak_rss_mib": round(int(m.group(1)) / 1024, 1) if m else None,
            "load_before": load_before, "load_after": load_average(), "log": str(log_path)}


def tail(path: Path, n: int = 15) -> str:
    """The last ``n`` lines of a text file."""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


@dataclass(frozen=True)
class TrainSpec:
    """One ``cryoscape train`` run. ``None``/``False`` fields are left out (the command's default applies).

    Family-specific options without a field here (``--channel-scale``, ``--tilt-embed-dim``, ...) go in ``extra``.
    """

    particles: Path | str
    out: Path | str
    model: str | None = None
    zdim: int | None = None
    enc_dim: int | None = None
    enc_layers: int | None = None
    dec_dim: int | None = None
    dec_layers: int | None = None
    pe_type: str | None = None
    feat_sigma: float | None = None
    batch: int | None = None
    epochs: int | None = None
    lr: float | None = None
    val_frac: float | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    freq_march: float | None = None
    ind: Path | str | None = None
    amp: bool = False
    lazy: bool = False
    resume: bool = False
    progress: bool = False
    extra: tuple[str, ...] | list[str] = field(default_factory=tuple)

    def args(self) -> list[str]:
        """The argument list after ``cryoscape`` (``["train", PARTICLES, "-o", OUT, ...]``), all strings."""
        out = ["train", str(self.particles), "-o", str(self.out)]
        options = [("--model", self.model), ("--zdim", self.zdim), ("--enc-dim", self.enc_dim),
                   ("--enc-layers", self.enc_layers), ("--dec-dim", self.dec_dim), ("--dec-layers", self.dec_layers),
                   ("--pe-type", self.pe_type), ("--feat-sigma", self.feat_sigma), ("-b", self.batch),
                   ("-n", self.epochs), ("--lr", self.lr), ("--val-frac", self.val_frac), ("--seed", self.seed),
                   ("--checkpoint-every", self.checkpoint_every), ("--freq-march", self.freq_march),
                   ("--ind", self.ind)]
        for flag, value in options:
            if value is not None:
                out += [flag, _number(value) if isinstance(value, float) else str(value)]
        flags = [("--amp", self.amp), ("--lazy", self.lazy), ("--resume", self.resume),
                 ("--no-progress", not self.progress)]
        out += [flag for flag, on in flags if on]
        return out + [str(a) for a in self.extra]


def _number(value: float) -> str:
    """``value`` written short (``1e-4`` -> ``0.0001``, ``15.0`` -> ``15``) but exactly."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def train_command(spec: TrainSpec) -> list[str]:
    """The full ``cryoscape train`` command line of ``spec`` (with the cryoscape executable, ``CRYOSCAPE_CMD``)."""
    return [*CRYOSCAPE_CMD, *spec.args()]


def timed_train(spec: TrainSpec, log_path: Path | None = None, env: dict | None = None,
                prefix: list[str] | None = None) -> tuple[dict, list[dict]]:
    """Run ``spec`` under ``run_timed``; return its result and the run's per-epoch ``metrics.csv`` rows.

    ``log_path`` defaults to ``OUT.log`` beside the run folder. ``prefix`` replaces the cryoscape executable (e.g.
    ``["torchrun", "--nproc_per_node=1", "-m", "cryoscape"]``). The rows are empty when the run wrote no metrics.
    """
    out = Path(spec.out)
    cmd = [*(prefix if prefix is not None else CRYOSCAPE_CMD), *spec.args()]
    res = run_timed(cmd, log_path or out.parent / f"{out.name}.log", env=env)
    rows = cryoscape_epochs(out) if (out / "metrics.csv").is_file() else []
    return res, rows


def cryoscape_epochs(run_dir: Path) -> list[dict]:
    """Per-epoch rows of a cryoscape run's ``metrics.csv`` (seconds = training loop of that epoch only)."""
    import csv

    with open(run_dir / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


_FINISHED = re.compile(r"=====> Epoch: (\d+) .*Finished in (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def cryodrgn_epoch_seconds(log_text: str) -> dict[int, float]:
    """``{epoch: seconds}`` from cryoDRGN's per-epoch "Finished in H:MM:SS.ffffff" lines."""
    out = {}
    for m in _FINISHED.finditer(log_text):
        out[int(m.group(1))] = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
    return out


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON (atomically: temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def simulation_exists(out: Path) -> bool:
    """True when ``out`` holds a finished ``cryoscape simulate --pkl`` data set."""
    return all((out / f).is_file() for f in ("particles.star", "ctf.pkl", "labels.npz"))


def ensure_simulation(preset: str, n: int, D: int, snr: float, out: Path, seed: int = 0,
                      source: list[str] | None = None) -> Path:
    """``cryoscape simulate`` into ``out`` (with cryoDRGN pose.pkl/ctf.pkl) unless it is already there.

    ``source``: simulate options replacing ``--preset PRESET`` (e.g. ``["--pdb", "model.pdb", "--apix", "3"]``).
    """
    if simulation_exists(out):
        return out
    cmd = [*CRYOSCAPE_CMD, "simulate", *(source or ["--preset", preset]), "-N", str(n), "-D", str(D),
           "--snr", str(snr), "--seed", str(seed), "--pkl", "-o", str(out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def need_cryodrgn() -> bool:
    """True when the reference install (bench/setup_cryodrgn.sh) is present."""
    if CRYODRGN.is_file():
        return True
    print(f"note: {CRYODRGN} not found; run `bash bench/setup_cryodrgn.sh` for the cryoDRGN comparison",
          file=sys.stderr)
    return False
