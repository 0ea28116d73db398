"""The OPUS-DSD family: a 3-D convolutional VAE rendered in real space, with a structural-disentanglement prior.

Implements Luo et al., Nature Methods 20, 1729-1738 (2023), doi:10.1038/s41592-023-02031-6 (see ``docs/opus-dsd.md``
and ``docs/references.md``):

* encoder: the centred image, contrast/brightness-jittered while training, repeated along z, rotated into the
  consensus frame by the inverse pose, masked and reduced by 3-D convolutions to ``q(z|X)``
  (``models.opus_networks``);
* decoder: ``z`` -> ``templateres^3`` volume (transposed 3-D convolutions), Fourier-resampled to the image box
  ``D^3`` and multiplied by the solvent mask;
* rendering: ``project_real`` (spatial transformer, sum along z) at the particle's pose, CTF in Fourier space
  (``CTF^2`` for CTF-premultiplied images, ``rlnCtfDataAreCtfPremultiplied 1``, which the encoder sees as they are
  and whose residual is whitened, its spectrum multiplied by ``(CTF^2 + eps)^(-1/2)``,
  :func:`cryoscape.imaging.ctf.premultiplied_weights`, before the masked squared error);
  the observed image is centred by its origin in the data provider (``docs/conventions.md``);
* loss, summed-likelihood form divided by the number ``M`` of pixels inside the projected mask:
  ``recon + (beta_c * kl_weight * KL + tv_weight * TV + l1_weight * L1 + beta_c * lamb * J) / M`` with ``recon`` the
  mean squared error per pixel inside the projected mask, ``J`` the structural-disentanglement prior
  (``models.opus_prior``, training only) and ``beta_c`` the cyclical annealing weight.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoscape.imaging.ctf import ctf_image, premultiplied_weights
from cryoscape.imaging.fft import fft2_centered, ifft2_centered, resample_volume
from cryoscape.imaging.masks import sphere_mask
from cryoscape.imaging.projection import project_real
from cryoscape.models.family import FamilyModel, ModelFamily
from cryoscape.models.opus_networks import ConvDecoder, ConvEncoder, pseudo_volumes
from cryoscape.models.opus_prior import (
    INTER_REPULSION_WEIGHT,
    MemoryBank,
    cyclic_weight,
    inter_class_prior,
    intra_class_prior,
    l1_norm,
    total_variation,
)
from cryoscape.models.vae import gaussian_kl, reparameterize, volumes_in_batches

__all__ = ["OpusDSD", "default_templateres", "kl_divergence_logstd", "render_images"]

MASK_RADIUS_FRAC = 0.85  # default spherical solvent mask: radius 0.85 * D/2 (the reference's default window)


def default_templateres(D: int) -> int:
    """Decoder output size for images of ``D`` pixels: ``D`` rounded up to a multiple of 16, at least 32."""
    return max(32, 16 * -(-int(D) // 16))


def kl_divergence_logstd(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logstd)^2) || N(0, I))`` per row, ``(B,)``, for ``mu``, ``logstd`` ``(B, zdim)``
    (:func:`cryoscape.models.vae.gaussian_kl` with ``logvar = 2 logstd``).
    """
    return gaussian_kl(mu, 2.0 * logstd)


def render_images(volumes: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor | None,
                  pixel_size_angstrom: float, ctf_premultiplied: bool = False) -> torch.Tensor:
    """Real-space projections ``(B, D, D)`` of ``volumes`` ``(B, D, D, D)`` at RELION poses ``(B, 3, 3)``,
    multiplied by the CTF (:class:`CTFTensors` ``(B,)``, ``None``: no CTF) in Fourier space, or by ``CTF^2`` for
    CTF-premultiplied images.
    """
    proj = project_real(volumes, rotations)
    if ctf is None:
        return proj
    D = proj.shape[-1]
    values = ctf_image(D, pixel_size_angstrom, ctf.to(proj.dtype))
    if ctf_premultiplied:
        values = values * values
    return ifft2_centered(fft2_centered(proj) * values).real


class OpusDSD(FamilyModel):
    """OPUS-DSD VAE.

    Parameters
    ----------
    D : image box size (even, >= 8); volumes are generated at ``D^3``.
    pixel_size_angstrom : of the training images.
    n_particles : size of the memory bank (particles in the training data set).
    zdim : latent dimension (>= 1).
    templateres : decoder output size (multiple of 16; ``None``: :func:`default_templateres`).
    channel_scale : multiplies every channel count of the paper's networks.
    mask : ``(D, D, D)`` solvent mask in ``[0, 1]``; ``None``: a sphere of radius ``0.85 * D/2``.
    kl_weight, lamb, tv_weight, l1_weight : loss weights (see the module docstring).
    knn, kfarthest, n_samples : inter-class neighbours, far points and bank samples per batch.
    knn_intra : nearest neighbours attracted within a batch.
    momentum : memory-bank momentum.
    anneal_images : images per ramp of the cyclical annealing of ``kl_weight`` and ``lamb`` (0: no annealing).
    norm_std : data normalisation (generated volumes are multiplied by it).
    ctf_premultiplied : the images are CTF-premultiplied (projections multiplied by ``CTF^2``, residual whitened).
    """

    # registered buffers (declared for type checkers: nn.Module attribute access is untyped)
    volume_mask: torch.Tensor
    pixel_size_angstrom: torch.Tensor
    norm_std: torch.Tensor
    images_seen: torch.Tensor
    snr_ema: torch.Tensor

    family = "opus-dsd"

    def __init__(self, D: int, pixel_size_angstrom: float, n_particles: int, zdim: int = 8,
                 templateres: int | None = None, channel_scale: float = 1.0, mask: torch.Tensor | None = None,
                 kl_weight: float = 0.01, lamb: float = 0.5, tv_weight: float = 1.0, l1_weight: float = 0.3,
                 knn: int = 128, kfarthest: int = 512, n_samples: int = 12800, knn_intra: int = 4,
                 momentum: float = 0.7, anneal_images: float = 100_000, norm_std: float = 1.0,
                 ctf_premultiplied: bool = False):
        super().__init__()
        if zdim < 1:
            raise ValueError("OPUS-DSD needs zdim >= 1")
        self.ctf_premultiplied = bool(ctf_premultiplied)
        self.D, self.zdim = int(D), int(zdim)
        self.templateres = int(templateres) if templateres else default_templateres(D)
        self.kl_weight, self.lamb, self.tv_weight, self.l1_weight = kl_weight, lamb, tv_weight, l1_weight
        self.knn, self.kfarthest, self.n_samples, self.knn_intra = knn, kfarthest, n_samples, knn_intra
        self.anneal_images = float(anneal_images)
        self.encoder = ConvEncoder(zdim, channel_scale)
        self.decoder = ConvDecoder(zdim, self.templateres, channel_scale)
        self.bank = MemoryBank(n_particles, zdim, momentum)
        self._sphere_mask = mask is None  # its projection is the same disc at every pose (see loss_mask)
        self._disc: torch.Tensor | None = None
        if mask is None:
            mask = sphere_mask(D, MASK_RADIUS_FRAC * D / 2).float()
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.shape != (D, D, D):
            raise ValueError(f"mask must be ({D}, {D}, {D}), got {tuple(mask.shape)}")
        self.register_buffer("volume_mask", mask.clamp(0.0, 1.0))
        self.register_buffer("pixel_size_angstrom", torch.tensor(float(pixel_size_angstrom)))
        self.register_buffer("norm_std", torch.tensor(float(norm_std)))
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("snr_ema", torch.zeros(()))
        self._pending: tuple[torch.Tensor, ...] | None = None  # the last training step's codes, for finish_step

    # -- the forward model ---------------------------------------------------------------------------------
    def augment(self, y: torch.Tensor) -> torch.Tensor:
        """Random contrast and brightness of encoder inputs ``(B, D, D)``, scaled by the running SNR estimate:
        ``y * (1 + 0.3 s (u - 0.5)) + 0.2 s n`` with ``s = sqrt(min(snr, 1))``, ``u ~ U(0, 1)``, ``n ~ N(0, 1)``
        per image.
        """
        s = torch.sqrt(self.snr_ema.clamp(0.0, 1.0)).to(y.dtype)
        B = y.shape[0]
        u = torch.rand(B, 1, 1, device=y.device, dtype=y.dtype)
        n = torch.randn(B, 1, 1, device=y.device, dtype=y.dtype)
        return y * (1.0 + 0.3 * s * (u - 0.5)) + 0.2 * s * n

    def encode(self, y: torch.Tensor, rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centred images ``(B, D, D)`` and poses ``(B, 3, 3)`` -> ``(mu, logstd)``, each ``(B, zdim)``.

        The pseudo-volume ``P(x, y, z) = image(x, y)`` is carried into the volume frame, ``W(r) = P(A r)``, and
        multiplied by the solvent mask before the convolutions.
        """
        mu, logstd = self.encoder(pseudo_volumes(y, rotations) * self.volume_mask)
        return mu.float(), logstd.float()

    def volumes(self, z: torch.Tensor) -> torch.Tensor:
        """Masked volumes ``(B, D, D, D)`` (normalised units) for latents ``(B, zdim)``."""
        v = self.decoder(z).float()  # FFTs below need float32 under --amp
        if v.shape[-1] != self.D:
            v = resample_volume(v, self.D)
        return v * self.volume_mask

    @torch.no_grad()
    def loss_mask(self, rotations: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, D, D)`` (0/1) inside the projection of the solvent mask at each pose.

        The default mask, a sphere about the box centre, projects to the same disc at every pose; that disc is
        projected once, at the identity pose, and reused (projecting it at each pose costs a full trilinear
        resampling of ``B`` boxes and only adds interpolation noise at the rim).
        """
        inside = (self.volume_mask > 0.5).to(self.volume_mask.dtype)
        B = rotations.shape[0]
        if not self._sphere_mask:
            return (project_real(inside, rotations) > 0.5).to(inside.dtype)
        if self._disc is None or self._disc.device != inside.device:
            identity = torch.eye(3, device=inside.device, dtype=inside.dtype)[None]
            self._disc = (project_real(inside, identity) > 0.5).to(inside.dtype)[0]
        return self._disc.expand(B, self.D, self.D)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss and its terms (``recon``, ``kl``, ``tv``, ``l1``, and ``prior``, ``anneal`` while training)."""
        dev = self.volume_mask.device
        y, rot = batch["y"].to(dev), batch["rot"].to(dev)
        ctf = batch["ctf"].to(dev) if "ctf" in batch else None
        mu, logstd = self.encode(self.augment(y) if self.training else y, rot)
        z = reparameterize(mu, 2.0 * logstd, self.training)
        vol = self.volumes(z)
        pred = render_images(vol, rot, ctf, float(self.pixel_size_angstrom), self.ctf_premultiplied)
        mask2d = self.loss_mask(rot)
        n_pix = mask2d.sum(dim=(1, 2)).clamp(min=1.0)
        err = (pred - y) ** 2 * mask2d
        if ctf is not None and self.ctf_premultiplied:  # the likelihood of CTF x noise (recon only; SNR: err)
            weights = premultiplied_weights(ctf_image(self.D, float(self.pixel_size_angstrom), ctf.to(y.dtype)))
            white = ifft2_centered(fft2_centered(pred - y) * torch.sqrt(weights)).real
            recon = ((white**2 * mask2d).sum(dim=(1, 2)) / n_pix).mean()
        else:
            recon = (err.sum(dim=(1, 2)) / n_pix).mean()
        M = n_pix.mean()
        kl = kl_divergence_logstd(mu, logstd).mean()
        inside = self.volume_mask > 0
        tv = total_variation(vol, inside).mean()
        l1 = l1_norm(vol, inside).mean()
        beta_c = cyclic_weight(float(self.images_seen), self.anneal_images)
        loss = recon + (beta_c * self.kl_weight * kl + self.tv_weight * tv + self.l1_weight * l1) / M
        terms = {"recon": recon, "kl": kl, "tv": tv, "l1": l1}
        if self.training:
            index = batch["index"].to(dev)
            classes = batch["view_class"].to(dev)
            prior = self.disentanglement_prior(mu, index, classes)
            loss = loss + beta_c * self.lamb * prior / M
            terms["prior"] = prior
            terms["anneal"] = torch.tensor(beta_c)
            # applied by finish_step after the optimizer step (the engine gathers the codes of every process)
            self._pending = (index, mu.detach().float(), classes, (pred.detach() ** 2 * mask2d).sum(),
                             err.detach().sum())
        terms["loss"] = loss
        return terms

    def disentanglement_prior(self, mu: torch.Tensor, index: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Intra-class attraction/repulsion within the batch plus inter-class attraction/repulsion against the
        memory bank (codes of the batch's classes excluded); scalar.
        """
        att, rep = intra_class_prior(mu, self.knn_intra)
        samples = self.bank.sample_other_classes(torch.unique(classes), self.n_samples)
        query = self.bank.lookup(index, mu)
        c_att, c_rep = inter_class_prior(mu, query, samples, self.knn, self.kfarthest)
        return att + rep + c_att + INTER_REPULSION_WEIGHT * c_rep

    @torch.no_grad()
    def finish_step(self, gather_rows=None) -> None:
        """After a training step: update the memory bank with the step's codes (of every process:
        ``gather_rows(*tensors)`` concatenates rows over the processes; ``None``: this process only), the image
        counter and the SNR estimate. Nothing if no training step ran since the last call.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        index, mu, classes, signal_power, error_power = pending
        if gather_rows is not None:
            index, mu, classes = gather_rows(index, mu, classes)
        self.bank.update(index, mu, classes)
        self.images_seen += index.shape[0]
        snr = (signal_power / error_power.clamp(min=1e-12)).to(self.snr_ema.dtype)
        self.snr_ema.mul_(0.9).add_(0.1 * snr)

    @torch.no_grad()
    def latent_means(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Posterior means ``(B, zdim)`` of a batch (no augmentation)."""
        dev = self.volume_mask.device
        return self.encode(batch["y"].to(dev), batch["rot"].to(dev))[0]

    # -- volumes ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_volumes(self, z: np.ndarray, batch_size: int = 1) -> np.ndarray:
        """Volumes ``(n, D, D, D)`` float32 at latents ``z`` ``(n, zdim)``, in the units of the input images."""
        dev = self.volume_mask.device
        return volumes_in_batches(z, self.zdim, batch_size, lambda zb: self.volumes(zb.to(dev)) * self.norm_std,
                                  self.D)


# -- family hooks: mask file, channel widths -------------------------------------------------------------------
def load_volume_mask(path, D: int) -> torch.Tensor:
    """A solvent mask MRC as a ``(D, D, D)`` float32 tensor in ``[0, 1]`` (trilinear resampling if its box differs;
    the mask is assumed to span the same physical box as the images).
    """
    import torch.nn.functional as nnf

    from cryoscape.errors import InputError
    from cryoscape.io.mrc import read_mrc

    data, _ = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"the mask must be a cubic 3-D map, got shape {data.shape}", path)
    if not np.all(np.isfinite(data)) or data.max() <= 0:
        raise InputError("the mask has no positive voxels (or contains NaN/Inf)", path)
    m = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if m.shape[-1] != D:
        m = nnf.interpolate(m[None, None], size=(D, D, D), mode="trilinear", align_corners=False)[0, 0]
    return m.clamp(0.0, 1.0)


CPU_CHANNEL_SCALE = 0.25  # default --channel-scale on a CPU (docs/opus-dsd.md: the paper's widths need a GPU)


def resolve_channel_scale(channel_scale: float | None, device=None) -> float:
    """``channel_scale`` if given; else 1.0 (the paper's widths) on a CUDA device and :data:`CPU_CHANNEL_SCALE`
    on a CPU (``device`` ``None``: CUDA if available).
    """
    if channel_scale is not None:
        return float(channel_scale)
    if device is None:
        cuda = torch.cuda.is_available()
    else:
        cuda = torch.device(device).type == "cuda"
    return 1.0 if cuda else CPU_CHANNEL_SCALE


class OpusDSDFamily(ModelFamily):
    """OPUS-DSD: real-space images, 3-D conv VAE, HEALPix class batches.

    ``RUN/best_epoch`` (written by the engine) is chosen by ``val_recon``, the validation reconstruction error:
    the total loss carries the cyclically annealed KL and prior weights, so it is not comparable across epochs.
    """

    name = "opus-dsd"
    selection_metric = "val_recon"

    default_batch_size = 72  # the paper's batch size
    # 3e-4, not the paper's 1e-4 (tuned on 64,000 particles): measured best at 2,000 and 8,000 particles, where 1e-4
    # learnt the states weakly or not at all at 2,000 and 1e-3 lost them at 8,000; 3e-3 diverged (RESULTS.md 9i)
    default_lr = 3e-4  # decayed by --lr-decay per epoch
    default_val_frac = 0.1  # OPUS-DSD holds images out too (its default 0.2); RUN/best_epoch by val_recon
    data_state = ("pixel_size_angstrom", "norm_std", "images_seen", "snr_ema", "volume_mask", "bank.codes",
                  "bank.classes")

    def resolve_defaults(self, config, device):
        """The config with device-dependent defaults filled in (``channel_scale`` None: 1 on CUDA, 0.25 on a
        CPU), logged; ``config.yaml`` records the resolved value.
        """
        import dataclasses
        import logging

        m = config.model
        if m.channel_scale is not None:
            return config
        scale = resolve_channel_scale(None, device)
        logging.getLogger("cryoscape").info(
            f"opus-dsd: --channel-scale {scale:g} on {torch.device(device).type}"
            + ("" if scale == 1.0 else " (the paper's widths, --channel-scale 1, are slow on a CPU: 16x the "
               "parameters, 15-30x the time per batch; see docs/opus-dsd.md)"))
        return dataclasses.replace(config, model=dataclasses.replace(m, channel_scale=scale))

    def make_data(self, particles, config, norm_std=None, progress=True):
        from cryoscape.data.image_data import ImageParticleData

        d = config.data
        return ImageParticleData(particles, invert=d.invert_data, window=d.window, window_inner=d.window_inner,
                                 lazy=d.lazy, norm_std=norm_std, progress=progress)

    def build_info(self, data) -> dict:
        return {"D": int(data.D), "pixel_size_angstrom": float(data.pixel_size_angstrom),
                "norm_std": float(data.norm_std), "n_particles": int(len(data)),
                "ctf_premultiplied": bool(data.ctf_premultiplied)}

    def build_model(self, config, build: dict) -> OpusDSD:
        from pathlib import Path

        from cryoscape.errors import InputError

        m, t = config.model, config.train
        D = int(build["D"])
        if m.zdim < 1:
            raise InputError("--model opus-dsd needs --zdim >= 1 (it is a VAE)")
        if D < 8:
            raise InputError(f"--model opus-dsd needs images of at least 8 pixels, got {D}")
        # a missing mask file is checked when training starts; here (e.g. loading a finished run) the mask is
        # restored from the checkpoint, so a placeholder sphere is fine
        mask = load_volume_mask(m.mask, D) if m.mask and Path(m.mask).is_file() else None
        return OpusDSD(D=D, pixel_size_angstrom=float(build["pixel_size_angstrom"]),
                       n_particles=int(build["n_particles"]), zdim=m.zdim, templateres=m.templateres,
                       channel_scale=resolve_channel_scale(m.channel_scale), mask=mask,
                       kl_weight=0.01 if t.beta is None else float(t.beta), lamb=m.lamb, tv_weight=m.tv_weight,
                       l1_weight=m.l1_weight, knn=m.knn, kfarthest=m.kfarthest, n_samples=m.n_samples,
                       knn_intra=m.knn_intra, momentum=m.momentum, anneal_images=m.anneal_images,
                       norm_std=float(build["norm_std"]),
                       ctf_premultiplied=bool(build.get("ctf_premultiplied", False)))

    def make_optimizer(self, model, config):
        t = config.train
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.model.lr_decay)

    def after_step(self, model, gather_rows) -> None:
        """Update the memory bank with the codes of the step of every process (collectives run by the engine)."""
        model.finish_step(gather_rows)

    def epoch_batches(self, data, train_positions, seed, epoch, batch_size, info):
        from cryoscape.data.healpix_sampler import class_batches

        return class_batches(data.view_classes, train_positions, seed, epoch, batch_size, info.rank,
                             info.world_size)
