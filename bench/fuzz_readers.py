"""Fuzz the particle readers (RELION STAR, cryoSPARC .cs, MRC stacks, cryoDRGN pickles) with hypothesis.

Seeds are a tiny simulated dataset (``cryoscape simulate``, D=16); hypothesis draws structured mutations of
them (lines, tokens, column names, header fields, dtypes, bytes, truncation). Each mutated file goes through
the same path as ``cryoscape train`` reads it (``load_particles`` then every image, pose and CTF value).

Outcomes per input:
  rejected  -- a cryoscape ``InputError`` (what the CLI turns into one clear line): fine;
  accepted  -- read without error; then the values must be usable: finite, positive pixel size, voltage > 0,
               amplitude contrast in [0, 1], square even box (otherwise counted as ``invalid``);
  crash     -- any other exception (a traceback for the user): a bug;
  hang      -- more than --timeout seconds for one input.

Usage::

    python bench/fuzz_readers.py --examples 3000 --seed 0 --out fuzz-out
    python bench/fuzz_readers.py --targets star cs --examples 500

Crashing inputs are saved under ``OUT/crashes/`` with a JSON summary in ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import pickle
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from cryoscape.errors import InputError

TOKENS = ["", "nan", "NaN", "inf", "-inf", "-1", "0", "1e309", "-0", "abc", "1,5", "0x10", "000000@particles.mrcs",
          "@", "@@", "999999@particles.mrcs", "1@", "1@missing.mrcs", "1@../particles.mrcs", "1@/",
          "2.5@particles.mrcs", "-3@particles.mrcs", "1@particles.mrcs@x", "1e3", "\t", "\"", "'", "#", "_rlnX",
          "data_", "loop_", "3000000000", "-3000000000", "1.0.0", "☃", "\x00"]
LABELS = ["_rlnImageName", "_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi", "_rlnOriginXAngst", "_rlnOriginYAngst",
          "_rlnOriginX", "_rlnOriginY", "_rlnDefocusU", "_rlnDefocusV", "_rlnDefocusAngle", "_rlnVoltage",
          "_rlnSphericalAberration", "_rlnAmplitudeContrast", "_rlnImagePixelSize", "_rlnImageSize",
          "_rlnOpticsGroup", "_rlnOpticsGroupName", "_rlnDetectorPixelSize", "_rlnMagnification",
          "_rlnPhaseShift", "_rlnCtfBfactor", "_rlnCtfScalefactor", "_rlnMicrographName", "_rlnUnknown"]
MRC_FIELDS = {"nx": 0, "ny": 4, "nz": 8, "mode": 12, "mx": 28, "my": 32, "mz": 36, "mapc": 64, "mapr": 68,
              "maps": 72, "ispg": 88, "nsymbt": 92, "nlabl": 220}
INTS = [0, 1, -1, 2, 3, 4, 6, 12, 15, 16, 17, 32, 101, 1024, 65536, 2**31 - 1, -2**31, 100000]


# ------------------------------------------------------------------------------------------------ seeds
def make_seeds(root: Path) -> dict[str, Path]:
    """A tiny dataset: particles.{mrcs,star,cs}, a RELION 3.0 STAR, pose.pkl, ctf.pkl, an index pickle."""
    from cryoscape.cli.main import main
    from cryoscape.io.particles import load_particles
    from cryoscape.io.star import format_image_names, write_star

    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["simulate", "--preset", "discrete3", "-N", "6", "-D", "16", "--apix", "3", "--snr", "1",
                     "--cs", "--pkl", "-o", str(root)]) == 0
    p = load_particles(root / "particles.star")
    write_star(root / "relion30.star", format_image_names(["particles.mrcs"] * len(p), np.arange(len(p))),
               p.pixel_size_angstrom, p.D, p.poses, p.ctf, relion30=True)
    with open(root / "ind.pkl", "wb") as fh:
        pickle.dump(np.array([0, 2, 4]), fh)
    return {"star": root / "particles.star", "star30": root / "relion30.star", "cs": root / "particles.cs",
            "mrc": root / "particles.mrcs", "pose": root / "pose.pkl", "ctf": root / "ctf.pkl",
            "ind": root / "ind.pkl"}


# ------------------------------------------------------------------------------------------------ mutations
@st.composite
def star_mutation(draw, text: str) -> bytes:
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "token", "label", "truncate", "insert", "case",
                                   "row_short", "row_long", "blank_block"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "token":
            rows = [k for k, ln in enumerate(lines) if ln and not ln.startswith(("_", "data_", "loop_", "#"))]
            if rows:
                k = draw(st.sampled_from(rows))
                fields = lines[k].split()
                j = draw(st.integers(0, len(fields) - 1))
                fields[j] = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8),
                                           st.floats().map(repr), st.integers().map(str)))
                lines[k] = "\t".join(fields)
        elif op == "label":
            heads = [k for k, ln in enumerate(lines) if ln.startswith("_")]
            if heads:
                k = draw(st.sampled_from(heads))
                rest = lines[k].split(" ", 1)[1] if " " in lines[k] else ""
                lines[k] = f"{draw(st.sampled_from(LABELS))} {rest}"
        elif op == "truncate":
            joined = "\n".join(lines)
            lines = joined[: draw(st.integers(0, len(joined)))].split("\n")
        elif op == "insert":
            lines.insert(i, draw(st.one_of(st.sampled_from(TOKENS + LABELS), st.text(max_size=30))))
        elif op == "case":
            lines[i] = lines[i].upper()
        elif op in ("row_short", "row_long"):
            fields = lines[i].split()
            if op == "row_short" and fields:
                fields = fields[:-1]
            else:
                fields.append(draw(st.sampled_from(TOKENS)))
            lines[i] = "\t".join(fields)
        elif op == "blank_block":
            lines = [ln for ln in lines if not ln.startswith(("opticsGroup", "0000"))] if draw(st.booleans()) \
                else [ln for ln in lines if not ln.startswith("_rlnOptics")]
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # a few raw byte flips
        data = flip_bytes(draw, data)
    return data


def flip_bytes(draw, data: bytes, max_flips: int = 8) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, max_flips))):
        if not raw:
            break
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@st.composite
def cs_mutation(draw, arr: np.ndarray) -> bytes:
    arr = arr.copy()
    names = list(arr.dtype.names)
    op = draw(st.sampled_from(["drop", "retype", "values", "rows", "shape", "bytes", "truncate", "rename"]))
    if op in ("drop", "rename", "retype"):
        chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
        fields = []
        for n in names:
            dt = arr.dtype.fields[n][0]
            if n in chosen and op == "drop":
                continue
            if n in chosen and op == "rename":
                fields.append((n + draw(st.sampled_from(["_", "/x", " "])), dt))
                continue
            if n in chosen and op == "retype":
                dt = np.dtype(draw(st.sampled_from(["<f8", "<i2", "<u1", "S3", "<f4", "<c8", "?", "<u8"])))
            fields.append((n, dt))
        new = np.zeros(arr.shape, dtype=fields)
        for (n, _), orig in zip(fields, [f for f in names if not (op == "drop" and f in chosen)], strict=False):
            with contextlib.suppress(Exception):
                new[n] = arr[orig]
        arr = new
    elif op == "values":
        n = draw(st.sampled_from(names))
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf, -1, 0, 1e30, 2**31, -5.5, 16, 17, 15, 1e-30]))
        with contextlib.suppress(Exception):
            rows = draw(st.lists(st.integers(0, len(arr) - 1), min_size=1, max_size=len(arr)))
            arr[n][rows] = value
        if n == "blob/path" and draw(st.booleans()):
            arr[n] = draw(st.sampled_from([b"", b">", b"missing.mrcs", b"/", b"..", b"particles.mrcs\x00x",
                                          b"\xff\xfe"]))
    elif op == "rows":
        k = draw(st.integers(0, len(arr) + 3))
        arr = arr[np.arange(k) % len(arr)] if k else arr[:0]
    elif op == "shape":
        arr = arr.reshape(draw(st.sampled_from([(1, -1), (-1, 1), (len(arr), 1)])))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    if op == "bytes":
        data = flip_bytes(draw, data, 16)
    elif op == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def mrc_mutation(draw, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["field", "field", "map_id", "machst", "cella", "truncate", "append", "data",
                                   "bytes"]))
        if op == "field":
            off = MRC_FIELDS[draw(st.sampled_from(sorted(MRC_FIELDS)))]
            data[off : off + 4] = struct.pack("<i", draw(st.one_of(st.sampled_from(INTS),
                                                                   st.integers(-2**31, 2**31 - 1))))
        elif op == "map_id":
            data[208:212] = draw(st.sampled_from([b"MAP ", b"    ", b"PAM ", b"\x00\x00\x00\x00", b"MAP\x00"]))
        elif op == "machst":
            data[212:216] = draw(st.sampled_from([b"\x44\x44\x00\x00", b"\x11\x11\x00\x00", b"\x00\x00\x00\x00",
                                                  b"\xff\xff\xff\xff"]))
        elif op == "cella":
            off = draw(st.sampled_from([40, 44, 48]))
            data[off : off + 4] = struct.pack("<f", draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e-30, 1e30,
                                                                          48.0])))
        elif op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "append":
            data += bytes(draw(st.integers(1, 5000)))
        elif op == "data" and len(data) > 1024 + 4:
            k = draw(st.integers(1024, len(data) - 4))
            data[k : k + 4] = struct.pack("<f", draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, 0.0])))
        elif op == "bytes":
            data = bytearray(flip_bytes(draw, bytes(data), 16))
    return bytes(data)


@st.composite
def pkl_mutation(draw, raw: bytes) -> bytes:
    op = draw(st.sampled_from(["bytes", "truncate", "splice", "object"]))
    if op == "bytes":
        return flip_bytes(draw, raw, 6)
    if op == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if op == "splice":
        k = draw(st.integers(0, len(raw)))
        return raw[:k] + draw(st.binary(max_size=20)) + raw[k:]
    obj = draw(st.sampled_from([
        None, 3, "x", [], (), {}, np.zeros((4, 3, 3)), (np.zeros((6, 3, 3)), np.zeros((6, 3))),
        (np.full((6, 3, 3), np.nan), np.zeros((6, 2))), np.zeros((6, 9)), np.full((6, 9), np.inf),
        np.zeros((6, 8)), np.array(["a", "b"]), np.array([1.5, 2.0]), np.array([[1, 2]]), [0, 1, 1],
        np.array([-1]), {"rot": np.zeros((6, 3, 3))}, (np.eye(3)[None].repeat(6, 0), np.full((6, 2), 5.0)),
        np.zeros((0, 9)), np.array([], dtype=np.int64), np.array(3), np.array([2**62]), np.zeros((6, 9), "<c8"),
    ]))
    return pickle.dumps(obj, protocol=draw(st.sampled_from([0, 2, 4, 5])))


# ------------------------------------------------------------------------------------------------ oracles
def check_particles(particles) -> str | None:
    """``None`` when the loaded values are usable, else what is wrong."""
    n = len(particles)
    if n == 0:
        return "no particles accepted"
    px = particles.pixel_size_angstrom
    if not (np.isfinite(px) and px > 0):
        return f"pixel size {px}"
    D = particles.D
    if D % 2 or D < 2:
        return f"box {D}"
    images = particles.images[np.arange(n)]
    if images.shape != (n, D, D) or not np.isfinite(images).all():
        return "images not finite or of the wrong shape"
    if particles.poses is not None:
        shifts32 = particles.poses.shifts_angstrom.astype(np.float32)  # training runs in float32
        if not (np.isfinite(particles.poses.rotations).all() and np.isfinite(shifts32).all()):
            return "poses not finite"
        r = particles.poses.rotations
        if np.abs(r @ r.transpose(0, 2, 1) - np.eye(3)).max() > 1e-3:
            return "rotation matrices not orthonormal"
    if particles.ctf is not None:
        c = particles.ctf
        if not np.isfinite(c.to_array()).all():
            return "CTF not finite"
        if (c.voltage_kv <= 0).any():
            return "voltage <= 0"
        if ((c.amplitude_contrast < 0) | (c.amplitude_contrast > 1)).any():
            return "amplitude contrast outside [0, 1]"
    return None


def target_star(path: Path, seeds: dict):
    from cryoscape.io.particles import load_particles

    return check_particles(load_particles(path))


def target_cs(path: Path, seeds: dict):
    from cryoscape.io.particles import load_particles

    return check_particles(load_particles(path))


def target_mrc(path: Path, seeds: dict):
    from cryoscape.io.imagestack import ImageStack
    from cryoscape.io.mrc import read_header, read_mrc
    from cryoscape.io.particles import load_particles

    read_header(path)
    read_mrc(path)
    ImageStack.from_mrcs(path).to_array()
    return check_particles(load_particles(path, poses=seeds["pose"], ctf=seeds["ctf"]))


def target_pkl(path: Path, seeds: dict):
    from cryoscape.io.indices import read_indices
    from cryoscape.io.particles import load_particles

    for option in ("poses", "ctf"):
        with contextlib.suppress(InputError):
            kwargs = {"poses": seeds["pose"], "ctf": seeds["ctf"], option: path}
            bad = check_particles(load_particles(seeds["mrc"], **kwargs))
            if bad:
                return f"--{option}: {bad}"
    idx = read_indices(path, n=6)
    if idx.min() < 0 or idx.max() >= 6:
        return "index out of range accepted"
    return None


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang()


def run_target(name: str, strategy, target, seeds: dict, work: Path, suffix: str, examples: int, seed: int,
               timeout: float, crash_dir: Path) -> dict:
    stats = collections.Counter()
    crashes: dict[str, dict] = {}
    invalid: dict[str, int] = collections.Counter()
    t0 = time.perf_counter()

    def unraisable(info):  # e.g. an exception while freeing a half-built object: printed, not raised
        stats["unraisable"] += 1
        _save(crash_dir, name, f"unraisable {type(info.exc_value).__name__}", current[0], suffix, crashes,
              f"{type(info.exc_value).__name__}: {str(info.exc_value)[:200]}")

    current = [b""]

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(strategy)
    def fuzz(data):
        stats["tried"] += 1
        current[0] = data
        path = work / f"fuzz{suffix}"
        path.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                problem = target(path, seeds)
            if problem:
                stats["invalid"] += 1
                invalid[problem] += 1
                _save(crash_dir, name, "invalid-" + problem, data, suffix, crashes, problem)
            else:
                stats["accepted"] += 1
        except InputError:
            stats["rejected"] += 1
        except Hang:
            stats["hang"] += 1
            _save(crash_dir, name, "hang", data, suffix, crashes, "no answer within the time limit")
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding
            stats["crash"] += 1
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if "cryoscape" in f.filename]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "outside cryoscape"
            key = f"{type(exc).__name__} at {where}"
            _save(crash_dir, name, key, data, suffix, crashes, f"{type(exc).__name__}: {str(exc)[:200]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    random.seed(seed)
    np.random.seed(seed)
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        fuzz()  # never fails: every outcome is counted
    finally:
        sys.unraisablehook = previous_hook
    return {"target": name, **dict(stats), "seconds": round(time.perf_counter() - t0, 1),
            "findings": {k: {"count": v["count"], "example": v["example"], "message": v["message"]}
                         for k, v in crashes.items()}}


def _save(crash_dir: Path, target: str, key: str, data: bytes, suffix: str, crashes: dict, message: str) -> None:
    entry = crashes.setdefault(key, {"count": 0, "example": None, "message": message})
    entry["count"] += 1
    if entry["example"] is None:
        crash_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() else "_" for c in key)[:60]
        out = crash_dir / f"{target}-{safe}{suffix}"
        out.write_bytes(data)
        entry["example"] = str(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=2000, help="inputs per target (default 2000)")
    p.add_argument("--targets", nargs="+", default=["star", "star30", "cs", "mrc", "pkl"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per input before it counts as a hang")
    p.add_argument("--out", default="fuzz-out", help="folder for the summary and crashing inputs")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    signal.signal(signal.SIGALRM, _alarm)
    out = Path(args.out)
    if (out / "crashes").exists():
        shutil.rmtree(out / "crashes")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = make_seeds(Path(tmp) / "seeds")
        work = Path(tmp) / "seeds"  # mutated files sit next to the stack they reference
        plans = {
            "star": (star_mutation(seeds["star"].read_text()), target_star, ".star"),
            "star30": (star_mutation(seeds["star30"].read_text()), target_star, ".star"),
            "cs": (cs_mutation(np.load(seeds["cs"])), target_cs, ".cs"),
            "mrc": (mrc_mutation(seeds["mrc"].read_bytes()), target_mrc, ".mrcs"),
            "pkl": (st.one_of(pkl_mutation(seeds["pose"].read_bytes()), pkl_mutation(seeds["ctf"].read_bytes()),
                              pkl_mutation(seeds["ind"].read_bytes())), target_pkl, ".pkl"),
        }
        results = []
        for name in args.targets:
            strategy, target, suffix = plans[name]
            r = run_target(name, strategy, target, seeds, work, suffix, args.examples, args.seed, args.timeout,
                           out / "crashes")
            results.append(r)
            print(f"{name:7s} tried {r.get('tried', 0):6d}  accepted {r.get('accepted', 0):6d}  rejected "
                  f"{r.get('rejected', 0):6d}  invalid {r.get('invalid', 0):4d}  crash {r.get('crash', 0):4d}  "
                  f"hang {r.get('hang', 0):3d}  unraisable {r.get('unraisable', 0):3d}  ({r['seconds']} s)",
                  flush=True)
            for key, f in r["findings"].items():
                print(f"    {f['count']:5d}  {key}: {f['message']}", flush=True)
    summary = {"examples_per_target": args.examples, "seed": args.seed, "python": sys.version.split()[0],
               "numpy": np.__version__, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    total = sum(r.get("crash", 0) + r.get("hang", 0) + r.get("invalid", 0) + r.get("unraisable", 0)
                for r in results)
    return 1 if total else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
