"""Multi-class consensus search of a heterogeneous ab initio run (``cryoscape abinit --zdim N --classes K``): the
class codes are axes of the latent space; each image is searched against every class map and takes the class it
came from and the pose within it; the class draws are annealed and reproducible; the decoder trains each image at
its class's code and the encoder learns the codes; a run stopped and resumed equals an uninterrupted one."""

import numpy as np
import pytest
import torch

from _abinit_runs import assert_same_run, blobs, tiny_cryodrgn
from cryoscape.cli.main import main
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.imaging import so3_grid
from cryoscape.imaging.fft import hartley2
from cryoscape.imaging.projection import project_real
from cryoscape.models.cryodrgn import CLASS_CODE_SCALE, CLASS_CODE_SIGMA, class_code_kl, class_codes
from cryoscape.models.pose_search import PoseSearcher, map_search_predictor, random_rotations
from cryoscape.rundir import load_checkpoint

D = 32


def test_class_codes_are_scaled_axes_of_the_latent_space():
    codes = class_codes(torch.tensor([0, 2, 1]), 4)
    expected = CLASS_CODE_SCALE * torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    torch.testing.assert_close(codes, expected)
    with pytest.raises(ValueError, match="more than 2 dimensions"):
        class_codes(torch.tensor([2]), 2)


class _TwoMaps:
    """A stand-in model: the search predictor of class ``k`` is the known map ``vols[k]``."""

    def __init__(self, vols):
        self.vols = vols
        self.calls = []

    def pose_search_predictor(self, batch, half, radius, class_index=None):
        self.calls.append(class_index)
        hf = FourierPixels.create(D).half_freqs()
        freqs = torch.cat([hf[half], hf[:1] * 0])
        return map_search_predictor(self.vols[class_index], radius, freqs)


def _images_of_two_maps(n_each: int, noise: float = 0.0, seed: int = 0):
    vols = [blobs(D, seed=3), blobs(D, seed=8)]
    pixels = FourierPixels.create(D)
    A = torch.tensor(random_rotations(2 * n_each, 21), dtype=torch.float32)
    labels = torch.arange(2).repeat_interleave(n_each)
    images = torch.cat([project_real(torch.tensor(vols[k]), A[labels == k]) for k in range(2)])
    images = images + noise * images.std() * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    y = hartley2(images).reshape(2 * n_each, -1)[:, pixels.index]
    batch = {"y": y, "rot": torch.eye(3).expand(2 * n_each, 3, 3), "index": torch.arange(2 * n_each)}
    return vols, batch, A, labels


def test_class_search_gives_each_image_the_map_it_came_from_and_its_pose():
    vols, batch, A_true, labels = _images_of_two_maps(6)
    hf = FourierPixels.create(D).half_freqs()
    s = PoseSearcher(12, hf, D=D, pixel_size_angstrom=4.0, pretrain_images=0, n_classes=2, class_anneal_epochs=1,
                     radius_start_px=8, radius_end_px=8, shift_extent_px=1, shift_step_px=1)
    assert s.class_beta() == 1.0  # annealed: the best class
    model = _TwoMaps(vols)
    s.active(1)
    out = s.prepare(batch, model)
    assert sorted(set(model.calls)) == [0, 1]  # every image against both maps
    np.testing.assert_array_equal(s.classes.numpy(), labels.numpy())
    np.testing.assert_array_equal(out["class_index"].numpy(), labels.numpy())
    angle = so3_grid.geodesic_distance_deg(out["rot"].double().numpy(), A_true.double().numpy())
    spacing = so3_grid.grid_spacing_deg(4)
    assert np.median(angle) < spacing and angle.max() < 2 * spacing, angle
    # the epoch's log line and history carry the class sizes and the share that changed class
    s.active(2)
    assert s.history[-1]["class_sizes"] == [6, 6] and 0.0 <= s.history[-1]["class_changed_fraction"] <= 1.0


def test_class_posterior_weight_is_annealed_and_draws_are_reproducible():
    hf = FourierPixels.create(D).half_freqs()
    s = PoseSearcher(12, hf, D=D, pixel_size_angstrom=4.0, n_classes=2, class_anneal_epochs=4)
    betas = []
    for full in (0, 1, 3, 6):
        s.full_searches = full
        betas.append(s.class_beta())
    assert betas == [0.25, 0.5, 1.0, 1.0]
    # default: annealed over half the most search epochs
    assert PoseSearcher(12, hf, D=D, pixel_size_angstrom=4.0, n_classes=2, max_search_epochs=12
                        ).class_anneal_epochs == 6
    # the initial classes are seeded; one class or a homogeneous search keeps none
    a = PoseSearcher(50, hf, D=D, pixel_size_angstrom=4.0, n_classes=3, seed=5).classes
    b = PoseSearcher(50, hf, D=D, pixel_size_angstrom=4.0, n_classes=3, seed=5).classes
    assert torch.equal(a, b) and set(a.tolist()) == {0, 1, 2}
    assert PoseSearcher(50, hf, D=D, pixel_size_angstrom=4.0, n_classes=1).n_classes == 0
    # the drawn classes (noisy images, an early search) are a function of the images trained on
    vols, batch, _, labels = _images_of_two_maps(6, noise=3.0)
    drawn = []
    for _ in range(2):
        t = PoseSearcher(12, hf, D=D, pixel_size_angstrom=4.0, pretrain_images=0, n_classes=2,
                         class_anneal_epochs=50, radius_start_px=6, radius_end_px=6, shift_extent_px=1,
                         shift_step_px=1, n_levels=1)
        t.active(1)
        t.prepare(batch, _TwoMaps(vols))
        drawn.append(t.classes.clone())
    assert torch.equal(drawn[0], drawn[1])
    restored = PoseSearcher(12, hf, D=D, pixel_size_angstrom=4.0, n_classes=2)
    restored.load_state_dict(t.state_dict())
    assert torch.equal(restored.classes, t.classes)


def test_the_decoder_trains_each_image_at_its_class_code_and_the_encoder_learns_the_codes():
    model, y, rot = tiny_cryodrgn(3, 4)
    P = model.pixels.n_pixels
    cls = torch.tensor([0, 2, 1, 2])
    model.set_consensus_only(True)
    terms = model({"y": y, "rot": rot, "class_index": cls})
    codes = class_codes(cls, 3)
    with torch.no_grad():
        expected = torch.mean((model.render(rot, codes) - y) ** 2)
        mu, logvar = model.encode(y)
    torch.testing.assert_close(terms["recon"], expected)
    torch.testing.assert_close(terms["class_fit"], class_code_kl(mu, logvar, codes).mean())
    torch.testing.assert_close(terms["loss"], terms["recon"] + model.beta * terms["kl"] / P + terms["class_fit"] / P)
    # the search predictor of class k: one shared map, the decoder at the code of k
    hf = model.pixels.half_freqs()
    half = torch.nonzero(hf.norm(dim=1) < 4.0 / 16).squeeze(1)
    pred = model.pose_search_predictor({"y": y}, half, 4.0 / 16, oversample=8, class_index=2)
    assert pred.shared
    with torch.no_grad():
        maps = [model.render(rot, class_codes(torch.full((4,), k), 3), half) for k in range(3)]
    # median over the slice values: the decoder is evaluated on the half k_z <= 0 and mirrored, so an untrained one
    # jumps across the k_z = 0 plane, and the grid's trilinear samples next to that plane blend both sides
    diff = [float((pred.slices(rot) - m).abs().median() / m.abs().median()) for m in maps]
    assert diff[2] < 0.01 and min(diff[0], diff[1]) > 10 * diff[2], diff
    model.set_consensus_only(False)
    with pytest.raises(RuntimeError, match="consensus phase"):
        model.pose_search_predictor({"y": y}, half, 4.0 / 16, class_index=0)


def test_class_code_kl_is_the_gaussian_kl_to_the_code_with_the_stated_spread():
    """The encoder's class term is KL(N(mu, sigma^2) || N(code, CLASS_CODE_SIGMA^2)), summed over the latent
    (torch.distributions as the independent definition): zero exactly at the code with that spread, so the encoder
    leaves the class search with latents that a draw does not carry from one class to another."""
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    code = class_codes(torch.tensor([0, 1, 2, 3, 0]), 4)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(code, CLASS_CODE_SIGMA)).sum(1)
    torch.testing.assert_close(class_code_kl(mu, logvar, code), expected)
    at_code = class_code_kl(code, torch.full_like(code, 2 * np.log(CLASS_CODE_SIGMA)), code)
    torch.testing.assert_close(at_code, torch.zeros(5), atol=1e-5, rtol=0)
    assert 8 * CLASS_CODE_SIGMA <= CLASS_CODE_SCALE * np.sqrt(2)  # the codes many spreads apart


@pytest.fixture(scope="module")
def discrete_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("abinit_classes")
    assert main(["simulate", "--preset", "discrete3", "-N", "48", "-D", "16", "--snr", "1", "-o", str(out)]) == 0
    return out


SMALL = ["--threads", "1", "--no-progress", "-b", "8", "--pretrain", "16", "--enc-dim", "16", "--enc-layers", "1",
         "--dec-dim", "16", "--dec-layers", "1", "--zdim", "3", "--classes", "3", "--search-epochs", "3",
         "--latent-search-epochs", "1"]


def test_abinit_classes_run_logs_the_classes_and_resumes_exactly(discrete_sim, tmp_path):
    star = str(discrete_sim / "particles.star")
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["abinit", star, "-o", str(whole), "-n", "3", *SMALL]) == 0
    log = (whole / "log.txt").read_text()
    assert "searched against 3 class maps" in log
    assert "% changed class" in log and "classes " in log
    assert main(["abinit", star, "-o", str(part), "-n", "2", *SMALL]) == 0
    assert main(["abinit", star, "-o", str(part), "--resume", "-n", "3", "--threads", "1", "--no-progress"]) == 0
    assert_same_run(whole, part, 3)
    a = load_checkpoint(whole / "checkpoints" / "epoch_003.pt")["poses"]["classes"]
    b = load_checkpoint(part / "checkpoints" / "epoch_003.pt")["poses"]["classes"]
    assert torch.equal(a, b) and a.numel() == 48 and int(a.max()) <= 2


def test_a_class_search_goes_straight_to_the_local_phase_by_default(discrete_sim, tmp_path):
    """With --classes the own-map search epochs default to 0 (they scrambled a state the classes had posed,
    RESULTS 14g); given explicitly, they run."""
    from cryoscape.config import load_config
    from cryoscape.rundir import RunDir

    base = ["abinit", str(discrete_sim / "particles.star"), "-n", "1", *SMALL[:-4]]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    assert load_config(RunDir(tmp_path / "a").config_path).train.latent_search_epochs == 0
    assert main([*base, "-o", str(tmp_path / "b"), "--latent-search-epochs", "2"]) == 0
    assert load_config(RunDir(tmp_path / "b").config_path).train.latent_search_epochs == 2


@pytest.mark.parametrize("options,named", [(["--zdim", "2", "--classes", "3"], "--zdim 3"),
                                           (["--zdim", "2", "--classes", "1"], "--classes"),
                                           (["--zdim", "2", "--classes", "2", "--model", "opus-dsd"], "tomodrgn")])
def test_abinit_refuses_bad_classes_in_one_line(discrete_sim, tmp_path, capsys, options, named):
    assert main(["abinit", str(discrete_sim / "particles.star"), "-o", str(tmp_path / "run"), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and named in err
    assert not (tmp_path / "run").exists()
