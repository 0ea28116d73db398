"""cryoscape abinit on inputs without poses (a RELION STAR straight from extraction, a cryoSPARC .cs without
alignments3D, an .mrcs stack with ctf.pkl), and the run folder as a normal run: write-poses adds the pose columns
the input lacks (STAR angles and origins, .cs alignments3D), filter writes the estimated poses."""

import numpy as np
import pytest
import starfile
from numpy.lib import recfunctions as rfn
from scipy.spatial.transform import Rotation

from cryoscape.cli.main import main
from cryoscape.io.particles import load_particles
from cryoscape.models.poses import load_learned_poses

N, APIX = 48, 3.0
POSE_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
SMALL = ["--threads", "1", "--no-progress", "-b", "8", "--pretrain", "16", "--enc-dim", "16", "--enc-layers", "1",
         "--dec-dim", "16", "--dec-layers", "1"]
KINDS = ["star", "cs", "mrcs"]


def _relion_matrices(table) -> np.ndarray:
    """RELION's matrices A of the STAR angles (A = (Rz(rot) Ry(tilt) Rz(psi))^T, intrinsic ZYZ), through scipy."""
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64)
    return Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)


def _cs_matrices(array, a="alignments3D") -> np.ndarray:
    """cryoSPARC's A = expmap(pose)^T."""
    return Rotation.from_rotvec(np.asarray(array[f"{a}/pose"], np.float64)).as_matrix().transpose(0, 2, 1)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A simulated set, and the three pose-less inputs made from it (inputs[kind] = CLI arguments)."""
    out = tmp_path_factory.mktemp("abinit_io")
    assert main(["simulate", "--preset", "homogeneous", "-N", str(N), "-D", "16", "--snr", "1", "--cs", "--pkl",
                 "-o", str(out)]) == 0
    blocks = starfile.read(out / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=POSE_COLUMNS)
    starfile.write(blocks, out / "extracted.star")
    cs = np.load(out / "particles.cs")
    bare = rfn.repack_fields(cs[[n for n in cs.dtype.names if not n.startswith("alignments3D/")]])
    with open(out / "extracted.cs", "wb") as f:
        np.save(f, bare)
    inputs = {"star": [str(out / "extracted.star")], "cs": [str(out / "extracted.cs")],
              "mrcs": [str(out / "particles.mrcs"), "--ctf", str(out / "ctf.pkl")]}
    return out, inputs


@pytest.fixture(scope="module", params=KINDS)
def run(request, sim, tmp_path_factory):
    """One homogeneous abinit run per input kind: ``(kind, run folder, the input's CLI arguments)``."""
    out, inputs = sim
    kind = request.param
    folder = tmp_path_factory.mktemp(f"abinit_{kind}") / "run"
    assert main(["abinit", *inputs[kind], "-o", str(folder), "-n", "3", "--search-epochs", "2", *SMALL]) == 0
    return kind, folder, inputs[kind]


def test_homogeneous_abinit_has_no_latent_search_epochs(run):
    from cryoscape.config import load_config
    from cryoscape.rundir import RunDir

    _, folder, _ = run
    assert load_config(RunDir(folder).config_path).train.latent_search_epochs == 0


def test_default_epochs_add_ten_local_epochs_or_the_latent_search_and_fifteen():
    from cryoscape.cli.abinit import default_epochs

    assert default_epochs(12, zdim=0, latent_search_epochs=0) == 22
    assert default_epochs(12, zdim=0, latent_search_epochs=4) == 22  # no latent: no latent search
    assert default_epochs(12, zdim=8, latent_search_epochs=4) == 31
    assert default_epochs(12, zdim=8, latent_search_epochs=0) == 27


def test_the_inputs_have_no_poses(sim):
    out, inputs = sim
    for kind in ("star", "cs"):
        particles = load_particles(inputs[kind][0], datadir=out)
        assert particles.poses is None and particles.ctf is not None and len(particles) == N
    assert load_particles(inputs["mrcs"][0], ctf=inputs["mrcs"][2]).poses is None
    assert "alignments3D/pose" not in np.load(inputs["cs"][0]).dtype.names


def test_abinit_writes_absolute_poses_for_every_particle(run):
    kind, folder, _ = run
    assert sorted(p.name for p in (folder / "poses").iterdir()) == [f"epoch_00{e}.npz" for e in (1, 2, 3)]
    epoch, learned = load_learned_poses(folder)
    assert epoch == 3 and learned["refined"].all() and len(learned["rotations"]) == N
    # the consensus was the identity: the rotations are expmap(rotvec) and the shifts the corrections alone
    np.testing.assert_allclose(learned["rotations"], Rotation.from_rotvec(learned["rotvec"]).as_matrix(), atol=1e-5)
    np.testing.assert_allclose(learned["shifts_angstrom"], APIX * learned["shift_px"], atol=1e-4)
    angles = np.linalg.norm(learned["rotvec"], axis=1)
    assert (angles > 0.01).mean() > 0.9  # searched: not the identity


def test_write_poses_star_adds_the_angle_and_origin_columns(run, sim, tmp_path):
    kind, folder, _ = run
    out = tmp_path / "abinit.star"
    assert main(["write-poses", str(folder), "-o", str(out)]) == 0
    _, learned = load_learned_poses(folder)
    table = starfile.read(out, always_dict=True)["particles"]
    assert len(table) == N and set(POSE_COLUMNS) <= set(table.columns)
    np.testing.assert_allclose(_relion_matrices(table), learned["rotations"], atol=1e-5)
    origins = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(origins, learned["shifts_angstrom"], atol=1e-5)
    truth = starfile.read(sim[0] / "particles.star", always_dict=True)["particles"]
    np.testing.assert_allclose(table["rlnDefocusU"], truth["rlnDefocusU"], rtol=1e-6)
    if kind == "star":  # the input's rows and columns, in order, the pose columns added
        extracted = starfile.read(sim[1]["star"][0], always_dict=True)["particles"]
        assert list(table.columns) == list(extracted.columns) + POSE_COLUMNS
        assert list(table["rlnImageName"]) == list(extracted["rlnImageName"])
    back = load_particles(out, datadir=sim[0])  # readable as a particle file with these poses
    np.testing.assert_allclose(back.poses.rotations, learned["rotations"], atol=1e-5)


def test_write_poses_cs_adds_the_alignment_fields(run, sim, tmp_path):
    kind, folder, _ = run
    out = tmp_path / "abinit.cs"
    assert main(["write-poses", str(folder), "-o", str(out)]) == 0
    _, learned = load_learned_poses(folder)
    array = np.load(out)
    assert len(array) == N
    assert {"alignments3D/pose", "alignments3D/shift"} <= set(array.dtype.names)
    np.testing.assert_allclose(_cs_matrices(array), learned["rotations"], atol=1e-5)
    psize = array["alignments3D/psize_A"] if "alignments3D/psize_A" in array.dtype.names else array["blob/psize_A"]
    np.testing.assert_allclose(np.asarray(psize), APIX)
    np.testing.assert_allclose(array["alignments3D/shift"] * APIX, learned["shifts_angstrom"], atol=1e-4)
    if kind == "cs":  # the input's rows with every field kept
        extracted = np.load(sim[1]["cs"][0])
        for name in extracted.dtype.names:
            np.testing.assert_array_equal(array[name], extracted[name])
    back = load_particles(out, datadir=sim[0])
    np.testing.assert_allclose(back.poses.shifts_angstrom, learned["shifts_angstrom"], atol=1e-4)


def test_filter_of_a_homogeneous_run_selects_by_index_with_the_estimated_poses(run, sim, tmp_path, capsys):
    kind, folder, _ = run
    chosen = np.arange(0, N, 5)
    ind = tmp_path / "ind.txt"
    np.savetxt(ind, chosen, fmt="%d")
    assert main(["filter", str(folder), "--ind", str(ind), "-o", str(tmp_path / "sel")]) == 0
    _, learned = load_learned_poses(folder)
    subset = tmp_path / "sel" / ("particles.cs" if kind == "cs" else "particles.star")
    np.testing.assert_array_equal(np.load(tmp_path / "sel" / "indices.npy"), chosen)
    if kind == "cs":
        np.testing.assert_allclose(_cs_matrices(np.load(subset)), learned["rotations"][chosen], atol=1e-5)
    else:
        table = starfile.read(subset, always_dict=True)["particles"]
        np.testing.assert_allclose(_relion_matrices(table), learned["rotations"][chosen], atol=1e-5)
    capsys.readouterr()
    assert main(["filter", str(folder), "--z-range", "0", "0", "1", "-o", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no latent space" in err and "--ind" in err and len(err.splitlines()) == 1
    if kind == "star":  # --input-poses: the input's rows as they are, without poses
        assert main(["filter", str(folder), "--ind", str(ind), "--input-poses", "-o", str(tmp_path / "in")]) == 0
        table = starfile.read(tmp_path / "in" / "particles.star", always_dict=True)["particles"]
        assert len(table) == len(chosen) and not set(POSE_COLUMNS) & set(table.columns)


def test_filter_of_a_heterogeneous_abinit_run_writes_the_estimated_poses(sim, tmp_path):
    out, inputs = sim
    folder = tmp_path / "het"
    assert main(["abinit", *inputs["star"], "-o", str(folder), "--zdim", "2", "-n", "2", *SMALL]) == 0
    assert main(["filter", str(folder), "--z-range", "0", "-1000.0", "1000.0", "-o", str(tmp_path / "sel")]) == 0
    epoch, learned = load_learned_poses(folder)
    assert epoch == 2
    # a heterogeneous run searches against each image's own map by default (the homogeneous run: not)
    from cryoscape.cli.abinit import DEFAULT_LATENT_SEARCH_EPOCHS
    from cryoscape.config import load_config
    from cryoscape.rundir import RunDir

    assert DEFAULT_LATENT_SEARCH_EPOCHS == 4
    assert load_config(RunDir(folder).config_path).train.latent_search_epochs == 4
    table = starfile.read(tmp_path / "sel" / "particles.star", always_dict=True)["particles"]
    assert len(table) == N
    np.testing.assert_allclose(_relion_matrices(table), learned["rotations"], atol=1e-5)



def test_heterogeneous_abinit_runs_latent_search_epochs_after_the_consensus(sim, tmp_path):
    """--latent-search-epochs and --search-draws through the command line: recorded in the run's configuration,
    the schedule in the log (drawn searches, the consensus search, then searches against each image's own map)."""
    from cryoscape.config import load_config
    from cryoscape.rundir import RunDir

    out, inputs = sim
    folder = tmp_path / "het_latent"
    assert main(["abinit", *inputs["star"], "-o", str(folder), "--zdim", "2", "-n", "5", "--search-epochs", "3",
                 "--search-draws", "1", "--latent-search-epochs", "1", *SMALL]) == 0
    config = load_config(RunDir(folder).config_path)
    assert config.train.latent_search_epochs == 1 and config.train.search_draws == 1
    log = (folder / "log.txt").read_text()
    assert "(poses drawn from their posteriors)" in log
    assert "1 search epoch(s) against each image's own map (latent on)" in log

@pytest.mark.parametrize("with_pkl", [False, True])
def test_abinit_logs_that_the_file_poses_are_ignored(sim, tmp_path, with_pkl):
    out, _ = sim
    args = ([str(out / "particles.mrcs"), "--ctf", str(out / "ctf.pkl"), "--poses", str(out / "pose.pkl")]
            if with_pkl else [str(out / "particles.star")])
    folder = tmp_path / "run"
    assert main(["abinit", *args, "-o", str(folder), "-n", "1", *SMALL]) == 0
    named = "pose.pkl" if with_pkl else "particles.star"
    line = next(x for x in (folder / "log.txt").read_text().splitlines() if "are ignored" in x)
    assert named in line and "searched from scratch" in line


@pytest.mark.parametrize("option", [["--val-frac", "0.2"], ["--refine-poses"]])
def test_abinit_refuses_validation_and_refine_poses_in_one_line(sim, tmp_path, capsys, option):
    out, inputs = sim
    assert main(["abinit", *inputs["star"], "-o", str(tmp_path / "run"), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and option[0] in err
    assert not (tmp_path / "run").exists()


def test_analyze_align_maps_writes_the_class_maps_of_an_abinit_run_in_one_frame(sim, tmp_path):
    """abinit --zdim, then `analyze --align-maps`: the k-means maps aligned to the largest cluster's
    (kmeansK/aligned/, the ChimeraX script opens those); without it the maps stay as the run's poses see them."""
    import json

    out, inputs = sim
    folder = tmp_path / "het"
    assert main(["abinit", *inputs["star"], "-o", str(folder), "--zdim", "2", "-n", "2", *SMALL]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["analyze", str(folder), "--ksample", "2", "--skip-umap", "-o", str(a), "--device", "cpu",
                 "--align-maps"]) == 0
    record = json.loads((a / "kmeans2" / "aligned" / "alignment.json").read_text())
    assert [m["cluster"] for m in record["maps"]] == [0, 1]
    assert sum(m["reference"] for m in record["maps"]) == 1
    assert (a / "kmeans2" / "aligned" / "vol_002.mrc").is_file() and (a / "kmeans2" / "vol_002.mrc").is_file()
    assert "open kmeans2/aligned/vol_001.mrc" in (a / "chimerax.cxc").read_text()
    assert "Class maps in one frame" in (a / "index.html").read_text()
    assert main(["analyze", str(folder), "--ksample", "2", "--skip-umap", "-o", str(b), "--device", "cpu"]) == 0
    assert not (b / "kmeans2" / "aligned").exists()
    assert "open kmeans2/vol_001.mrc" in (b / "chimerax.cxc").read_text()
