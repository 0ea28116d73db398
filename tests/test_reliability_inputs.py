"""A corpus of broken inputs, built at test time from a tiny simulated dataset, driven through the real CLI.

Every case must end with exit code 2, exactly one line on stderr that names the offending file and the problem,
no traceback (unless ``--verbose``, which must show one), and nothing written anywhere in the test folder.
"""

from __future__ import annotations

import shutil
import struct
import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryoscape.cli.main import main
from cryoscape.io.mrc import write_mrc

N, D = 24, 16
SMALL = ["--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
         "--no-progress", "--threads", "1", "--device", "cpu", "-n", "1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", str(N), "-D", str(D), "--apix", "6", "--snr", "2",
                 "--cs", "--pkl", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(out), *SMALL]) == 0
    return out


# ----------------------------------------------------------------------------------------------- helpers
def data_copy(sim, tmp_path):
    """The simulated files copied into ``tmp_path/data`` (so that cases can damage them)."""
    d = tmp_path / "data"
    d.mkdir()
    for name in ("particles.mrcs", "particles.star", "particles.cs", "pose.pkl", "ctf.pkl"):
        shutil.copy(sim / name, d / name)
    return d


def images(sim) -> np.ndarray:
    with mrcfile.open(sim / "particles.mrcs", permissive=True) as mrc:
        return np.array(mrc.data, dtype=np.float32)


def train_mrcs(d, stack, out, *extra):
    return ["train", str(stack), "--poses", str(d / "pose.pkl"), "--ctf", str(d / "ctf.pkl"), "-o", str(out),
            *extra, *SMALL]


def edit_star_rows(path, edit):
    """Rewrite the particle rows of ``path`` with ``edit(list of field lists) -> list of field lists``."""
    text = path.read_text().splitlines()
    start = text.index("data_particles")
    idx = [i for i in range(start, len(text)) if text[i] and not text[i].startswith(("_", "loop_", "data_", "#"))]
    fields = edit([text[i].split() for i in idx])
    for i, f in zip(idx, fields, strict=True):
        text[i] = "\t".join(f)
    path.write_text("\n".join(text) + "\n")


def column_number(path, name):
    for ln in path.read_text().splitlines()[path.read_text().splitlines().index("data_particles"):]:
        if ln.startswith(f"_{name} "):
            return int(ln.split("#")[1]) - 1
    raise KeyError(name)


def drop_star_column(path, name):
    col = column_number(path, name)
    lines = path.read_text().splitlines()
    start = lines.index("data_particles")
    out = lines[:start]
    for ln in lines[start:]:
        if ln.startswith(f"_{name} "):
            continue
        if ln and not ln.startswith(("_", "loop_", "data_", "#")):
            f = ln.split()
            del f[col]
            ln = "\t".join(f)
        out.append(ln)
    path.write_text("\n".join(out) + "\n")


def drop_cs_fields(path, prefix_or_names):
    arr = np.load(path)
    keep = [n for n in arr.dtype.names if not any(n == p or n.startswith(p) for p in prefix_or_names)]
    new = np.zeros(arr.shape, dtype=[(n, arr.dtype.fields[n][0]) for n in keep])
    for n in keep:
        new[n] = arr[n]
    with open(path, "wb") as fh:
        np.save(fh, new)


def pickle_dump(obj, path):
    import pickle

    path.write_bytes(pickle.dumps(obj, protocol=4))


# ----------------------------------------------------------------------------------------------- the corpus
# Each builder takes (sim, run, tmp_path) and returns (argv, [substrings the error line must contain]).
def case_truncated_mrc(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "trunc.mrcs"
    stack.write_bytes((d / "particles.mrcs").read_bytes()[: 1024 + 10 * D * D * 4 + 100])
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "truncated"]


def case_wrong_mode(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "complex.mrcs"
    with mrcfile.new(stack) as mrc:
        mrc.set_data(images(sim).astype(np.complex64))  # mode 4
        mrc.set_image_stack()
        mrc.voxel_size = 6.0
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "mode 4"]


def _set_header_int(path, offset, value):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(raw))


def case_header_claims_more_images(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "liar.mrcs"
    shutil.copy(d / "particles.mrcs", stack)
    _set_header_int(stack, 8, 500)  # nz: 500 sections, the file holds 24
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "500 sections"]


def case_header_claims_fewer_images(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "short.mrcs"
    shutil.copy(d / "particles.mrcs", stack)
    _set_header_int(stack, 8, 10)  # nz: 10 sections, but the file holds 24
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "does not describe", "10 sections", "25600"]


def case_header_mode_lies(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "mode1.mrcs"
    shutil.copy(d / "particles.mrcs", stack)
    _set_header_int(stack, 12, 1)  # mode 1 (int16) for float32 data: the file is twice what the header says
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "does not describe", "mode 1", "data mode is wrong"]


def case_header_wider_than_file(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "wide.mrcs"
    shutil.copy(d / "particles.mrcs", stack)
    _set_header_int(stack, 0, 64)  # nx 64: more bytes than the file has
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "truncated"]


def case_not_square(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "rect.mrcs"
    write_mrc(stack, np.random.default_rng(0).normal(size=(N, 16, 18)), 6.0)
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "18 x 16", "square"]


def case_odd_box(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = d / "odd.mrcs"
    write_mrc(stack, np.random.default_rng(0).normal(size=(N, 15, 15)), 6.0)
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "15 x 15", "even"]


def _stack_with(sim, d, name, edit):
    data = images(sim)
    edit(data)
    stack = d / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile warns about the NaN/Inf this case is made of
        write_mrc(stack, data, 6.0)
    return stack


def case_nan_image(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = _stack_with(sim, d, "nan.mrcs", lambda a: a.__setitem__((5, 3, 4), np.nan))
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "image 5", "NaN"]


def case_inf_image(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = _stack_with(sim, d, "inf.mrcs", lambda a: a.__setitem__((17, 0, 0), -np.inf))
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "image 17", "Inf"]


def case_constant_image(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = _stack_with(sim, d, "blank.mrcs", lambda a: a.__setitem__(7, 0.25))
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "image 7", "constant"]


def case_all_constant_images(sim, run, tmp):
    d = data_copy(sim, tmp)
    stack = _stack_with(sim, d, "zeros.mrcs", lambda a: a.fill(0.0))
    return train_mrcs(d, stack, tmp / "out"), [str(stack), "constant"]


def case_star_missing_stack(sim, run, tmp):
    d = data_copy(sim, tmp)
    edit_star_rows(d / "particles.star",
                   lambda rows: [[r[0].replace("@particles", "@missing")] + r[1:] if i == 3 else r
                                 for i, r in enumerate(rows)])
    return ["train", str(d / "particles.star"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.star"), "missing.mrcs", "not found", "--datadir"]


def case_star_index_past_end(sim, run, tmp):
    d = data_copy(sim, tmp)
    edit_star_rows(d / "particles.star",
                   lambda rows: [["000099@particles.mrcs"] + r[1:] if i == 2 else r for i, r in enumerate(rows)])
    return ["train", str(d / "particles.star"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.star"), "image 99", f"holds only {N}"]


def case_star_duplicate_column(sim, run, tmp):
    d = data_copy(sim, tmp)
    star = d / "particles.star"
    lines = star.read_text().splitlines()
    last = max(i for i, ln in enumerate(lines) if ln.startswith("_rln"))
    n_cols = int(lines[last].split("#")[1])
    lines.insert(last + 1, f"_rlnDefocusU #{n_cols + 1}")
    star.write_text("\n".join(lines) + "\n")
    edit_star_rows(star, lambda rows: [r + ["12345.0"] for r in rows])
    return ["train", str(star), "-o", str(tmp / "out"), *SMALL], [str(star), "duplicate", "rlnDefocusU"]


def case_star_missing_image_name(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_star_column(d / "particles.star", "rlnImageName")
    return ["train", str(d / "particles.star"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.star"), "missing column rlnImageName"]


def case_star_missing_ctf_column(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_star_column(d / "particles.star", "rlnDefocusV")
    return ["train", str(d / "particles.star"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.star"), "missing CTF column", "rlnDefocusV"]


def case_star_missing_angle_column(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_star_column(d / "particles.star", "rlnAnglePsi")
    return ["train", str(d / "particles.star"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.star"), "missing pose column", "rlnAnglePsi"]


def case_star_undefined_optics_group(sim, run, tmp):
    d = data_copy(sim, tmp)
    edit_star_rows(d / "particles.star", lambda rows: [r[:-1] + ["2"] if i % 2 else r for i, r in enumerate(rows)])
    return ["train", str(d / "particles.star"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.star"), "unknown optics group", "[2]"]


def case_star_mixed_pixel_sizes(sim, run, tmp):
    d = data_copy(sim, tmp)
    star = d / "particles.star"
    blocks = starfile.read(star, always_dict=True)
    optics = blocks["optics"]
    second = optics.iloc[[0]].copy()
    second["rlnOpticsGroup"] = 2
    second["rlnOpticsGroupName"] = "opticsGroup2"
    second["rlnImagePixelSize"] = 6.6
    blocks["optics"] = pd.concat([optics, second], ignore_index=True)
    blocks["particles"].loc[::2, "rlnOpticsGroup"] = 2
    star.unlink()
    starfile.write(blocks, star)
    return ["train", str(star), "-o", str(tmp / "out"), *SMALL], [str(star), "different pixel sizes", "--apix"]


def case_star_without_particles(sim, run, tmp):
    d = data_copy(sim, tmp)
    star = d / "particles.star"
    lines = star.read_text().splitlines()
    star.write_text("\n".join(ln for ln in lines if "@particles.mrcs" not in ln) + "\n")
    return ["train", str(star), "-o", str(tmp / "out"), *SMALL], [str(star), "holds no particles"]


def case_star_zero_voltage(sim, run, tmp):
    d = data_copy(sim, tmp)
    star = d / "particles.star"
    star.write_text(star.read_text().replace("\t300.000000\t", "\t0.000000\t"))
    return ["train", str(star), "-o", str(tmp / "out"), *SMALL], [str(star), "voltage must be positive"]


def case_cs_amplitude_contrast_above_one(sim, run, tmp):
    d = data_copy(sim, tmp)
    arr = np.load(d / "particles.cs")
    arr["ctf/amp_contrast"][3] = 7.0
    with open(d / "particles.cs", "wb") as fh:
        np.save(fh, arr)
    return ["train", str(d / "particles.cs"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.cs"), "amplitude contrast must be between 0 and 1", "7"]


def case_pose_pkl_not_rotations(sim, run, tmp):
    d = data_copy(sim, tmp)
    from cryoscape.io.pkl import load_pickle

    rot, trans = load_pickle(d / "pose.pkl")
    rot[4] *= 2.0
    pickle_dump((rot, trans), d / "scaled.pkl")
    argv = ["train", str(d / "particles.mrcs"), "--poses", str(d / "scaled.pkl"), "--ctf", str(d / "ctf.pkl"),
            "-o", str(tmp / "out"), *SMALL]
    return argv, [str(d / "scaled.pkl"), "not rotations", "particle 4"]


def case_cs_without_poses(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_cs_fields(d / "particles.cs", ["alignments3D/"])
    return ["train", str(d / "particles.cs"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.cs"), "no poses", "--poses"]


def case_cs_partial_ctf(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_cs_fields(d / "particles.cs", ["ctf/df2_A", "ctf/cs_mm"])
    return ["train", str(d / "particles.cs"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.cs"), "missing CTF field", "ctf/df2_A", "ctf/cs_mm"]


def case_cs_without_ctf(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_cs_fields(d / "particles.cs", ["ctf/"])
    return ["train", str(d / "particles.cs"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.cs"), "no CTF", "--ctf"]


def case_cs_pose_shape(sim, run, tmp):
    d = data_copy(sim, tmp)
    drop_cs_fields(d / "particles.cs", ["alignments3D/shift"])
    return ["train", str(d / "particles.cs"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "particles.cs"), "alignments3D/shift"]


def case_pose_count_mismatch(sim, run, tmp):
    d = data_copy(sim, tmp)
    from cryoscape.io.pkl import load_pickle

    rot, trans = load_pickle(d / "pose.pkl")
    pickle_dump((rot[:20], trans[:20]), d / "pose20.pkl")
    argv = ["train", str(d / "particles.mrcs"), "--poses", str(d / "pose20.pkl"), "--ctf", str(d / "ctf.pkl"),
            "-o", str(tmp / "out"), *SMALL]
    return argv, [str(d / "pose20.pkl"), "20 poses", f"has {N}"]


def case_ctf_count_mismatch(sim, run, tmp):
    d = data_copy(sim, tmp)
    from cryoscape.io.pkl import load_pickle

    pickle_dump(load_pickle(d / "ctf.pkl")[:20], d / "ctf20.pkl")
    argv = ["train", str(d / "particles.mrcs"), "--poses", str(d / "pose.pkl"), "--ctf", str(d / "ctf20.pkl"),
            "-o", str(tmp / "out"), *SMALL]
    return argv, [str(d / "ctf20.pkl"), "20 particles", f"has {N}"]


def case_empty_index_file(sim, run, tmp):
    d = data_copy(sim, tmp)
    (d / "none.txt").write_text("# nothing selected\n")
    return ["train", str(d / "particles.star"), "--ind", str(d / "none.txt"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "none.txt"), "empty"]


def case_index_out_of_range(sim, run, tmp):
    d = data_copy(sim, tmp)
    np.save(d / "ind.npy", np.array([0, 3, N + 5]))
    return ["train", str(d / "particles.star"), "--ind", str(d / "ind.npy"), "-o", str(tmp / "out"), *SMALL], \
        [str(d / "ind.npy"), f"index {N + 5}", "out of range"]


def case_empty_filter_selection(sim, run, tmp):
    return ["filter", str(run), "--z-range", "0", "1e6", "2e6", "-o", str(tmp / "sel")], ["selection is empty"]


def case_latent_file_wrong_shape(sim, run, tmp):
    zfile = tmp / "z3.txt"
    np.savetxt(zfile, np.zeros((4, 3)))
    return ["eval-vol", str(run), "--zfile", str(zfile), "-o", str(tmp / "maps"), "--device", "cpu"], \
        [str(zfile), "(4, 3)", "zdim 2"]


def case_latent_file_nan(sim, run, tmp):
    zfile = tmp / "znan.npy"
    np.save(zfile, np.array([[0.0, np.nan]], np.float32))
    return ["eval-vol", str(run), "--zfile", str(zfile), "-o", str(tmp / "maps"), "--device", "cpu"], \
        [str(zfile), "NaN"]


def _run_copy(run, tmp):
    dst = tmp / "runcopy"
    shutil.copytree(run, dst)
    return dst, dst / "checkpoints" / "epoch_001.pt"


def case_checkpoint_other_family(sim, run, tmp):
    dst, ckpt = _run_copy(run, tmp)
    state = torch.load(ckpt, weights_only=True)
    state["family"] = "opus-dsd"
    torch.save(state, ckpt)
    return ["eval-vol", str(dst), "--z", "0", "0", "-o", str(tmp / "vol.mrc"), "--device", "cpu"], \
        [str(ckpt), "model family 'opus-dsd'", "'cryodrgn'"]


def case_checkpoint_truncated_eval_vol(sim, run, tmp):
    dst, ckpt = _run_copy(run, tmp)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return ["eval-vol", str(dst), "--z", "0", "0", "-o", str(tmp / "vol.mrc"), "--device", "cpu"], \
        [str(ckpt), "cannot read checkpoint", "truncated"]


def case_checkpoint_truncated_eval_images(sim, run, tmp):
    dst, ckpt = _run_copy(run, tmp)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    return ["eval-images", str(dst), "-o", str(tmp / "z.npy"), "--device", "cpu"], \
        [str(ckpt), "cannot read checkpoint"]


def case_checkpoint_truncated_resume(sim, run, tmp):
    dst, ckpt = _run_copy(run, tmp)
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    argv = ["train", str(sim / "particles.star"), "-o", str(dst), "--resume", *SMALL[:-1], "2"]
    return argv, [str(ckpt), "cannot read checkpoint"]


def case_checkpoint_not_a_model(sim, run, tmp):
    dst, ckpt = _run_copy(run, tmp)
    torch.save({"weights": torch.zeros(3)}, ckpt)
    return ["eval-vol", str(dst), "--z", "0", "0", "-o", str(tmp / "vol.mrc"), "--device", "cpu"], \
        [str(ckpt), "not a cryoscape checkpoint"]


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_line(case, sim, run, tmp_path, capsys):
    argv, expected = CASES[case](sim, run, tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()

    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"cryoscape {argv[0]}: error: ")
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert snapshot(tmp_path) == before, "output was written"

    code = main([argv[0], "--verbose", *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert lines[0] in err.splitlines()
    assert snapshot(tmp_path) == before, "output was written (--verbose)"
