"""CUDA: the same small trainings on the GPU as on the CPU (skipped without CUDA; ``pytest -m cuda`` selects them):
plain training, ``--amp``, ``--ctf-field``, ``--refine-poses``, ``abinit``, ``eval-vol --reconstruct``, opus-dsd and
tomodrgn.

``bench/gpu_check.sh`` runs these on the day a GPU is lent; on a CPU machine every test here is skipped.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.imaging.fft import hartley2, ihartley2
from cryoscape.imaging.so3_grid import geodesic_distance_deg
from cryoscape.io.mrc import read_mrc
from cryoscape.models.poses import load_learned_poses

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda)")]

SMALL = ["--zdim", "2", "--enc-dim", "32", "--enc-layers", "2", "--dec-dim", "32", "--dec-layers", "2", "-b", "8",
         "--no-progress", "--seed", "3", "--val-frac", "0"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "64", "-D", "32", "--snr", "1", "--seed", "0",
                 "-o", str(out)]) == 0
    return out


def train_losses(run) -> list[float]:
    with open(run / "metrics.csv") as fh:
        return [float(row["train_loss"]) for row in csv.DictReader(fh)]


def train(sim, run, device: str, *extra: str, epochs: int = 2):
    """``cryoscape train`` of the small model on ``device``; returns the run folder."""
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", str(epochs), *SMALL, "--device", device,
                 *extra]) == 0
    return run


def test_hartley_transform_on_cuda_matches_cpu():
    x = torch.randn(4, 32, 32, dtype=torch.float32)
    on_gpu = hartley2(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), hartley2(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ihartley2(on_gpu).cpu(), x, rtol=1e-4, atol=1e-4)


def test_training_on_cuda_follows_the_cpu_run(sim, tmp_path):
    """Same seed, data and order: the GPU's float32 losses stay within rounding of the CPU's; checkpoints and
    latents written by a GPU run are read back on the CPU."""
    runs = {device: train(sim, tmp_path / device, device) for device in ("cpu", "cuda")}
    cpu, gpu = train_losses(runs["cpu"]), train_losses(runs["cuda"])
    assert len(cpu) == len(gpu) == 2 and all(np.isfinite(gpu))
    np.testing.assert_allclose(gpu, cpu, rtol=2e-2)
    z = np.load(runs["cuda"] / "latents" / "epoch_002.npy")
    assert z.shape == (64, 2) and np.isfinite(z).all()
    state = torch.load(runs["cuda"] / "checkpoints" / "epoch_002.pt", map_location="cpu", weights_only=True)
    assert all(not t.is_cuda for t in state["model"].values() if isinstance(t, torch.Tensor))
    # analysis of a GPU run on the CPU
    assert main(["eval-images", str(runs["cuda"]), "-o", str(tmp_path / "z.npy"), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), z, rtol=1e-3, atol=1e-3)


def test_amp_on_cuda_trains_close_to_float32(sim, tmp_path):
    """``--amp`` (bfloat16 autocast, float16 with a gradient scaler on GPUs without bfloat16) learns like float32."""
    runs = {name: train(sim, tmp_path / name, "cuda", *extra) for name, extra in (("fp32", []), ("amp", ["--amp"]))}
    fp32, amp = train_losses(runs["fp32"]), train_losses(runs["amp"])
    assert all(np.isfinite(amp))
    np.testing.assert_allclose(amp, fp32, rtol=0.1)
    assert amp[-1] < amp[0] * 1.05  # still learning, not diverging


@pytest.mark.parametrize("family_args", [
    ["--model", "opus-dsd", "--zdim", "2", "--channel-scale", "0.25", "-b", "8", "--knn", "4", "--kfarthest", "8",
     "--n-samples", "64"],
], ids=["opus-dsd"])
def test_other_family_trains_an_epoch_on_cuda(sim, tmp_path, family_args):
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--no-progress", "--seed", "3",
                 "--device", "cuda", *family_args]) == 0
    assert all(np.isfinite(train_losses(run)))


def test_tomodrgn_trains_an_epoch_on_cuda(tmp_path):
    sim = tmp_path / "simtilt"
    assert main(["simulate-tilt", "--preset", "tilt4", "--size", "tiny", "-o", str(sim)]) == 0
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--model", "tomodrgn", "--zdim",
                 "2", "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1",
                 "--tilt-embed-dim", "8", "-b", "4", "--no-progress", "--device", "cuda"]) == 0
    assert all(np.isfinite(train_losses(run)))


def test_ctf_field_on_cuda_follows_the_cpu_run(sim, tmp_path):
    """``--ctf-field 2`` (FFTs of the slice placed in a larger field): GPU float32 like the CPU; with ``--amp`` the
    FFTs stay in float32 and the losses stay close."""
    cpu = train_losses(train(sim, tmp_path / "cpu", "cpu", "--ctf-field", "2"))
    gpu = train_losses(train(sim, tmp_path / "gpu", "cuda", "--ctf-field", "2"))
    np.testing.assert_allclose(gpu, cpu, rtol=2e-2)
    amp = train_losses(train(sim, tmp_path / "amp", "cuda", "--ctf-field", "2", "--amp"))
    assert all(np.isfinite(amp))
    np.testing.assert_allclose(amp, gpu, rtol=0.1)


def test_refine_poses_on_cuda_follows_the_cpu_run(sim, tmp_path):
    """``--refine-poses`` (local Gauss-Newton steps from epoch 2): the GPU's losses and refined poses follow the
    CPU's (same seed and order; rotations within a degree)."""
    runs = {name: train(sim, tmp_path / name, device, "--refine-poses", "--refine-start", "2", epochs=3)
            for name, device in (("cpu", "cpu"), ("gpu", "cuda"))}
    np.testing.assert_allclose(train_losses(runs["gpu"]), train_losses(runs["cpu"]), rtol=2e-2)
    (e_cpu, cpu), (e_gpu, gpu) = (load_learned_poses(runs[name]) for name in ("cpu", "gpu"))
    assert e_cpu == e_gpu == 3 and gpu["refined"].all()
    assert np.median(geodesic_distance_deg(gpu["rotations"], cpu["rotations"])) < 1.0
    np.testing.assert_allclose(gpu["shifts_angstrom"], cpu["shifts_angstrom"], atol=0.5)


@pytest.mark.parametrize("model", [["--zdim", "0"], ["--zdim", "2"], ["--zdim", "2", "--classes", "2"]])
def test_abinit_on_cuda(sim, tmp_path, model):
    """``abinit`` (the batched grid search, then local refinement; with ``--classes`` the search against each class
    map) runs on the GPU: finite losses close to the CPU run's, and rotation matrices as poses."""
    args = [*model, "-n", "3", "--search-epochs", "2", "--pretrain", "16", "--enc-dim", "16", "--enc-layers",
            "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8", "--no-progress", "--seed", "3"]
    runs = {}
    for name, device in (("cpu", "cpu"), ("gpu", "cuda")):
        runs[name] = tmp_path / name
        assert main(["abinit", str(sim / "particles.star"), "-o", str(runs[name]), *args, "--device", device]) == 0
    cpu, gpu = train_losses(runs["cpu"]), train_losses(runs["gpu"])
    assert len(gpu) == 3 and all(np.isfinite(gpu))
    np.testing.assert_allclose(gpu, cpu, rtol=0.1)
    epoch, learned = load_learned_poses(runs["gpu"])
    R = learned["rotations"]
    assert epoch == 3 and R.shape == (64, 3, 3)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-4)


def test_reconstruct_on_cuda_equals_the_cpu_map(sim, tmp_path):
    """``eval-vol --reconstruct`` (latent-neighbour back-projection) gives the same map on the GPU as on the CPU."""
    run = train(sim, tmp_path / "run", "cpu", epochs=1)
    maps = {}
    for name, device in (("cpu", "cpu"), ("gpu", "cuda")):
        out = tmp_path / f"recon_{name}.mrc"
        assert main(["eval-vol", str(run), "--z", "0", "0", "-o", str(out), "--reconstruct", "--max-neighbours",
                     "32", "--device", device]) == 0
        maps[name] = read_mrc(out)[0]
    scale = float(np.abs(maps["cpu"]).max())
    np.testing.assert_allclose(maps["gpu"], maps["cpu"], atol=1e-3 * scale)
