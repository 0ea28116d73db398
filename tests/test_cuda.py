"""CUDA: the same small trainings on the GPU as on the CPU (skipped without CUDA; ``pytest -m cuda`` selects them).

``bench/gpu_check.sh`` runs these on the day a GPU is lent; on a CPU machine every test here is skipped.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.imaging.fft import hartley2, ihartley2

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


def test_hartley_transform_on_cuda_matches_cpu():
    x = torch.randn(4, 32, 32, dtype=torch.float32)
    on_gpu = hartley2(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), hartley2(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ihartley2(on_gpu).cpu(), x, rtol=1e-4, atol=1e-4)


def test_training_on_cuda_follows_the_cpu_run(sim, tmp_path):
    """Same seed, data and order: the GPU's float32 losses stay within rounding of the CPU's; checkpoints and
    latents written by a GPU run are read back on the CPU."""
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = tmp_path / device
        assert main(["train", str(sim / "particles.star"), "-o", str(runs[device]), "-n", "2", *SMALL,
                     "--device", device]) == 0
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
    runs = {}
    for name, extra in (("fp32", []), ("amp", ["--amp"])):
        runs[name] = tmp_path / name
        assert main(["train", str(sim / "particles.star"), "-o", str(runs[name]), "-n", "2", *SMALL,
                     "--device", "cuda", *extra]) == 0
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
