"""The shared training engine: learning, validation, checkpoints, exact resume, stop requests."""

import numpy as np
import pytest
import torch

from _synthetic import two_state_particles
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.particle_data import SliceParticleData
from cryoscape.models.cryodrgn import CryoDRGN
from cryoscape.train.checkpoint import completed_epochs, epoch_checkpoint_path, latest_checkpoint, load_checkpoint
from cryoscape.train.distributed import DistInfo
from cryoscape.train.engine import Engine, EngineSettings, TrainingInterrupted, _batches, epoch_order
from cryoscape.train.run import split_positions


def make_engine(run_dir, epochs=3, zdim=2, seed=0, n=64, lazy=False):
    torch.manual_seed(seed)
    parts, labels, _ = two_state_particles(n=n, D=16, seed=1)
    data = SliceParticleData(parts, FourierPixels.create(16), progress=False, lazy=lazy)
    model = CryoDRGN(16, 2.0, zdim=zdim, enc_dim=32, enc_layers=1, dec_dim=32, dec_layers=2, feat_sigma=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train, val = split_positions(len(data), 0.125, seed)
    settings = EngineSettings(epochs=epochs, batch_size=8, seed=seed, progress=False)
    build = {"D": 16, "pixel_size_angstrom": 2.0, "norm_std": data.norm_std}
    eng = Engine(model, data, opt, settings, train, val, run_dir, torch.device("cpu"), build=build, family="cryodrgn")
    return eng, labels


def test_batches_cover_every_particle_once():
    order = epoch_order(np.arange(37), seed=3, epoch=2)
    batches = _batches(order, 8, DistInfo())
    assert sorted(np.concatenate(batches).tolist()) == list(range(37))
    # two processes: same number of steps, together they cover everything
    b0 = _batches(order, 8, DistInfo(rank=0, world_size=2))
    b1 = _batches(order, 8, DistInfo(rank=1, world_size=2))
    assert len(b0) == len(b1) == 3
    assert set(np.concatenate(b0 + b1).tolist()) == set(range(37))
    assert not np.array_equal(epoch_order(np.arange(37), 3, 1), order)


def test_split_is_disjoint_and_seeded():
    tr, va = split_positions(100, 0.1, seed=5)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    np.testing.assert_array_equal(split_positions(100, 0.1, seed=5)[1], va)


def test_training_reduces_loss_and_writes_outputs(tmp_path):
    eng, _ = make_engine(tmp_path, epochs=4)
    history = eng.fit()
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_recon"] < 0.8 * history[0]["train_recon"]
    assert np.isfinite(history[-1]["val_loss"])
    assert completed_epochs(tmp_path) == [1, 2, 3, 4]
    z = np.load(tmp_path / "latents" / "epoch_004.npy")
    assert z.shape == (64, 2) and z.dtype == np.float32
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss" in header and "val_recon" in header
    state = load_checkpoint(epoch_checkpoint_path(tmp_path, 4))
    assert state["epoch"] == 4 and state["family"] == "cryodrgn"


def test_resume_equals_uninterrupted_run(tmp_path):
    full, _ = make_engine(tmp_path / "full", epochs=3)
    full.fit()
    part, _ = make_engine(tmp_path / "part", epochs=2)
    part.fit()
    resumed, _ = make_engine(tmp_path / "part", epochs=3, seed=0)
    resumed.load_state_dict(load_checkpoint(latest_checkpoint(tmp_path / "part")))
    resumed.fit()
    z_full = np.load(tmp_path / "full" / "latents" / "epoch_003.npy")
    z_resumed = np.load(tmp_path / "part" / "latents" / "epoch_003.npy")
    np.testing.assert_array_equal(z_full, z_resumed)


def test_stop_request_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    full, _ = make_engine(tmp_path / "full", epochs=2)
    full.fit()
    eng, _ = make_engine(tmp_path / "stop", epochs=2)
    original = eng._step
    calls = {"n": 0}

    def step_then_stop(batch):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 2, step 3 of 7
            eng.request_stop()
        return original(batch)

    eng._step = step_then_stop
    with pytest.raises(TrainingInterrupted):
        eng.fit()
    ckpt = latest_checkpoint(tmp_path / "stop")
    assert ckpt.name == "interrupted.pt"
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"]) == (1, 3)
    resumed, _ = make_engine(tmp_path / "stop", epochs=2)
    resumed.load_state_dict(state)
    resumed.fit()
    assert not (tmp_path / "stop" / "checkpoints" / "interrupted.pt").exists()
    np.testing.assert_allclose(
        np.load(tmp_path / "stop" / "latents" / "epoch_002.npy"),
        np.load(tmp_path / "full" / "latents" / "epoch_002.npy"), rtol=1e-5, atol=1e-6)


def test_lazy_data_trains_like_in_memory_data(tmp_path):
    """Lazy batches are prepared in a background thread (train/prefetch.py); the result must not change."""
    memory, _ = make_engine(tmp_path / "memory", epochs=2)
    memory.fit()
    lazy, _ = make_engine(tmp_path / "lazy", epochs=2, lazy=True)
    assert lazy.data.lazy and lazy.data.values is None
    history = lazy.fit()
    np.testing.assert_allclose(history[-1]["val_loss"], memory.state.history[-1]["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "lazy" / "latents" / "epoch_002.npy"),
                               np.load(tmp_path / "memory" / "latents" / "epoch_002.npy"), rtol=1e-3, atol=1e-4)


def test_prefetched_keeps_order_runs_ahead_and_raises():
    import threading

    from cryoscape.train.prefetch import prefetched

    started = {i: threading.Event() for i in range(7)}

    def fetch(i):
        started[i].set()
        if i == 5:
            raise ValueError("bad image 5")
        return i * 10

    stream = prefetched(range(4), fetch)
    assert next(stream) == 0
    assert started[1].wait(timeout=10)  # item 1 is prepared while the caller works on item 0
    assert not started[2].is_set()  # one fetch in flight at a time
    assert list(stream) == [10, 20, 30]
    assert list(prefetched([], fetch)) == []
    assert list(prefetched(range(3), fetch, enabled=False)) == [0, 10, 20]
    with pytest.raises(ValueError, match="bad image 5"):
        list(prefetched([4, 5, 6], fetch))


def test_prefetched_returns_freed_heap_memory_periodically(monkeypatch):
    import cryoscape.train.prefetch as prefetch_module

    prefetch_module.malloc_trim()  # glibc's malloc_trim(0), or a no-op elsewhere, runs cleanly
    calls = []
    monkeypatch.setattr(prefetch_module, "malloc_trim", lambda: calls.append(1))
    monkeypatch.setattr(prefetch_module, "_TRIM_EVERY", 4)
    assert list(prefetch_module.prefetched(range(10), lambda i: -i)) == [-i for i in range(10)]
    assert len(calls) == 2  # after the 4th and the 8th hand-over
