"""Files shaped as real pipelines write them (issue 16, items 3, 4, 5, 7 and 9), read through the readers and the CLI.

* RELION 3.0 tables without rlnAmplitudeContrast / rlnVoltage / rlnSphericalAberration (--kv, --cs, --amp-contrast,
  --ps; downsample needs none of them);
* tomoDRGN 3.0 tables with a lone rlnDetectorPixelSize (the pixel size in A);
* RELION 3.1 optics groups with different pixel sizes (resampled on load to one);
* cryoSPARC ab-initio / heterogeneous-refinement .cs files (alignments_class_N, no alignments3D);
* per-image (tilt) index files where particle indices are expected; downsample on tilt-series sets.
"""

import logging

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoscape.cli.main import build_parser, main
from cryoscape.errors import InputError
from cryoscape.io.cs import write_cs
from cryoscape.io.indices import read_particle_indices, write_indices
from cryoscape.io.mrc import read_mrc, write_mrc
from cryoscape.io.particles import load_particles
from cryoscape.io.pkl import write_ctf_pkl
from cryoscape.metadata import CTFOverrides, CTFParams, Poses

D = 16


def blobs(D: int, apix: float) -> np.ndarray:
    """The same smooth object (two Gaussians, positions in A) sampled at ``apix`` A/px, pixel D//2 at the centre."""
    x = (np.arange(D) - D // 2) * apix
    X, Y = np.meshgrid(x, x)  # X along the last axis
    g = np.exp(-((X - 3.0) ** 2 + (Y + 2.0) ** 2) / (2 * 2.5**2))
    g += 0.6 * np.exp(-((X + 4.0) ** 2 + (Y - 5.0) ** 2) / (2 * 3.0**2))
    return g.astype(np.float32)


def write_table(path, columns: dict, block: str = "") -> None:
    """A STAR table written as RELION 3.0 writes it (one ``data_`` block, ``_rlnName #i`` labels)."""
    names = list(columns)
    n = len(columns[names[0]])
    lines = [f"data_{block}", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(names)]
    lines += [" ".join(str(columns[c][r]) for c in names) for r in range(n)]
    path.write_text("\n".join(lines) + "\n")


def relion30(tmp_path, n=6, drop=(), header_apix=2.0, pixel=None, name="old.star", stack="stack.mrcs"):
    """A RELION 3.0 particle table; ``pixel``: None -> rlnDetectorPixelSize 2.0 um with rlnMagnification 10000,
    else a lone rlnDetectorPixelSize with that value (tomoDRGN / Warp)."""
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / stack, rng.normal(size=(n, D, D)).astype(np.float32), header_apix)
    cols = {"rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
            "rlnDefocusU": rng.uniform(10000, 20000, n).round(1), "rlnDefocusV": rng.uniform(10000, 20000, n).round(1),
            "rlnDefocusAngle": rng.uniform(-90, 90, n).round(2), "rlnVoltage": [300.0] * n,
            "rlnSphericalAberration": [2.7] * n, "rlnAmplitudeContrast": [0.07] * n,
            "rlnMagnification": [10000.0] * n, "rlnDetectorPixelSize": [2.0] * n,
            "rlnAngleRot": rng.uniform(-180, 180, n).round(2), "rlnAngleTilt": rng.uniform(5, 175, n).round(2),
            "rlnAnglePsi": rng.uniform(-180, 180, n).round(2), "rlnOriginX": rng.normal(size=n).round(3),
            "rlnOriginY": rng.normal(size=n).round(3)}
    if pixel is not None:
        del cols["rlnMagnification"]
        cols["rlnDetectorPixelSize"] = [pixel] * n
    for c in drop:
        del cols[c]
    path = tmp_path / name
    write_table(path, cols)
    return path, cols


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cryoscape {argv[0]}: error: ")
    return lines[0]


# ------------------------------------------------------------------------------------------------ item 3
def test_relion30_without_optics_values(tmp_path, caplog):
    path, cols = relion30(tmp_path, drop=("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    with pytest.raises(InputError, match=r"old\.star: missing CTF column\(s\): rlnVoltage, rlnSphericalAberration "
                                         r"\(pass --kv .* and --cs .*\)"):
        load_particles(path)
    with caplog.at_level(logging.WARNING):
        p = load_particles(path, ctf_overrides=CTFOverrides(voltage_kv=300.0, cs_mm=2.7))
    np.testing.assert_array_equal(p.ctf.voltage_kv, 300.0)
    np.testing.assert_array_equal(p.ctf.cs_mm, 2.7)
    np.testing.assert_array_equal(p.ctf.amplitude_contrast, 0.1)  # RELION's default
    np.testing.assert_allclose(p.ctf.defocus_u_angstrom, cols["rlnDefocusU"])
    warned = [r.getMessage() for r in caplog.records if "rlnAmplitudeContrast" in r.getMessage()]
    assert len(warned) == 1 and "0.1" in warned[0] and "--amp-contrast" in warned[0]
    # poses are read as usual; without the overrides a command that needs no CTF still gets the particles
    p = load_particles(path, metadata_optional=True)
    assert p.ctf is None and p.poses is not None and len(p) == 6


def test_overrides_replace_file_values_and_pkl(tmp_path):
    path, _ = relion30(tmp_path)
    p = load_particles(path)
    np.testing.assert_array_equal(p.ctf.amplitude_contrast, 0.07)
    p = load_particles(path, ctf_overrides=CTFOverrides(voltage_kv=200.0, amplitude_contrast=0.1,
                                                        phase_shift_deg=90.0))
    np.testing.assert_array_equal(p.ctf.voltage_kv, 200.0)
    np.testing.assert_array_equal(p.ctf.amplitude_contrast, 0.1)
    np.testing.assert_array_equal(p.ctf.phase_shift_deg, 90.0)
    np.testing.assert_array_equal(p.ctf.cs_mm, 2.7)  # not overridden: the file's
    pkl = write_ctf_pkl(tmp_path / "ctf.pkl", p.ctf, D, 2.0)
    q = load_particles(tmp_path / "stack.mrcs", ctf=pkl, ctf_overrides=CTFOverrides(cs_mm=0.01))
    np.testing.assert_array_equal(q.ctf.cs_mm, 0.01)
    np.testing.assert_allclose(q.ctf.voltage_kv, 200.0)
    with pytest.raises(InputError, match="--amp-contrast must be between 0 and 1"):
        CTFOverrides(amplitude_contrast=7.0)
    with pytest.raises(InputError, match="--kv must be positive"):
        CTFOverrides(voltage_kv=0.0)


def test_cs_overrides_and_missing_amplitude_contrast(tmp_path, caplog):
    n = 4
    write_mrc(tmp_path / "s.mrcs", np.zeros((n, D, D), np.float32), 1.5)
    ctf = CTFParams.create(np.full(n, 15000.0), np.full(n, 14000.0), np.zeros(n), 300.0, 2.7, 0.07)
    cs = write_cs(tmp_path / "p.cs", ["s.mrcs"] * n, np.arange(n), 1.5, D, ctf=ctf)
    arr = np.load(cs)
    keep = [f for f in arr.dtype.names if f != "ctf/amp_contrast"]
    with open(tmp_path / "noamp.cs", "wb") as fh:
        np.save(fh, arr[keep])
    with caplog.at_level(logging.WARNING):
        p = load_particles(tmp_path / "noamp.cs", ctf_overrides=CTFOverrides(voltage_kv=200.0))
    np.testing.assert_array_equal(p.ctf.amplitude_contrast, 0.1)
    np.testing.assert_array_equal(p.ctf.voltage_kv, 200.0)
    assert any("ctf/amp_contrast" in r.getMessage() for r in caplog.records)


def test_relion30_commands(tmp_path, capsys):
    path, _ = relion30(tmp_path, drop=("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    # downsample needs no CTF
    assert main(["downsample", str(path), "-D", "8", "-o", str(tmp_path / "small.mrcs")]) == 0
    assert load_particles(tmp_path / "small.star", metadata_optional=True).pixel_size_angstrom == pytest.approx(4.0)
    # backproject: one line naming the column and the option, then the overrides make it work
    line = one_error_line(capsys, ["backproject", str(path), "-o", str(tmp_path / "bp")])
    assert "rlnVoltage" in line and "--kv" in line and "--cs" in line
    assert main(["backproject", str(path), "-o", str(tmp_path / "bp2"), "--kv", "300", "--cs", "2.7",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "bp2" / "backproject.mrc").is_file()


def test_train_records_and_uses_the_overrides(tmp_path):
    from cryoscape.cli.train import config_from_args
    from cryoscape.config import RunConfig
    from cryoscape.train.run import load_training_particles

    path, _ = relion30(tmp_path, drop=("rlnVoltage", "rlnSphericalAberration"))
    args = build_parser().parse_args(["train", str(path), "-o", str(tmp_path / "run"), "--kv", "300", "--cs", "2.7",
                                      "--amp-contrast", "0.08", "--ps", "10"])
    config = config_from_args(args)
    assert (config.data.kv, config.data.cs, config.data.amp_contrast, config.data.ps) == (300.0, 2.7, 0.08, 10.0)
    config = RunConfig.from_dict(config.to_dict())  # as saved in RUN/config.yaml
    particles, _ = load_training_particles(config)
    np.testing.assert_array_equal(particles.ctf.voltage_kv, 300.0)
    np.testing.assert_array_equal(particles.ctf.amplitude_contrast, 0.08)
    np.testing.assert_array_equal(particles.ctf.phase_shift_deg, 10.0)


# ------------------------------------------------------------------------------------------------ item 4
def test_lone_detector_pixel_size_is_angstrom(tmp_path, capsys):
    path, cols = relion30(tmp_path, pixel=13.1, header_apix=13.1)
    p = load_particles(path)
    assert p.pixel_size_angstrom == pytest.approx(13.1)
    np.testing.assert_allclose(p.poses.shifts_angstrom[:, 0], np.asarray(cols["rlnOriginX"]) * 13.1)
    # headers that say 1.0 or 0 are "unset": the STAR's value is used
    for header in (1.0, 0.0):
        path, _ = relion30(tmp_path, pixel=13.1, header_apix=header, name=f"h{header}.star", stack=f"h{header}.mrcs")
        assert load_particles(path).pixel_size_angstrom == pytest.approx(13.1)
    # a header that disagrees by more than 1 %: refused unless --apix
    path, _ = relion30(tmp_path, pixel=13.1, header_apix=12.0, name="bad.star", stack="bad.mrcs")
    line = one_error_line(capsys, ["downsample", str(path), "-D", "8", "-o", str(tmp_path / "x.mrcs")])
    assert "13.1000 A" in line and "12.0000 A" in line and "--apix" in line
    assert load_particles(path, apix=12.0).pixel_size_angstrom == pytest.approx(12.0)
    # with rlnMagnification the detector pixel size is in um
    path, _ = relion30(tmp_path, header_apix=2.0, name="mag.star", stack="mag.mrcs")
    assert load_particles(path).pixel_size_angstrom == pytest.approx(2.0)


def test_downsample_lone_detector_pixel_size(tmp_path):
    path, _ = relion30(tmp_path, pixel=13.1, header_apix=13.1)
    assert main(["downsample", str(path), "-D", "8", "-o", str(tmp_path / "small.mrcs")]) == 0
    out = starfile.read(tmp_path / "small.star")
    np.testing.assert_allclose(out["rlnDetectorPixelSize"], 26.2)
    assert "rlnMagnification" not in out.columns
    assert read_mrc(tmp_path / "small.mrcs")[1].voxel_size_angstrom == pytest.approx(26.2, rel=1e-5)
    assert load_particles(tmp_path / "small.star").pixel_size_angstrom == pytest.approx(26.2)


# ------------------------------------------------------------------------------------------------ item 5
def two_groups(tmp_path, sizes=(1.0, 1.1), box=32, n=3, same_stack=False):
    """RELION 3.1 file, optics group g at ``sizes[g]`` A/px, its particles the same object at that pixel size."""
    names = []
    for g, apix in enumerate(sizes):
        stack = "all.mrcs" if same_stack else f"g{g + 1}.mrcs"
        names += [f"{i + 1 + (g * n if same_stack else 0):06d}@{stack}" for i in range(n)]
        if not same_stack:
            write_mrc(tmp_path / stack, np.repeat(blobs(box, apix)[None], n, 0), apix)
    if same_stack:
        write_mrc(tmp_path / "all.mrcs", np.concatenate([np.repeat(blobs(box, a)[None], n, 0) for a in sizes]), 0.0)
    optics = {"rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(len(sizes))],
              "rlnOpticsGroup": list(range(1, len(sizes) + 1)), "rlnVoltage": [300.0] * len(sizes),
              "rlnSphericalAberration": [2.7] * len(sizes), "rlnAmplitudeContrast": [0.1] * len(sizes),
              "rlnImagePixelSize": list(sizes), "rlnImageSize": [box] * len(sizes),
              "rlnImageDimensionality": [2] * len(sizes)}
    m = n * len(sizes)
    parts = {"rlnImageName": names, "rlnDefocusU": [15000.0] * m, "rlnDefocusV": [14000.0] * m,
             "rlnDefocusAngle": [10.0] * m, "rlnAngleRot": [0.0] * m, "rlnAngleTilt": [90.0] * m,
             "rlnAnglePsi": [0.0] * m, "rlnOriginXAngst": [1.5] * m, "rlnOriginYAngst": [-0.5] * m,
             "rlnOpticsGroup": [g + 1 for g in range(len(sizes)) for _ in range(n)]}
    path = tmp_path / "groups.star"
    starfile.write({"optics": pd.DataFrame(optics), "particles": pd.DataFrame(parts)}, path)
    return path


def test_optics_groups_with_different_pixel_sizes_are_resampled(tmp_path, caplog):
    path = two_groups(tmp_path)
    with caplog.at_level(logging.INFO):
        p = load_particles(path)
    assert p.pixel_size_angstrom == pytest.approx(1.0)  # the finest
    assert any("resampled" in r.getMessage() and "1.1" in r.getMessage() for r in caplog.records)
    images = p.images.to_array()
    np.testing.assert_array_equal(images[:3], np.repeat(blobs(32, 1.0)[None], 3, 0))  # group 1 untouched
    np.testing.assert_allclose(images[3:], np.repeat(blobs(32, 1.0)[None], 3, 0), atol=2e-3)
    assert np.abs(blobs(32, 1.1) - blobs(32, 1.0)).max() > 0.1  # without resampling they would differ
    np.testing.assert_allclose(p.poses.shifts_angstrom, [[1.5, -0.5]] * 6)  # origins in A stay as they are
    # subsets, loading into memory and batches see the same images
    np.testing.assert_allclose(p.subset([4]).images[0], images[4], atol=1e-6)
    loaded = load_particles(path, lazy=False)
    np.testing.assert_allclose(loaded.images.to_array(), images, atol=1e-6)
    # --apix: every group is resampled to it, explicitly (none silently shifted)
    q = load_particles(path, apix=1.1)
    assert q.pixel_size_angstrom == pytest.approx(1.1)
    inside = slice(2, 31)  # samples within the 1.0 A box (+-16 A); those beyond it wrap round (periodic)
    np.testing.assert_allclose(q.images.to_array()[:3, inside, inside],
                               np.repeat(blobs(32, 1.1)[None], 3, 0)[:, inside, inside], atol=2e-3)
    np.testing.assert_array_equal(q.images.to_array()[3:], np.repeat(blobs(32, 1.1)[None], 3, 0))


def test_relion30_pixel_origins_use_each_particles_pixel_size(tmp_path):
    write_mrc(tmp_path / "a.mrcs", np.repeat(blobs(D, 1.0)[None], 2, 0), 1.0)
    write_mrc(tmp_path / "b.mrcs", np.repeat(blobs(D, 1.25)[None], 2, 0), 1.25)
    cols = {"rlnImageName": ["1@a.mrcs", "2@a.mrcs", "1@b.mrcs", "2@b.mrcs"],
            "rlnDetectorPixelSize": [1.0, 1.0, 1.25, 1.25], "rlnAngleRot": [0.0] * 4, "rlnAngleTilt": [0.0] * 4,
            "rlnAnglePsi": [0.0] * 4, "rlnOriginX": [2.0] * 4, "rlnOriginY": [0.0] * 4}
    write_table(tmp_path / "mixed30.star", cols)
    p = load_particles(tmp_path / "mixed30.star")
    assert p.pixel_size_angstrom == pytest.approx(1.0)
    np.testing.assert_allclose(p.poses.shifts_angstrom[:, 0], [2.0, 2.0, 2.5, 2.5])


def test_one_stack_with_two_pixel_sizes_is_refused(tmp_path, caplog):
    path = two_groups(tmp_path, same_stack=True)
    with pytest.raises(InputError, match=r"groups\.star: particles of one stack .*all\.mrcs.* different pixel sizes "
                                         r"\[1\.0, 1\.1\] A.*--apix"):
        load_particles(path)
    with caplog.at_level(logging.WARNING):
        p = load_particles(path, apix=1.05)  # the file cannot be right: --apix is every image's pixel size
    assert p.pixel_size_angstrom == pytest.approx(1.05)
    np.testing.assert_array_equal(p.images.to_array()[3], blobs(32, 1.1))  # read as stored
    assert any("nothing is resampled" in r.getMessage() for r in caplog.records)


def test_downsample_optics_groups(tmp_path):
    path = two_groups(tmp_path)
    assert main(["downsample", str(path), "-D", "16", "-o", str(tmp_path / "small.mrcs")]) == 0
    images, info = read_mrc(tmp_path / "small.mrcs")
    assert info.voxel_size_angstrom == pytest.approx(2.0)
    np.testing.assert_allclose(images[3:], np.repeat(images[:1], 3, 0), atol=2e-3)
    out = starfile.read(tmp_path / "small.star", always_dict=True)
    np.testing.assert_allclose(out["optics"]["rlnImagePixelSize"], 2.0)
    assert (out["optics"]["rlnImageSize"] == 16).all()
    q = load_particles(tmp_path / "small.star")
    assert q.pixel_size_angstrom == pytest.approx(2.0)
    np.testing.assert_allclose(q.poses.shifts_angstrom, [[1.5, -0.5]] * 6)


def test_cs_exposure_groups_with_different_pixel_sizes(tmp_path):
    for g, apix in enumerate((1.0, 1.1)):
        write_mrc(tmp_path / f"g{g}.mrcs", np.repeat(blobs(32, apix)[None], 2, 0), apix)
    cs = write_cs(tmp_path / "p.cs", ["g0.mrcs", "g0.mrcs", "g1.mrcs", "g1.mrcs"], [0, 1, 0, 1], 1.0, 32)
    arr = np.load(cs)
    arr["blob/psize_A"][2:] = 1.1
    with open(cs, "wb") as fh:
        np.save(fh, arr)
    p = load_particles(cs)
    assert p.pixel_size_angstrom == pytest.approx(1.0)
    np.testing.assert_allclose(p.images.to_array()[2:], np.repeat(blobs(32, 1.0)[None], 2, 0), atol=2e-3)


# ------------------------------------------------------------------------------------------------ item 7
def class_cs(tmp_path, n=6):
    """A .cs as cryoSPARC ab-initio / heterogeneous refinement writes it: alignments_class_N, no alignments3D."""
    rng = np.random.default_rng(1)
    write_mrc(tmp_path / "s.mrcs", rng.normal(size=(n, D, D)).astype(np.float32), 1.5)
    ctf = CTFParams.create(np.full(n, 15000.0), np.full(n, 14000.0), np.zeros(n), 300.0, 2.7, 0.1)
    from cryoscape.imaging.rotations import cryosparc_pose_to_matrix

    vecs = [rng.normal(size=(n, 3)) for _ in range(2)]
    poses = [Poses(np.asarray(cryosparc_pose_to_matrix(v)), np.zeros((n, 2))) for v in vecs]
    a0 = np.load(write_cs(tmp_path / "c0.cs", ["s.mrcs"] * n, np.arange(n), 1.5, D, poses[0], ctf))
    a1 = np.load(write_cs(tmp_path / "c1.cs", ["s.mrcs"] * n, np.arange(n), 1.5, D, poses[1], ctf))
    fields = [(name.replace("alignments3D", "alignments_class_0"), a0.dtype[name]) for name in a0.dtype.names]
    fields += [(name.replace("alignments3D", "alignments_class_1"), a1.dtype[name]) for name in a1.dtype.names
               if name.startswith("alignments3D/")]
    out = np.zeros(n, dtype=fields)
    for name in a0.dtype.names:
        out[name.replace("alignments3D", "alignments_class_0")] = a0[name]
    for name in a1.dtype.names:
        if name.startswith("alignments3D/"):
            out[name.replace("alignments3D", "alignments_class_1")] = a1[name]
    with open(tmp_path / "hetero.cs", "wb") as fh:
        np.save(fh, out)
    return tmp_path / "hetero.cs", poses


def test_cs_alignment_sets(tmp_path, capsys):
    path, poses = class_cs(tmp_path)
    with pytest.raises(InputError, match=r"hetero\.cs: has no alignments3D poses; its alignment sets are "
                                         r"alignments_class_0, alignments_class_1.*--cs-alignments alignments_class_0"):
        load_particles(path)
    p = load_particles(path, cs_alignments="alignments_class_1")
    np.testing.assert_allclose(p.poses.rotations, poses[1].rotations, atol=1e-6)
    with pytest.raises(InputError, match="has no alignments_class_7 poses; its alignment sets are alignments_class_0"):
        load_particles(path, cs_alignments="alignments_class_7")
    line = one_error_line(capsys, ["backproject", str(path), "-o", str(tmp_path / "bp")])
    assert "alignments_class_0, alignments_class_1" in line and "--cs-alignments" in line
    assert main(["backproject", str(path), "-o", str(tmp_path / "bp1"), "--cs-alignments", "alignments_class_1",
                 "--device", "cpu"]) == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["backproject", str(path), "-o", "x", "--cs-alignments", "classes"])
    assert "alignments3D or alignments_class_N" in capsys.readouterr().err
    # downsample reads no poses; a STAR input has no alignment sets
    assert main(["downsample", str(path), "-D", "8", "-o", str(tmp_path / "small.mrcs")]) == 0
    star, _ = relion30(tmp_path)
    line = one_error_line(capsys, ["backproject", str(star), "-o", str(tmp_path / "bp2"), "--cs-alignments",
                                   "alignments_class_0"])
    assert "applies to cryoSPARC .cs files only" in line


def test_train_records_the_alignment_set(tmp_path):
    from cryoscape.cli.train import config_from_args
    from cryoscape.train.run import load_training_particles

    path, poses = class_cs(tmp_path)
    args = build_parser().parse_args(["train", str(path), "-o", str(tmp_path / "run"), "--cs-alignments",
                                      "alignments_class_0"])
    config = config_from_args(args)
    assert config.data.cs_alignments == "alignments_class_0"
    particles, _ = load_training_particles(config)
    np.testing.assert_allclose(particles.poses.rotations, poses[0].rotations, atol=1e-6)


# ------------------------------------------------------------------------------------------------ item 9
def test_per_image_indices_where_particles_are_expected(tmp_path):
    offsets = [0, 3, 6, 9, 12]  # 4 particles, 3 tilt images each
    write_indices(tmp_path / "imgs.pkl", [3, 4, 5, 9, 10, 11])  # all images of particles 1 and 3
    with pytest.raises(InputError, match=r"imgs\.pkl: holds per-image \(tilt\) indices up to 11, but --ind counts "
                                         r"particles: this set has 4 particles in 12 tilt images; they list every "
                                         r"image of 2 particles.*--ind-ptcls"):
        read_particle_indices(tmp_path / "imgs.pkl", offsets)
    write_indices(tmp_path / "ptcls.pkl", [1, 3])
    np.testing.assert_array_equal(read_particle_indices(tmp_path / "ptcls.pkl", offsets), [1, 3])
    write_indices(tmp_path / "far.pkl", [1, 30])
    with pytest.raises(InputError, match="out of range for 4 particles"):
        read_particle_indices(tmp_path / "far.pkl", offsets)


def image_series(tmp_path, n=4, t=3):
    """A Warp-style image-series STAR (one RELION 3.0 row per tilt image) of ``n`` particles with ``t`` tilts."""
    from cryoscape.io.tilt_series import write_image_series_star

    m = n * t
    write_mrc(tmp_path / "tilts.mrcs", np.random.default_rng(2).normal(size=(m, D, D)).astype(np.float32), 10.0)
    ctf = CTFParams.create(np.full(m, 20000.0), np.full(m, 20000.0), np.zeros(m), 300.0, 2.7, 0.1)
    tilt = np.tile([0.0, 3.0, -3.0], n)
    return write_image_series_star(tmp_path / "ts.star", "tilts.mrcs", 10.0, D, np.repeat(np.eye(3)[None], m, 0),
                                   np.zeros((m, 2)), ctf, np.tile([1.0, 2.0, 3.0], n), tilt,
                                   np.repeat([f"t1_{i:06d}" for i in range(n)], t), np.repeat(["t1"], m))


def test_tomodrgn_ctf_overrides(tmp_path, capsys):
    from cryoscape.cli.train import config_from_args
    from cryoscape.train.run import load_training_particles

    path = image_series(tmp_path)
    table = starfile.read(path)
    starfile.write(table.drop(columns=["rlnVoltage"]), path, overwrite=True)
    argv = ["train", str(path), "--model", "tomodrgn", "-o", str(tmp_path / "run")]
    line = one_error_line(capsys, argv)
    assert "rlnVoltage" in line and "--kv" in line
    tilts, _ = load_training_particles(config_from_args(build_parser().parse_args(argv + ["--kv", "200", "--ps",
                                                                                          "5"])))
    np.testing.assert_array_equal(tilts.ctf.voltage_kv, 200.0)
    np.testing.assert_array_equal(tilts.ctf.phase_shift_deg, 5.0)
    np.testing.assert_array_equal(tilts.ctf.cs_mm, 2.7)


def test_train_tomodrgn_with_a_per_image_index_file(tmp_path, capsys):
    image_series(tmp_path)
    write_indices(tmp_path / "ind.pkl", np.arange(6, 12))  # cryoDRGN tilt-series style: the images of 2 particles
    line = one_error_line(capsys, ["train", str(tmp_path / "ts.star"), "--model", "tomodrgn", "--ind",
                                   str(tmp_path / "ind.pkl"), "-o", str(tmp_path / "run")])
    assert "per-image (tilt) indices" in line and "--ind-ptcls" in line and "4 particles in 12 tilt images" in line


def test_downsample_refuses_tilt_series_sets(tmp_path, capsys):
    opt = tmp_path / "run_optimisation_set.star"
    opt.write_text("data_\n\n_rlnTomoParticlesFile particles.star\n_rlnTomoTomogramsFile tomograms.star\n")
    line = one_error_line(capsys, ["downsample", str(opt), "-D", "8", "-o", str(tmp_path / "x.mrcs")])
    assert "optimisation set" in line and "downsample does not support tilt-series sets" in line
    assert "rlnImageName" not in line
    parts = tmp_path / "particles.star"  # RELION 5 / WarpTools particle file: one 2-D tilt stack per particle
    write_table(parts, {"rlnTomoName": ["TS_01", "TS_01"], "rlnTomoParticleName": ["TS_01/1", "TS_01/2"],
                        "rlnImageName": ["Subtomograms/TS_01/1_stack2d.mrcs", "Subtomograms/TS_01/2_stack2d.mrcs"],
                        "rlnCenteredCoordinateXAngst": [10.0, 20.0]}, block="particles")
    line = one_error_line(capsys, ["downsample", str(parts), "-D", "8", "-o", str(tmp_path / "y.mrcs")])
    assert "downsample does not support tilt-series sets" in line
    # other single-particle commands say what the file is, too
    line = one_error_line(capsys, ["backproject", str(opt), "-o", str(tmp_path / "bp")])
    assert "tilt-series optimisation set" in line and "--model tomodrgn" in line


def test_filter_a_run_on_relion30_files(tmp_path):
    """filter writes subsets of a run trained with --kv/--cs, and of another file that lacks them altogether."""
    from cryoscape.config import DataConfig, RunConfig, save_config

    path, _ = relion30(tmp_path, drop=("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    save_config(RunConfig(data=DataConfig(particles=str(path), kv=300.0, cs=2.7)), run / "config.yaml")
    np.save(run / "latents" / "epoch_001.npy", np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32))
    np.save(run / "indices.npy", np.arange(6))
    (tmp_path / "sel.txt").write_text("1\n4\n")
    assert main(["filter", str(run), "--ind", str(tmp_path / "sel.txt"), "-o", str(tmp_path / "keep")]) == 0
    out = starfile.read(tmp_path / "keep" / "particles.star")
    assert out["rlnImageName"].tolist() == ["000002@stack.mrcs", "000005@stack.mrcs"]
    assert "rlnVoltage" not in out.columns  # the subset keeps the file as it was
    # a run trained with a ctf.pkl, and --particles: a file of the same particles without voltage or Cs
    ctf = CTFParams.create(np.full(6, 15000.0), np.full(6, 15000.0), np.zeros(6), 300.0, 2.7, 0.1)
    pkl = write_ctf_pkl(tmp_path / "ctf.pkl", ctf, D, 2.0)
    run2 = tmp_path / "run2"
    (run2 / "latents").mkdir(parents=True)
    save_config(RunConfig(data=DataConfig(particles=str(path), ctf=str(pkl))), run2 / "config.yaml")
    np.save(run2 / "latents" / "epoch_001.npy", np.zeros((6, 2), np.float32))
    other, _ = relion30(tmp_path, drop=("rlnVoltage", "rlnSphericalAberration"), name="other.star")
    assert main(["filter", str(run2), "--ind", str(tmp_path / "sel.txt"), "--particles", str(other), "-o",
                 str(tmp_path / "keep2")]) == 0
    assert len(starfile.read(tmp_path / "keep2" / "particles.star")) == 2


def test_subsets_of_several_pixel_sizes(tmp_path):
    from cryoscape.io.particles import write_particle_subset

    p = load_particles(two_groups(tmp_path))
    write_particle_subset(p, [0, 4], tmp_path / "sub.star")  # same format: every column as it was
    assert starfile.read(tmp_path / "sub.star", always_dict=True)["optics"]["rlnImagePixelSize"].tolist() == [1.0, 1.1]
    with pytest.raises(InputError, match=r"sub\.cs: the particles' stacks have several pixel sizes.*\.star"):
        write_particle_subset(p, [0, 4], tmp_path / "sub.cs")
    write_particle_subset(p, [0, 4], tmp_path / "sub.mrcs")  # the resampled images at the common pixel size
    images, info = read_mrc(tmp_path / "sub.mrcs")
    assert info.voxel_size_angstrom == pytest.approx(1.0)
    np.testing.assert_allclose(images[1], images[0], atol=2e-3)


def test_train_and_eval_images_on_relion30_without_optics_values(tmp_path, capsys):
    path, _ = relion30(tmp_path, n=12, drop=("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    small = ["--zdim", "2", "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "4",
             "-n", "1", "--no-progress", "--device", "cpu"]
    line = one_error_line(capsys, ["train", str(path), "-o", str(tmp_path / "run0"), *small])
    assert "rlnVoltage" in line and "--kv" in line
    assert not (tmp_path / "run0").exists()
    run = tmp_path / "run"
    assert main(["train", str(path), "-o", str(run), "--kv", "300", "--cs", "2.7", *small]) == 0
    assert main(["eval-images", str(run), "-o", str(tmp_path / "z.npy"), "--device", "cpu"]) == 0  # recorded
    other, _ = relion30(tmp_path, n=12, drop=("rlnVoltage",), name="other.star")
    capsys.readouterr()
    line = one_error_line(capsys, ["eval-images", str(run), "--particles", str(other), "-o", str(tmp_path / "o.npy"),
                                   "--device", "cpu", "--kv", "-1"])
    assert "--kv must be positive" in line
    assert main(["eval-images", str(run), "--particles", str(other), "-o", str(tmp_path / "o.npy"), "--device", "cpu",
                 "--kv", "300"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (12, 2)


def test_a_group_without_a_pixel_size(tmp_path):
    path = two_groups(tmp_path, sizes=(1.0, 0.0))
    with pytest.raises(InputError, match=r"groups\.star: some particles have the pixel size 0 A.*--apix"):
        load_particles(path)
    assert load_particles(path, apix=1.0).pixel_size_angstrom == pytest.approx(1.0)
