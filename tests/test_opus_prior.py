"""The structural-disentanglement prior, the memory bank, the annealing schedule and best-epoch selection."""

import numpy as np
import pytest
import torch

from cryoscape.models.opus_dsd import OpusDSD
from cryoscape.models.opus_prior import (
    EPS,
    MemoryBank,
    cauchy_attraction,
    cauchy_repulsion,
    cyclic_weight,
    inter_class_prior,
    intra_class_prior,
)


def test_memory_bank_momentum_update():
    bank = MemoryBank(6, 2, momentum=0.7)
    first = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    bank.update(torch.tensor([1, 4]), first, torch.tensor([5, 7]))
    np.testing.assert_allclose(bank.codes[[1, 4]].numpy(), first.numpy())  # first visit: stored as is
    assert bank.filled.tolist() == [False, True, False, False, True, False]
    new = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    bank.update(torch.tensor([1, 4]), new, torch.tensor([5, 7]))
    np.testing.assert_allclose(bank.codes[1].numpy(), [0.7, 1.4], rtol=1e-6)
    np.testing.assert_allclose(bank.codes[4].numpy(), [0.7 * 3 + 0.3, 0.7 * -1 + 0.3], rtol=1e-6)
    assert float(bank.codes[[0, 2, 3, 5]].abs().sum()) == 0.0
    assert bank.classes.tolist() == [-1, 5, -1, -1, 7, -1]
    # lookup: bank rows where filled, the fallback elsewhere
    fb = torch.full((2, 2), 9.0)
    np.testing.assert_allclose(bank.lookup(torch.tensor([1, 2]), fb).numpy(), [[0.7, 1.4], [9.0, 9.0]], rtol=1e-6)
    # the bank is part of the model's state dict
    assert {"codes", "classes"} <= set(bank.state_dict())


def test_bank_samples_only_filled_codes_of_other_classes():
    bank = MemoryBank(100, 3)
    idx = torch.arange(0, 80)
    bank.update(idx, torch.randn(80, 3), idx % 4)
    s = bank.sample_other_classes(torch.tensor([0, 1]), 1000)
    assert s.shape == (40, 3)  # classes 2 and 3 of the 80 filled entries
    expected = bank.codes[(torch.arange(100) < 80) & (torch.arange(100) % 4 >= 2)]
    assert {tuple(r) for r in s.tolist()} == {tuple(r) for r in expected.tolist()}
    assert bank.sample_other_classes(torch.tensor([0]), 7).shape == (7, 3)


def test_cauchy_kernel_terms():
    d = torch.tensor([0.0, 1.0, 3.0])
    q = 1.0 / (1.0 + d)
    np.testing.assert_allclose(cauchy_attraction(d).numpy(), (-torch.log(q)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(cauchy_repulsion(d[1:], eps=0.0).numpy(), (-torch.log(1 - q[1:])).numpy(), rtol=1e-6)
    assert float(cauchy_repulsion(torch.tensor(0.0))) == pytest.approx(np.log1p(1 / EPS))


def _step(loss_fn, z, lr=0.05):
    z = z.clone().requires_grad_(True)
    loss_fn(z).backward()
    return (z - lr * z.grad).detach(), z.grad


def test_intra_class_attraction_pulls_neighbours_and_repulsion_pushes_apart():
    z = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [3.0, 2.5]])
    # attraction with k = 1: each code moves towards its nearest neighbour
    new, grad = _step(lambda x: intra_class_prior(x, k=1)[0], z)
    d0 = torch.cdist(z, z)
    d1 = torch.cdist(new, new)
    assert d1[0, 1] < d0[0, 1] and d1[2, 3] < d0[2, 3]
    # analytic gradient of mean log(1 + |a - b|^2) over the 4 neighbour pairs (0->1, 1->0, 2->3, 3->2)
    a, b = z[0], z[1]
    g01 = 2 * (a - b) / (1 + float((a - b).pow(2).sum()))
    np.testing.assert_allclose(grad[0].numpy(), (2 * g01 / 4).numpy(), rtol=1e-5)
    # repulsion: the codes spread out, and two codes move straight apart with the analytic gradient of
    # min(d, 1) * log(1 + 1/(d + eps)) (weight not differentiated)
    new, _ = _step(lambda x: intra_class_prior(x, k=1)[1], z)
    assert float(torch.pdist(new).pow(2).sum()) > float(torch.pdist(z).pow(2).sum())
    pair = z[:2]
    new, grad = _step(lambda x: intra_class_prior(x, k=1)[1], pair)
    assert float(torch.dist(new[0], new[1])) > float(torch.dist(pair[0], pair[1]))
    d = float((pair[0] - pair[1]).pow(2).sum())
    dl_dd = min(d, 1.0) * -1.0 / ((d + EPS) * (d + EPS + 1.0))
    np.testing.assert_allclose(grad[0].numpy(), (dl_dd * 2 * (pair[0] - pair[1]) * 2 / 2).numpy(), rtol=1e-5)
    one = torch.zeros(1, 2)
    att, rep = intra_class_prior(one)
    assert float(att) == 0.0 and float(rep) == 0.0


def test_inter_class_prior_selects_by_query_and_moves_the_right_way():
    samples = torch.tensor([[float(i), 0.0] for i in range(1, 17)])  # M = 16 -> K = 4, N = 8
    z = torch.tensor([[0.5, 0.0]])
    query = torch.tensor([[0.0, 0.0]])
    att_fn = lambda x: inter_class_prior(x, query, samples, knn=128, kfarthest=512)[0]  # noqa: E731
    rep_fn = lambda x: inter_class_prior(x, query, samples, knn=128, kfarthest=512)[1]  # noqa: E731
    zz = z.clone()
    att = att_fn(zz)
    near = samples[:4]
    assert float(att) == pytest.approx(float(torch.log1p((z - near).pow(2).sum(1)).mean()), rel=1e-6)
    rep = rep_fn(zz)
    far = samples[8:]
    assert float(rep) == pytest.approx(float(torch.log1p(1 / ((z - far).pow(2).sum(1) + EPS)).mean()), rel=1e-6)
    new_a, _ = _step(att_fn, z)
    assert float(new_a[0, 0]) > 0.5  # pulled towards the nearest samples (at x = 1..4)
    new_r, _ = _step(rep_fn, z, lr=10.0)
    assert float(new_r[0, 0]) < 0.5  # pushed away from the farthest (at x = 9..16)
    # the neighbours are chosen with the query, not with z
    q_far = torch.tensor([[20.0, 0.0]])
    att_q = inter_class_prior(z, q_far, samples, knn=128, kfarthest=512)[0]
    assert float(att_q) == pytest.approx(float(torch.log1p((z - samples[12:]).pow(2).sum(1)).mean()), rel=1e-6)
    assert float(inter_class_prior(z, query, samples[:3])[0]) == 0.0  # too few samples


def test_model_updates_bank_and_counter_in_training_only():
    torch.manual_seed(0)
    model = OpusDSD(16, 5.0, n_particles=20, zdim=2, channel_scale=0.0625, knn=4, kfarthest=8, n_samples=64)
    B = 5
    batch = {"y": torch.randn(B, 16, 16), "rot": torch.eye(3).repeat(B, 1, 1), "index": torch.arange(3, 3 + B),
             "view_class": torch.full((B,), 11)}
    model.eval()
    model(batch)
    assert not bool(model.bank.filled.any()) and int(model.images_seen) == 0
    mu0 = model.latent_means(batch)
    model.train()
    terms = model(batch)
    assert {"loss", "recon", "kl", "tv", "l1", "prior", "anneal"} <= set(terms)
    assert int(model.images_seen) == 0  # the bank is updated after the step (the engine's after_step hook)
    model.finish_step()
    assert int(model.images_seen) == B and bool(model.bank.filled[3:8].all())
    np.testing.assert_allclose(model.bank.codes[3:8].numpy(), mu0.numpy(), rtol=1e-5, atol=1e-6)
    assert model.bank.classes[3:8].tolist() == [11] * B
    terms["loss"].backward()
    assert model.encoder.mu.weight.grad is not None and model.decoder.fc[0].weight.grad is not None


def test_cyclic_weight_schedule():
    assert cyclic_weight(0, 100) == pytest.approx(0.001)
    assert cyclic_weight(50, 100) == pytest.approx(0.001 + 0.999 * 0.5)
    assert cyclic_weight(100, 100) == 1.0 and cyclic_weight(124, 100) == 1.0
    assert cyclic_weight(125, 100) == pytest.approx(0.001)  # next cycle
    assert cyclic_weight(175, 100) == pytest.approx(cyclic_weight(50, 100))
    assert cyclic_weight(10, 0) == 1.0


def test_best_epoch_selection():
    """The engine's rule applied to OPUS-DSD's column, val_recon."""
    from cryoscape.train.engine import select_best_epoch

    hist = [{"epoch": 1, "val_recon": 3.0}, {"epoch": 2, "val_recon": 1.0}, {"epoch": 3, "val_recon": 2.0},
            {"epoch": 4, "val_recon": 1.0}, {"epoch": 5, "val_recon": float("nan")}]
    assert select_best_epoch(hist, range(1, 6), "val_recon") == 4  # the latest of the tied minima
    assert select_best_epoch(hist, {1, 3, 5}, "val_recon") == 3  # only epochs with a checkpoint
    assert select_best_epoch(hist, {5}, "val_recon") is None
    assert select_best_epoch([{"epoch": 1, "train_recon": 1.0}], {1}, "val_recon") is None
