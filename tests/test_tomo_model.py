"""tomoDRGN model pieces: tilt pooling, tilt sampling, batched masked decoding, the loss and its KL scaling."""

import numpy as np
import pytest
import torch

from cryoscape.models.tomodrgn import TomoDRGN, pack_masked, pool_tilts, select_tilts, unpack_masked

D, APIX = 16, 6.0


def random_batch(B=3, T=6, counts=(6, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    model = TomoDRGN(D, APIX, ntilts=None, zdim=0)
    P = model.freqs.shape[0]
    mask = torch.arange(T)[None, :] < torch.tensor(counts)[:, None]
    rot = torch.linalg.qr(torch.randn(B, T, 3, 3, generator=g))[0]
    rot = rot * torch.sign(torch.det(rot))[..., None, None]
    ctf = torch.zeros(B, T, 9)
    ctf[..., 0] = ctf[..., 1] = 15000.0
    ctf[..., 3], ctf[..., 4], ctf[..., 5], ctf[..., 8] = 300.0, 2.7, 0.1, 1.0
    return {"index": torch.arange(B), "y": torch.randn(B, T, P, generator=g), "rot": rot, "ctf": ctf,
            "exposure": 3.0 * (torch.arange(T)[None, :].float() + 0.5).expand(B, T).clone(),
            "tilt_deg": torch.linspace(0, 50, T)[None, :].expand(B, T).clone(), "tilt_mask": mask,
            "tilt_key": torch.rand(B, T, generator=g)}


@pytest.mark.parametrize("pooling", ["max", "mean", "median"])
def test_symmetric_pooling_is_permutation_invariant_and_ignores_padding(pooling):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, 7, 5, generator=g)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1])[:, None]
    pooled = pool_tilts(h, mask, pooling)
    for b in range(4):
        real = h[b, mask[b]].numpy()
        ref = {"max": real.max(0), "mean": real.mean(0), "median": np.median(real, 0)}[pooling]
        np.testing.assert_allclose(pooled[b].numpy(), ref, rtol=1e-5, atol=1e-6)
    perm = torch.stack([torch.randperm(7, generator=g) for _ in range(4)])
    h_p = torch.gather(h, 1, perm[..., None].expand(-1, -1, 5))
    m_p = torch.gather(mask, 1, perm)
    torch.testing.assert_close(pool_tilts(h_p, m_p, pooling), pooled)
    garbage = h.masked_fill(~mask[..., None], 1e6)  # padding values do not matter
    torch.testing.assert_close(pool_tilts(garbage, mask, pooling), pooled)


def test_concatenate_pooling_keeps_order():
    h = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(pool_tilts(h, torch.ones(1, 3, dtype=torch.bool), "concatenate"), torch.arange(12.0)[None])


def test_random_tilt_subsets_without_replacement():
    batch = random_batch()
    torch.manual_seed(0)
    seen = []
    for _ in range(400):
        sel = select_tilts(batch, 4, random=True)
        assert sel["tilt_mask"].all()  # every particle has >= 4 tilts: only real ones chosen
        for b in range(3):
            keys = sel["tilt_key"][b]
            idx = [int((batch["tilt_key"][b] == k).nonzero()) for k in keys]
            assert len(set(idx)) == 4 and max(idx) < int(batch["tilt_mask"][b].sum())  # no repeats, no padding
            torch.testing.assert_close(sel["y"][b], batch["y"][b, idx])
            torch.testing.assert_close(sel["rot"][b], batch["rot"][b, idx])
            if b == 0:
                seen.append(tuple(idx))
    assert len(set(seen)) > 100  # a fresh subset (and order) each time
    counts = np.bincount(np.concatenate(seen), minlength=6) / len(seen)
    np.testing.assert_allclose(counts, 4 / 6, atol=0.08)  # each tilt equally likely
    fixed = [select_tilts(batch, 4, random=False)["tilt_key"] for _ in range(2)]
    assert torch.equal(fixed[0], fixed[1])  # evaluation subset is reproducible
    assert torch.equal(fixed[0][0], torch.sort(batch["tilt_key"][0])[0][:4])


def test_pack_unpack_round_trip():
    g = torch.Generator().manual_seed(2)
    values = torch.randn(3, 10, 2, generator=g)
    mask = torch.rand(3, 10, generator=g) > 0.4
    packed, slot, valid = pack_masked(values, mask)
    assert packed.shape == (3, int(mask.sum(1).max()), 2)
    for b in range(3):  # kept rows first, in order, then zeros
        n = int(mask[b].sum())
        torch.testing.assert_close(packed[b, :n], values[b, mask[b]])
        assert torch.all(packed[b, n:] == 0) and valid[b].sum() == n
    back = unpack_masked(packed, slot)
    torch.testing.assert_close(back, values * mask[..., None])


def test_masked_decoding_is_one_batched_call_and_matches_full_decoding():
    torch.manual_seed(0)
    batch = random_batch()
    model = TomoDRGN(D, APIX, ntilts=None, zdim=2, pooling="mean", enc_dim=16, enc_layers=1, tilt_embed_dim=8,
                     enc_dim_b=16, enc_layers_b=1, dec_dim=16, dec_layers=1)
    exposure = batch["exposure"] * 8  # high exposure: the mask removes many frequencies
    keep = model.decode_mask(exposure, batch["ctf"], batch["tilt_mask"])
    assert 0.2 < keep.float().mean() < 0.9
    z = torch.randn(3, 2)
    calls = []
    model.decoder.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    masked = model.render(batch["rot"], z, keep)
    full = model.render(batch["rot"], z, torch.ones_like(keep))
    kept_counts = keep.reshape(3, -1).sum(1)
    assert calls == [(3, int(kept_counts.max()), 3), (3, keep[0].numel(), 3)]
    m = keep.shape[-1] - 1
    pixel_keep = torch.cat([keep[..., :m], keep[..., :m], keep[..., m:]], -1)
    torch.testing.assert_close(masked, full * pixel_keep, atol=1e-5, rtol=1e-5)


def test_loss_matches_its_definition():
    torch.manual_seed(0)
    batch = random_batch()
    model = TomoDRGN(D, APIX, ntilts=4, zdim=3, pooling="concatenate", enc_dim=16, enc_layers=1, tilt_embed_dim=8,
                     enc_dim_b=16, enc_layers_b=1, dec_dim=16, dec_layers=1, beta=0.7).eval()
    terms = model(batch)
    sel = select_tilts(batch, 4, random=False)
    ctf = model.ctf_values(sel["ctf"])
    mu, logvar = model.encode(sel["y"], ctf, sel["tilt_mask"])
    keep = model.decode_mask(sel["exposure"], sel["ctf"], sel["tilt_mask"])
    pred = model.render(sel["rot"], mu, keep) * ctf
    m = keep.shape[-1] - 1
    scored = torch.cat([keep[..., :m], keep[..., :m], keep[..., m:]], -1).float()
    w = model.loss_weights(sel["exposure"], sel["tilt_deg"], sel["ctf"]) * scored
    recon = (w * (pred - sel["y"]) ** 2).sum() / w.sum()
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl.mean())
    torch.testing.assert_close(terms["loss"], recon + 0.7 * (kl / w.sum((1, 2))).mean())
    paper = TomoDRGN(D, APIX, ntilts=4, zdim=3, enc_dim=16, enc_layers=1, tilt_embed_dim=8, enc_dim_b=16,
                     enc_layers_b=1, dec_dim=16, dec_layers=1, beta=0.7, kl_norm="paper")
    paper.load_state_dict(model.state_dict())
    t2 = paper.eval()(batch)
    torch.testing.assert_close(t2["loss"], recon + 0.7 * (kl / (4 * D * D)).mean())


@pytest.mark.parametrize("pooling", ["concatenate", "max", "mean", "median"])
def test_training_step_with_unequal_tilt_counts(pooling):
    torch.manual_seed(0)
    batch = random_batch()
    model = TomoDRGN(D, APIX, ntilts=4 if pooling == "concatenate" else None, zdim=2, pooling=pooling, enc_dim=16,
                     enc_layers=1, tilt_embed_dim=8, enc_dim_b=16, enc_layers_b=1, dec_dim=16, dec_layers=1)
    terms = model.train()(batch)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert all(p.grad is not None for p in model.encoder_a.parameters())
    assert model.latent_means(batch).shape == (3, 2)
    torch.testing.assert_close(model.eval().latent_means(batch), model.latent_means(batch))


def test_concatenate_needs_enough_tilts():
    from cryoscape.errors import InputError

    model = TomoDRGN(D, APIX, ntilts=5, zdim=2, enc_dim=16, enc_layers=1, tilt_embed_dim=8, enc_dim_b=16,
                     enc_layers_b=1, dec_dim=16, dec_layers=1)
    with pytest.raises(InputError, match="fewer than the 5 tilts"):
        model(random_batch())


def test_volumes_in_batches_over_z():
    torch.manual_seed(0)
    model = TomoDRGN(D, APIX, ntilts=None, zdim=2, pooling="mean", enc_dim=16, enc_layers=1, tilt_embed_dim=8,
                     enc_dim_b=16, enc_layers_b=1, dec_dim=16, dec_layers=1).eval()
    z = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    vols = model.generate_volumes(z, batch_size=3)
    assert vols.shape == (3, D, D, D) and np.isfinite(vols).all()
    np.testing.assert_allclose(vols[1], model.generate_volume(torch.from_numpy(z[1])).numpy(), atol=1e-5, rtol=1e-4)
    assert np.abs(vols[0] - vols[2]).max() > 1e-6  # the latent matters
