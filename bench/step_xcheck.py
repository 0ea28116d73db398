"""One training step of cryoDRGN 4.3.1 and of cryoscape with the same weights, images and noise draw.

Issue 21 (bench/RESULTS.md section 9g): at D = 64 cryoscape learns slightly less per epoch than cryoDRGN in
epochs 2-5, and reading the two programs side by side found no difference. This script settles whether the
two compute the same step, in two halves run by the two environments:

    # 1. cryoDRGN's side (its own venv): its data pipeline, a freshly initialised HetOnlyVAE, one batch through
    #    its train_vae.preprocess_input / run_batch / loss_function with a fixed eps; writes weights, inputs,
    #    outputs and gradients
    bench/cryodrgn-venv/bin/python bench/step_xcheck.py cryodrgn --data bench/_work/i21/a3_D64 -o /tmp/xc.pt
    # 2. cryoscape's side: the same weights mapped into cryoscape's CryoDRGN, the same batch through cryoscape's
    #    data pipeline (with cryoDRGN's normalisation constant) and through cryoDRGN's prepared images; prints
    #    the relative differences of every stage
    .venv/bin/python bench/step_xcheck.py compare --data bench/_work/i21/a3_D64 --from /tmp/xc.pt \
        --lattice-index /tmp/lat.npy
    # 3. (optional) cryoDRGN's prepared images of the whole set, for `bench/recipe.py --variant cd_data`
    bench/cryodrgn-venv/bin/python bench/step_xcheck.py export --data bench/_work/i21/a3_D64 \
        --lattice-index /tmp/lat.npy -o bench/_work/i21/a3_D64_cd_images.npy

The comparison is on the pixels both programs use: cryoscape's circle ``|k| < D/2``. cryoDRGN's circle is
``|k| <= D/2``; its four extra pixels on the axes at ``|k| = D/2`` are taken out of its loss here (its encoder's
weights for them are set to zero), so that both sides compute the same function. Everything else is each
program's own code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _cryodrgn_inputs(data_dir: Path):
    """cryoDRGN's in-memory ImageDataset (its window and normalisation), PoseTracker and Lattice of a data set."""
    from cryodrgn import dataset
    from cryodrgn.lattice import Lattice
    from cryodrgn.pose import PoseTracker

    data = dataset.ImageDataset(mrcfile=str(data_dir / "particles.mrcs"), lazy=False, window=True, window_r=0.85,
                                max_threads=1)
    poses = PoseTracker.load(str(data_dir / "pose.pkl"), data.N, data.D, None, None)
    return data, poses, Lattice(data.D, extent=0.5)


def cryodrgn_side(a) -> int:
    import torch
    from cryodrgn import ctf
    from cryodrgn.commands import train_vae as tv
    from cryodrgn.models import HetOnlyVAE
    from torch import nn

    data_dir = Path(a.data)
    torch.manual_seed(a.seed)
    data, poses, lattice = _cryodrgn_inputs(data_dir)
    D = data.D  # D + 1 after symmetrisation
    ctf_params = torch.tensor(ctf.load_ctf_for_training(D - 1, str(data_dir / "ctf.pkl")))
    enc_mask = lattice.get_circular_mask(D // 2)
    model = HetOnlyVAE(lattice, a.layers, a.width, a.layers, a.width, int(enc_mask.sum()), a.zdim,
                       encode_mode="resid", enc_mask=enc_mask, enc_type="gaussian", enc_dim=None,
                       domain="fourier", activation=nn.ReLU, feat_sigma=0.5)
    # the pixels cryoscape uses: |k| < D/2 strictly (k in pixels of the D - 1 box)
    k_px = lattice.coords[:, :2] * (D - 1)
    strict = (k_px.pow(2).sum(-1) < ((D - 1) / 2) ** 2 - 1e-3)
    with torch.no_grad():  # the encoder's extra pixels (|k| = D/2) get no weight
        first = model.encoder.main[0]
        first_w = first.linear.weight if hasattr(first, "linear") else first.weight
        first_w[:, ~strict[enc_mask]] = 0.0
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    ind = np.arange(a.index0, a.index0 + a.batch)
    y = data[ind]["y"]
    rot, trans = poses.get_pose(torch.from_numpy(ind))
    eps = torch.randn(a.batch, a.zdim, generator=torch.Generator().manual_seed(a.seed + 1))
    model.reparameterize = lambda mu, logvar: mu + eps * torch.exp(0.5 * logvar)
    model.train()
    y_centred = tv.preprocess_input(y, lattice, trans)
    # PoseTracker.load multiplies the pickled translations (fractions of the box) by the symmetrised lattice size
    # D + 1, not by the box D: cryoDRGN centres each image by (D + 1)/D of its shift. The same images centred by
    # the shift itself, to tell that apart from the other differences of the two pipelines:
    y_centred_exact = tv.preprocess_input(y, lattice, trans * (D - 1) / D)
    z_mu, z_logvar, z, y_recon, mask = tv.run_batch(model, lattice, y_centred, rot, None, ctf_params[ind])
    # the loss on the common pixels (cryoDRGN's loss_function over its whole mask, restricted)
    common = strict[mask]
    target = y_centred.view(a.batch, -1)[:, mask][:, common]
    gen_loss = torch.mean((y_recon[:, common] - target) ** 2)
    kld = torch.mean(-0.5 * torch.sum(1 + z_logvar - z_mu.pow(2) - z_logvar.exp(), dim=1), dim=0)
    loss = gen_loss + (1.0 / a.zdim) * kld / common.sum().float()
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    B = a.batch
    freqs = lattice.freqs2d.unsqueeze(0).expand(B, *lattice.freqs2d.shape) / ctf_params[ind, 0].view(B, 1, 1)
    c = ctf.compute_ctf(freqs, *torch.split(ctf_params[ind, 1:], 1, 1)).view(B, -1)
    torch.save({"weights": weights, "grads": grads, "index": torch.from_numpy(ind), "eps": eps,
                "norm": torch.tensor(data.norm[1]), "y_centred": y_centred.view(B, -1),
                "y_centred_exact": y_centred_exact.view(B, -1), "ctf": c,
                "coords": lattice.coords[:, :2].clone(), "mask": mask, "strict": strict, "z_mu": z_mu.detach(),
                "z_logvar": z_logvar.detach(), "y_recon": y_recon.detach(), "gen_loss": gen_loss.detach(),
                "kld": kld.detach(), "loss": loss.detach(), "D": torch.tensor(D - 1), "zdim": torch.tensor(a.zdim),
                "width": torch.tensor(a.width), "layers": torch.tensor(a.layers)}, a.out)
    print(f"cryoDRGN: loss {loss.item():.6f} gen {gen_loss.item():.6f} kld {kld.item():.4f} -> {a.out}")
    return 0


def export_side(a) -> int:
    """cryoDRGN's prepared training images of a whole data set (centred as its train_vae centres them,
    normalised by its constant) in cryoscape's pixel order, DC set to 0 (cryoDRGN does not use it): the input of
    ``bench/recipe.py --variant cd_data``, which trains cryoscape on exactly the images cryoDRGN trains on."""
    import torch
    from cryodrgn.commands import train_vae as tv

    data, poses, lattice = _cryodrgn_inputs(Path(a.data))
    lat = torch.from_numpy(np.load(a.lattice_index))  # cryoscape pixel -> lattice index (-1: DC), from `compare`
    out = np.empty((data.N, len(lat)), dtype=np.float32)
    for start in range(0, data.N, 500):
        ind = np.arange(start, min(start + 500, data.N))
        rot, trans = poses.get_pose(torch.from_numpy(ind))
        y = tv.preprocess_input(data[ind]["y"], lattice, trans).reshape(len(ind), -1)
        rows = y[:, lat.clamp_min(0)]
        rows[:, lat < 0] = 0.0
        out[ind] = rows.numpy()
    np.save(a.out, out)
    print(f"cryoDRGN's prepared images {out.shape} (norm {data.norm[1]:.2f}) -> {a.out}")
    return 0


def _rel(a, b) -> float:
    """Relative difference ``|a - b| / |b|`` (Frobenius)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a.detach() - b.detach()).norm() / b.norm().clamp_min(1e-30))


def compare_side(a) -> int:
    from dataclasses import replace as dataclass_replace

    import torch

    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.data.particle_data import SliceParticleData
    from cryoscape.io.particles import load_particles
    from cryoscape.models import cryodrgn as cd_module
    from cryoscape.models.cryodrgn import CryoDRGN

    ref = torch.load(a.from_, weights_only=True)
    D, zdim = int(ref["D"]), int(ref["zdim"])
    width, layers = int(ref["width"]), int(ref["layers"])
    B = len(ref["index"])
    pixels = FourierPixels.create(D)
    # cryoscape pixel -> cryoDRGN lattice index ((D+1) x (D+1) raster, x fastest) and -> position in its mask
    kx = torch.round(pixels.freqs[:, 0] * D).long() + D // 2
    ky = torch.round(pixels.freqs[:, 1] * D).long() + D // 2
    lat = ky * (D + 1) + kx
    pos_in_mask = torch.full(((D + 1) ** 2,), -1, dtype=torch.long)
    pos_in_mask[ref["mask"]] = torch.arange(int(ref["mask"].sum()))
    to_cd = pos_in_mask[lat]
    dc = pixels.n_pixels - 1  # cryoscape's DC pixel (last): cryoDRGN's lattice leaves it out (ignore_DC)
    assert (to_cd[:dc] >= 0).all() and to_cd[dc] == -1, "pixel mapping: sets differ by more than the DC pixel"
    coords = ref["coords"][lat]
    assert torch.allclose(coords, pixels.freqs, atol=1e-6), "pixel mapping: frequencies differ"
    if a.lattice_index:  # for the cryodrgn side's `export`
        np.save(a.lattice_index, torch.where(to_cd >= 0, lat, -1).numpy())

    # the model with cryoDRGN's weights
    model = CryoDRGN(D, 1.0, zdim=zdim, enc_dim=width, enc_layers=layers, dec_dim=width, dec_layers=layers,
                     pe_type="gaussian", feat_sigma=0.5, norm_std=float(ref["norm"]))
    w = ref["weights"]
    sd = model.state_dict()
    new = {}
    enc_keys = sorted([k for k in w if k.startswith("encoder.")], key=_layer_order)
    enc_lin = [k for k in enc_keys if k.endswith("weight")]
    cs_enc = sorted([k for k in sd if k.startswith("encoder.net.") and k.endswith("weight")], key=_layer_order)
    assert len(enc_lin) == len(cs_enc), (enc_lin, cs_enc)
    for kd, ks in zip(enc_lin, cs_enc, strict=True):
        W = w[kd]
        if kd == enc_lin[0]:  # cryoDRGN's mask order -> cryoscape's pixel order; no weight on the DC pixel
            W = torch.cat([W[:, to_cd[:dc]], W.new_zeros(W.shape[0], 1)], dim=1)
        new[ks] = W
        new[ks.replace("weight", "bias")] = w[kd.replace("weight", "bias")]
    dec_lin = sorted([k for k in w if k.startswith("decoder.") and k.endswith("weight")], key=_layer_order)
    W0 = w[dec_lin[0]]
    n_pe = W0.shape[1] - zdim
    new["decoder.input_coords.weight"] = W0[:, :n_pe]
    new["decoder.input_coords.bias"] = w[dec_lin[0].replace("weight", "bias")]
    new["decoder.input_latent.weight"] = W0[:, n_pe:]
    cs_body = sorted([k for k in sd if k.startswith("decoder.body.") and k.endswith("weight")], key=_layer_order)
    assert len(cs_body) == len(dec_lin) - 1, (cs_body, dec_lin)
    for kd, ks in zip(dec_lin[1:], cs_body, strict=True):
        new[ks] = w[kd]
        new[ks.replace("weight", "bias")] = w[kd.replace("weight", "bias")]
    rand = next(v for k, v in w.items() if k.endswith("rand_freqs"))
    new["decoder.encoding.freqs"] = (rand * (D // 2)).T.contiguous()
    missing = [k for k in sd if k not in new and k not in ("pixel_size_angstrom", "norm_std")]
    assert not missing, missing
    model.load_state_dict({**sd, **new})

    # cryoscape's own data pipeline, with cryoDRGN's normalisation constant
    particles = load_particles(Path(a.data) / "particles.star")
    model.pixel_size_angstrom.fill_(particles.pixel_size_angstrom)
    prepared = SliceParticleData(particles, pixels, norm_std=float(ref["norm"]), progress=False)
    batch = prepared.batch(ref["index"].numpy())
    y_cd = ref["y_centred"][:, lat].float()  # with cryoDRGN's DC value, which it does not use
    print(f"DC pixel: cryoscape's prepared images {batch.y[:, dc].mean():.3f} +- {batch.y[:, dc].std():.3f}, "
          f"other pixels' std {batch.y[:, :dc].std():.3f}")
    ctf_cs = model.ctf_values(batch.ctf)
    print(f"D = {D}, batch {B}, {pixels.n_pixels} common pixels")
    print(f"images  (cryoscape pipeline vs cryoDRGN's, centred, normalised, without DC): "
          f"rel. diff {_rel(batch.y[:, :dc], y_cd[:, :dc]):.2e}")
    r = _radial_rel(batch.y, y_cd, pixels.freqs, D)
    print("   by |k| band (px): " + ", ".join(f"{lo}-{hi}: {v:.1e}" for lo, hi, v in r))
    y_exact = ref["y_centred_exact"][:, lat].float()
    r = _radial_rel(batch.y, y_exact, pixels.freqs, D)
    bands = ", ".join(f"{lo}-{hi}: {v:.1e}" for lo, hi, v in r)
    print(f"   cryoDRGN's images centred by the shift itself (not (D+1)/D of it): rel. diff "
          f"{_rel(batch.y[:, :dc], y_exact[:, :dc]):.2e}; by band: {bands}")
    ctf_cd = ref["ctf"][:, lat].float()
    print(f"CTF     (cryoscape vs cryoDRGN): rel. diff {_rel(ctf_cs, ctf_cd):.2e}; "
          f"cryoscape vs -cryoDRGN: {_rel(ctf_cs, -ctf_cd):.2e}")

    # cryoDRGN's CTF is the negative of cryoscape's (RELION's sign; docs/conventions.md): on these images
    # cryoDRGN learns the negated map, with the encoder's input negated too. The model comparison therefore gives
    # cryoscape's model cryoDRGN's CTF values, so both compute the same function.
    model.ctf_values = lambda ctf: ctf_cd
    ctf_cs = ctf_cd
    eps = ref["eps"]
    cd_module.reparameterize = lambda mu, logvar, training: mu + eps * torch.exp(0.5 * logvar)
    model.train()

    def step(y):
        model.zero_grad()
        mu, logvar = model.encode(y, ctf_cs)
        terms = model(dataclass_replace(batch, y=y))
        terms["loss"].backward()
        return mu, logvar, terms, {k: p.grad.detach().clone() for k, p in model.named_parameters()}


    y_cd_no_dc = y_cd.clone()
    y_cd_no_dc[:, dc] = 0.0
    for label, y in (("cryoDRGN's images", y_cd), ("cryoDRGN's images, DC pixel set to 0", y_cd_no_dc),
                     ("cryoscape's images", batch.y)):
        mu, logvar, terms, grads = step(y)
        print(f"-- cryoscape's model on {label}")
        print(f"   z_mu rel. diff {_rel(mu, ref['z_mu']):.2e}, z_logvar {_rel(logvar, ref['z_logvar']):.2e}")
        print(f"   loss {terms['loss'].item():.6f} (cryoDRGN {ref['loss'].item():.6f}), "
              f"recon {terms['recon'].item():.6f} ({ref['gen_loss'].item():.6f}), "
              f"kl {terms['kl'].item():.4f} ({ref['kld'].item():.4f})")
        gd = ref["grads"]
        pairs = [("encoder first layer", grads[cs_enc[0]], gd[enc_lin[0]][:, to_cd]),
                 ("encoder last layer", grads[cs_enc[-1]], gd[enc_lin[-1]]),
                 ("decoder coords layer", grads["decoder.input_coords.weight"], gd[dec_lin[0]][:, :n_pe]),
                 ("decoder latent layer", grads["decoder.input_latent.weight"], gd[dec_lin[0]][:, n_pe:]),
                 ("decoder last layer", grads[cs_body[-1]], gd[dec_lin[-1]])]
        for name, g, gref in pairs:
            print(f"   grad {name}: rel. diff {_rel(g, gref):.2e}")
    return 0


def _radial_rel(a, b, freqs, D):
    r = freqs.norm(dim=1) * D
    out = []
    for lo, hi in ((0, 8), (8, 16), (16, 24), (24, 28), (28, 32)):
        sel = (r >= lo) & (r < hi)
        out.append((lo, hi, _rel(a[:, sel], b[:, sel])))
    return out


def _layer_order(key: str):
    """Sort state-dict keys by their numeric path (``main.10`` after ``main.2``)."""
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cryodrgn", help="cryoDRGN's half (run with bench/cryodrgn-venv/bin/python)")
    c.add_argument("--data", required=True, help="a folder of bench/atomic_states.py")
    c.add_argument("-o", "--out", required=True)
    c.add_argument("--batch", type=int, default=32)
    c.add_argument("--index0", type=int, default=0, help="first particle of the batch")
    c.add_argument("--zdim", type=int, default=8)
    c.add_argument("--width", type=int, default=128)
    c.add_argument("--layers", type=int, default=3)
    c.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("compare", help="cryoscape's half and the comparison")
    k.add_argument("--data", required=True)
    k.add_argument("--from", dest="from_", required=True, help="the file the cryodrgn half wrote")
    k.add_argument("--lattice-index", help="also write cryoscape's pixel -> cryoDRGN lattice index (.npy)")
    e = sub.add_parser("export", help="cryoDRGN's prepared images in cryoscape's pixel order (cryoDRGN's venv)")
    e.add_argument("--data", required=True)
    e.add_argument("--lattice-index", required=True, help="the .npy `compare --lattice-index` wrote")
    e.add_argument("-o", "--out", required=True, help=".npy (N, pixels) float32")
    a = p.parse_args(argv)
    return {"cryodrgn": cryodrgn_side, "compare": compare_side, "export": export_side}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
