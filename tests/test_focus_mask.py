"""`train --focus-mask`: consensus subtraction outside the mask and the mask's footprint (cryoscape.data.focus).

What the focus mask does to the images and the loss, on tiny inputs: a mask of ones changes nothing; a mask of
zeros with the exact map subtracts noise-free images to zero; with a mask on one of two separated blobs the
subtracted images are the projections of that blob; the model weights its rendered slices exactly as the images
were weighted; lazy data equal in-memory data. Then the command: config record, stored consensus, resume, refusals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from _synthetic import ArrayImages, ArrayParticles, blob_volume
from cryoscape.cli.main import main
from cryoscape.config import ModelConfig, RunConfig, TrainConfig
from cryoscape.data.focus import FocusSubtraction, load_focus_map
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.particle_data import SliceParticleData
from cryoscape.data.preprocess import hartley_pixels
from cryoscape.errors import InputError
from cryoscape.imaging.ctf import CTFTensors
from cryoscape.imaging.fft import fft2_centered, ifft2_centered
from cryoscape.imaging.lattice import circle_mask
from cryoscape.imaging.rotations import random_rotations
from cryoscape.io.mrc import read_mrc, write_mrc
from cryoscape.metadata import CTFParams, Poses
from cryoscape.models.cryodrgn import CryoDRGN
from cryoscape.models.registry import get_family
from cryoscape.simulate.particles import draw_ctf, form_images, premultiply_by_ctf

D, APIX = 16, 4.0
A_CENTRE, B_CENTRE = (-4, 0, 0), (4, 1, 0)


def _sphere(D: int, centre, radius: float) -> np.ndarray:
    i = np.arange(D) - D // 2
    z, y, x = np.meshgrid(i, i, i, indexing="ij")
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    return np.clip(radius + 1.0 - r, 0.0, 1.0).astype(np.float32)  # 1 inside, a 1-voxel soft edge


def _blobs():
    a = blob_volume(D, [A_CENTRE], sigma_px=1.0)
    b = blob_volume(D, [B_CENTRE], sigma_px=1.0)
    return a, b


def _metadata(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rot = torch.as_tensor(random_rotations(n, seed=seed), dtype=torch.float32)
    shifts = torch.as_tensor(rng.uniform(-1.5, 1.5, (n, 2)), dtype=torch.float32)
    ctf = draw_ctf(n, rng, (0.5, 1.0), 0.05, 300.0, 2.7, 0.1).to_array()
    return rot, shifts, ctf


def _images(volume, rot, shifts, ctf):
    return form_images(volume, rot, shifts, torch.as_tensor(ctf, dtype=torch.float32), APIX)


def _particles(images, rot, shifts, ctf):
    poses = Poses(rot.numpy().astype(np.float64), shifts.numpy().astype(np.float64) * APIX)
    return ArrayParticles(ArrayImages(images.numpy(), APIX), APIX, poses, CTFParams.from_array(ctf))


# -- what the subtraction does -------------------------------------------------------------------------------------
def test_a_mask_of_zeros_and_the_exact_map_subtract_noise_free_images_to_zero():
    a, b = _blobs()
    volume = a + b
    rot, shifts, ctf = _metadata(12)
    images = _images(volume, rot, shifts, ctf)
    focus = FocusSubtraction(np.zeros((D, D, D), np.float32), volume.numpy(), APIX)
    out, footprint = focus.apply(images, rot, shifts, CTFTensors.from_params(CTFParams.from_array(ctf)))
    assert float(out.norm() / images.norm()) < 1e-5
    assert float(footprint.abs().max()) == 0.0  # nothing of the mask projects anywhere
    # the fitted scale of the exact map is 1
    assert focus.fit_scale(images, rot, shifts, CTFTensors.from_params(CTFParams.from_array(ctf))) == \
        pytest.approx(1.0, abs=1e-5)


def test_ctf_premultiplied_images_have_the_consensus_times_ctf_squared_subtracted():
    a, b = _blobs()
    rot, shifts, ctf = _metadata(8, seed=4)
    images = premultiply_by_ctf(_images(a + b, rot, shifts, ctf).numpy(), ctf, APIX)
    focus = FocusSubtraction(np.zeros((D, D, D), np.float32), (a + b).numpy(), APIX, ctf_premultiplied=True)
    out, _ = focus.apply(torch.as_tensor(images), rot, shifts, CTFTensors.from_params(CTFParams.from_array(ctf)))
    assert float(out.norm()) < 1e-4 * float(np.linalg.norm(images))


def test_a_mask_on_one_blob_leaves_the_projections_of_that_blob():
    a, b = _blobs()
    rot, shifts, ctf = _metadata(12, seed=1)
    ctf_t = CTFTensors.from_params(CTFParams.from_array(ctf))
    mask = _sphere(D, A_CENTRE, 2.5)
    assert mask[tuple(np.array(B_CENTRE)[::-1] + D // 2)] == 0.0  # B lies outside the mask
    focus = FocusSubtraction(mask, (a + b).numpy(), APIX)
    out, _ = focus.apply(_images(a + b, rot, shifts, ctf), rot, shifts, ctf_t)
    # by linearity: the projections of what the mask holds, M (A + B), ...
    expected = _images(torch.as_tensor(mask) * (a + b), rot, shifts, ctf)
    assert torch.allclose(out, expected, atol=1e-5 * float(expected.abs().max()))
    # ... which is blob A up to the Gaussian tails that cross the mask's edge (B entirely gone)
    only_a = _images(a, rot, shifts, ctf)
    assert float((out - only_a).norm() / only_a.norm()) < 0.02
    assert float((out - _images(a + b, rot, shifts, ctf)).norm() / only_a.norm()) > 0.9
    # with --invert-data the raw images are of the opposite sign: the consensus is added
    out_inv, _ = focus.apply(-_images(a + b, rot, shifts, ctf), rot, shifts, ctf_t, invert=True)
    assert torch.allclose(out_inv, -expected, atol=1e-5 * float(expected.abs().max()))


def test_the_footprint_is_one_where_the_mask_projects_and_zero_elsewhere():
    mask = _sphere(D, A_CENTRE, 2.5)
    focus = FocusSubtraction(mask, np.zeros((D, D, D), np.float32), APIX)
    identity = torch.eye(3)[None]
    f = focus.footprint(identity)[0]  # centred frame; the identity pose projects along z
    c = D // 2
    assert f[c + A_CENTRE[1], c + A_CENTRE[0]] == pytest.approx(1.0)
    assert float(f[:, c + 2 :].abs().max()) < 0.02  # x >= +2: far from the mask (x in [-7.5, -0.5])
    # in the raw frame it moves with the particle (by -origin)
    shifted = focus.footprint(identity, torch.tensor([[-3.0, 0.0]]))[0]
    assert shifted[c + A_CENTRE[1], c + A_CENTRE[0] + 3] == pytest.approx(1.0, abs=1e-3)


def test_the_share_weight_is_the_fraction_of_the_rays_density_inside_the_mask():
    a = blob_volume(D, [(-4, 0, 0)], sigma_px=1.0)
    b = blob_volume(D, [(4, 0, 0)], sigma_px=1.0)
    mask = _sphere(D, (-4, 0, 0), 2.5)
    c = D // 2
    share = FocusSubtraction(mask, (a + b).numpy(), APIX)  # the default weighting
    footprint = FocusSubtraction(mask, (a + b).numpy(), APIX, weighting="footprint")
    along_z = torch.eye(3)[None]  # A and B side by side
    w = share.footprint(along_z)[0]
    assert float(w[c, c - 4]) > 0.95 and float(w[c, c + 4]) < 0.02
    along_x = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]])  # A behind B: every ray crosses both
    w, f = share.footprint(along_x)[0], footprint.footprint(along_x)[0]
    assert float(f[c, c]) == pytest.approx(1.0)  # the mask alone keeps the pixel ...
    assert float(w[c, c]) == pytest.approx(0.25, abs=0.05)  # ... whose density is half inside the mask (0.5^2)
    assert torch.equal(FocusSubtraction(mask, (a + b).numpy(), APIX, weighting="none").footprint(along_x),
                       torch.ones(1, D, D))


def test_a_mask_of_ones_leaves_the_prepared_images_unchanged():
    a, b = _blobs()
    rot, shifts, ctf = _metadata(10, seed=2)
    images = _images(a + b, rot, shifts, ctf)
    particles = _particles(images, rot, shifts, ctf)
    pixels = FourierPixels.create(D)
    plain = SliceParticleData(particles, pixels, norm_std=1.0, progress=False)
    focus = FocusSubtraction(np.ones((D, D, D), np.float32), (a + b).numpy(), APIX)
    focused = SliceParticleData(particles, pixels, norm_std=1.0, progress=False, focus=focus)
    assert torch.equal(plain.values, focused.values)
    batch = focused.batch(np.arange(4))
    assert torch.equal(batch["weight"], torch.ones(4, D, D))
    assert "weight" not in plain.batch(np.arange(4))


def test_lazy_focused_data_equal_the_prepared_ones():
    a, b = _blobs()
    rot, shifts, ctf = _metadata(10, seed=3)
    particles = _particles(_images(a + b, rot, shifts, ctf), rot, shifts, ctf)
    pixels = FourierPixels.create(D)
    mask = _sphere(D, A_CENTRE, 2.5)
    eager = SliceParticleData(particles, pixels, norm_std=0.5, progress=False,
                              focus=FocusSubtraction(mask, (a + b).numpy(), APIX))
    lazy = SliceParticleData(particles, pixels, norm_std=0.5, progress=False, lazy=True,
                             focus=FocusSubtraction(mask, (a + b).numpy(), APIX))
    rows = np.array([7, 1, 4])
    # equal to float32 rounding: the eager path prepares all images in one batch of FFTs, the lazy one (and the hand
    # computation below) per batch, so the sums round differently (1.2e-5 on values up to 18.6 on an AMD EPYC, below
    # 1e-6 on an Intel Xeon); a wrong subtraction or footprint differs by O(1)
    y_eager = eager.batch(rows)["y"]
    tol = 2e-6 * float(y_eager.abs().max())
    assert torch.allclose(y_eager, lazy.batch(rows)["y"], rtol=0, atol=tol)
    assert torch.equal(eager.batch(rows)["weight"], lazy.batch(rows)["weight"])
    # exactly the subtracted images times their footprint, then the usual preparation
    sub, foot = eager.focus.apply(torch.as_tensor(particles.images[rows]), rot[rows], shifts[rows],
                                  eager._ctf_cpu[torch.as_tensor(rows)])
    by_hand = hartley_pixels(sub, pixels, shifts[rows], eager.window * foot) / 0.5
    assert torch.allclose(y_eager, by_hand, rtol=0, atol=tol)


def test_the_model_weights_its_rendered_slices_as_the_images_were_weighted():
    torch.manual_seed(0)
    model = CryoDRGN(D=D, pixel_size_angstrom=APIX, zdim=1, enc_dim=8, enc_layers=1, dec_dim=8, dec_layers=1)
    pixels = model.pixels
    band = circle_mask(D).float()
    x = ifft2_centered(fft2_centered(torch.randn(3, D, D)) * band).real  # band-limited: the pixels hold it all
    weight = torch.rand(3, D, D)
    assert torch.allclose(model.weight_in_real_space(hartley_pixels(x, pixels), weight),
                          hartley_pixels(x * weight, pixels), atol=1e-4)
    # the loss: a footprint of ones changes nothing; another footprint changes only what it weights
    batch = {"y": hartley_pixels(x, pixels), "rot": torch.eye(3).expand(3, 3, 3)}
    model.eval()
    with torch.no_grad():
        plain = model(batch)["recon"]
        ones = model({**batch, "weight": torch.ones(3, D, D)})["recon"]
        zero = model({**batch, "weight": torch.zeros(3, D, D)})["recon"]
    assert torch.allclose(plain, ones, atol=1e-6)
    assert float(zero) == pytest.approx(float((batch["y"] ** 2).mean()), rel=1e-5)


# -- files and configuration ---------------------------------------------------------------------------------------
def test_focus_maps_are_checked_in_one_line(tmp_path):
    good = write_mrc(tmp_path / "m.mrc", _sphere(D, A_CENTRE, 2.5), APIX)
    assert load_focus_map(good, D, APIX).shape == (D, D, D)
    cases = {
        "box.mrc": (np.ones((8, 8, 8), np.float32), APIX, "is a 8^3 box, the particles are 16 x 16"),
        "apix.mrc": (np.ones((D, D, D), np.float32), 2 * APIX, "8 A voxels, the particles 4 A pixels"),
        "range.mrc": (np.full((D, D, D), 3.0, np.float32), APIX, "values must lie in [0, 1]"),
        "empty.mrc": (np.zeros((D, D, D), np.float32), APIX, "no positive voxel"),
    }
    for name, (data, apix, message) in cases.items():
        path = write_mrc(tmp_path / name, data, apix)
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("^", r"\^")) as e:
            load_focus_map(path, D, APIX)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_focus_options_round_trip_in_the_config():
    model = ModelConfig(family="cryodrgn", zdim=1, focus_mask="/m.mrc", focus_consensus="/run/focus/consensus.mrc")
    config = RunConfig(model=model)
    back = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert back.model.focus_mask == "/m.mrc" and back.model.focus_consensus == "/run/focus/consensus.mrc"
    with pytest.raises(InputError, match="--focus-consensus needs --focus-mask"):
        ModelConfig(family="cryodrgn", focus_consensus="/c.mrc")
    with pytest.raises(InputError, match="not an option of --model tomodrgn"):
        ModelConfig(family="tomodrgn", focus_mask="/m.mrc")
    family = get_family("cryodrgn")
    family.validate(config)
    with pytest.raises(InputError, match="cannot be combined with --refine-poses"):
        family.validate(RunConfig(model=model, train=TrainConfig(refine_poses=True)))
    with pytest.raises(InputError, match="needs a consensus map"):
        family.validate(RunConfig(model=ModelConfig(family="cryodrgn", focus_mask="/m.mrc")))


# -- the command -----------------------------------------------------------------------------------------------------
SMALL = ["--zdim", "1", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
         "--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(out)]) == 0
    write_mrc(out / "mask.mrc", _sphere(16, (0, 0, 0), 4.0), 6.0)
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_train_records_the_mask_and_stores_the_consensus_then_resumes(sim, tmp_path, capsys):
    run = tmp_path / "run"
    star, mask = str(sim / "particles.star"), str(sim / "mask.mrc")
    assert main(["train", star, "-o", str(run), "-n", "1", "--focus-mask", mask, *SMALL]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert recorded["focus_mask"] == mask
    assert recorded["focus_consensus"] == str(run.resolve() / "focus" / "consensus.mrc")
    consensus, info = read_mrc(run / "focus" / "consensus.mrc")
    assert consensus.shape == (16, 16, 16) and info.voxel_size_angstrom == pytest.approx(6.0)
    assert np.array_equal(read_mrc(run / "focus" / "mask.mrc")[0], read_mrc(mask)[0])
    build = torch.load(run / "checkpoints" / "epoch_001.pt", map_location="cpu", weights_only=False)["build"]
    assert 0.2 < build["focus_scale"] < 5  # the back-projected consensus is in the images' units
    # resume reads the stored map (not back-projected again), also with the options repeated
    stamp = (run / "focus" / "consensus.mrc").stat().st_mtime_ns
    assert main(["train", star, "-o", str(run), "--resume", "-n", "2", "--focus-mask", mask, "--no-progress"]) == 0
    assert (run / "focus" / "consensus.mrc").stat().st_mtime_ns == stamp
    assert (run / "checkpoints" / "epoch_002.pt").is_file()
    # decoder maps of the run
    assert main(["eval-vol", str(run), "--z", "0.5", "-o", str(tmp_path / "v.mrc"), "--device", "cpu"]) == 0
    # another mask on resume is a conflict
    other = write_mrc(tmp_path / "other.mrc", _sphere(16, (2, 0, 0), 3.0), 6.0)
    capsys.readouterr()
    assert main(["train", star, "-o", str(run), "--resume", "-n", "3", "--focus-mask", str(other)]) == 2
    assert "--focus-mask is" in _one_line_error(capsys)


def test_a_given_consensus_is_copied_and_used(sim, tmp_path):
    run = tmp_path / "run"
    consensus = write_mrc(tmp_path / "c.mrc", 2.0 * _sphere(16, (0, 0, 0), 5.0), 6.0)
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--focus-mask",
                 str(sim / "mask.mrc"), "--focus-consensus", str(consensus), *SMALL]) == 0
    assert np.array_equal(read_mrc(run / "focus" / "consensus.mrc")[0], read_mrc(consensus)[0])
    # the same map given again on --resume is the recorded one
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "-n", "2", "--focus-mask",
                 str(sim / "mask.mrc"), "--focus-consensus", str(consensus), "--no-progress"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--focus-mask", "BOX"], "is a 8^3 box, the particles are 16 x 16"),
    (["--focus-mask", "MISSING"], "focus mask not found"),
    (["--focus-mask", "MASK", "--model", "opus-dsd"], "--focus-mask is an option of the cryodrgn family, not of"),
    (["--focus-mask", "MASK", "--freq-march", "2"], "cannot be combined with --freq-march"),
    (["--focus-consensus", "MASK"], "--focus-consensus needs --focus-mask"),
])
def test_bad_focus_inputs_are_refused_in_one_line(sim, tmp_path, capsys, extra, message):
    box = write_mrc(tmp_path / "box.mrc", np.ones((8, 8, 8), np.float32), 6.0)
    names = {"BOX": str(box), "MISSING": str(tmp_path / "nope.mrc"), "MASK": str(sim / "mask.mrc")}
    extra = [names.get(e, e) for e in extra]
    capsys.readouterr()
    options = ["--no-progress"] if "--model" in extra else SMALL  # (SMALL holds options opus-dsd does not have)
    assert main(["train", str(sim / "particles.star"), "-o", str(tmp_path / "run"), "-n", "1", *options, *extra]) == 2
    line = _one_line_error(capsys)
    assert message in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "focus").exists()  # refused before the consensus is made


def test_the_footprint_matches_the_projection_size():
    # a sphere of radius r projects to a disc of radius ~r: its footprint covers ~pi r^2 pixels
    focus = FocusSubtraction(_sphere(32, (0, 0, 0), 5.0), np.zeros((32, 32, 32), np.float32), 1.0)
    f = focus.footprint(torch.as_tensor(random_rotations(2, seed=0), dtype=torch.float32))
    area = float((f > 0.5).sum(dim=(1, 2)).float().mean())
    assert abs(area - math.pi * 5.5**2) < 0.15 * math.pi * 5.5**2


def test_the_same_consensus_written_at_another_time_counts_as_the_recorded_one(tmp_path):
    """--resume with --focus-consensus compares maps, not bytes: an MRC header label records when a file was
    written (a copy written a second later differs byte for byte; this made the resume test above fail at random)."""
    import filecmp

    import mrcfile

    from cryoscape.cli._focus import _same_map

    vol = _sphere(16, (0, 0, 0), 5.0)
    a = write_mrc(tmp_path / "a.mrc", vol, 6.0)
    b = write_mrc(tmp_path / "b.mrc", vol, 6.0)
    with mrcfile.open(b, mode="r+") as f:
        f.header.label[0] = b"written at another time"
    assert not filecmp.cmp(a, b, shallow=False)
    assert _same_map(a, b)
    assert not _same_map(a, write_mrc(tmp_path / "c.mrc", 2.0 * vol, 6.0))
    assert not _same_map(a, write_mrc(tmp_path / "d.mrc", vol, 5.0))
