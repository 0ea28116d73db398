"""The tomoDRGN family: a VAE on tilt series, one latent per particle (Powell & Davis 2024).

Nature Methods 21, 1525-1536 (2024), doi:10.1038/s41592-024-02210-z (``docs/references.md``; Results, first two
sections; Methods "General architecture", "Training system", "Lattice masking and reconstruction weighting",
"Random tilt sampling"):

* **Encoder A** (an MLP shared by all tilts) maps each phase-flipped tilt image (Hartley pixels) to an embedding.
* **Pooling** over the tilts of a particle: ``concatenate`` (default; needs a fixed number ``n`` of tilts, by
  default the smallest tilt count of the data set), or the permutation-invariant ``max``, ``mean``, ``median``.
* **Encoder B** (an MLP) maps the pooled embedding to ``mu, logvar`` of ``q(z | particle)``.
* **Decoder**: the Hermitian coordinate network of cryoDRGN (:class:`CoordinateDecoder`), evaluated on the central
  slice of each tilt image (``A_img = R_tilt @ A_particle``); the slice is multiplied by the tilt's CTF, or by
  ``CTF^2`` for CTF-premultiplied stacks (``rlnCtfDataAreCtfPremultiplied 1``, WarpTools / RELION 5), whose images
  the encoder then sees as they are (no phase flip) and whose squared errors are also weighted by
  ``1 / (CTF^2 + eps)`` (:func:`cryoscape.imaging.ctf.premultiplied_weights`, the likelihood of ``CTF x`` noise;
  the normalisations below stay the dose and tilt weights' sums, so the loss and the KL balance keep the plain
  data's scale).
* **Tilt sampling**: while training, each time a particle is drawn a fresh random subset of ``n`` of its tilts
  (without replacement, random order) is used; for evaluation (validation loss, latents) a fixed subset chosen by
  the data set's per-image random key, so latents are reproducible (the paper re-samples here too). With ``max``,
  ``mean`` or ``median`` pooling and no ``ntilts`` all tilts are used; ``zdim = 0`` always uses all tilts.
* **Weighting**: squared errors are weighted by ``exp(-N / (2 Ne(k)))`` (exposure ``N``) and ``cos(tilt)``
  (:mod:`cryoscape.imaging.dose`); **lattice masking**: frequencies past ``2.51284 Ne(k)`` are neither decoded nor
  scored. The kept coordinates of the whole batch are gathered into one padded ``(B, C, 3)`` tensor and decoded in
  one call.
* **Loss** = weighted mean squared error + ``beta * KL / W``. ``W`` (``kl_norm='scored'``, default) is the particle's
  summed loss weights over its scored pixels, so that the KL competes with the weighted sum of squared errors
  exactly as in the ELBO whatever the box size, tilt count, weighting or mask; ``beta = 1/zdim`` by default.
  ``kl_norm='paper'`` uses the paper's ``t * D^2`` (tilts x pixels per image) instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from cryoscape.data.batches import TiltBatch
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.errors import InputError
from cryoscape.imaging.ctf import CTFTensors, compute_ctf, premultiplied_weights
from cryoscape.imaging.dose import dose_weights, optimal_exposure_mask, tilt_weights
from cryoscape.imaging.lattice import central_slice_coords
from cryoscape.models.cryodrgn import CryoDRGN, class_code_kl, class_codes
from cryoscape.models.decoders import CoordinateDecoder
from cryoscape.models.family import FamilyModel, ModelFamily
from cryoscape.models.mlp import ResidualMLP, activation_layer
from cryoscape.models.vae import gaussian_kl, hartley_from_half_plane, reparameterize

POOLINGS = ("concatenate", "max", "mean", "median")
KL_NORMS = ("scored", "paper")

__all__ = ["POOLINGS", "KL_NORMS", "TomoDRGN", "TomoDRGNFamily", "pool_tilts", "select_tilts", "pack_masked",
           "unpack_masked"]


def pool_tilts(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool per-tilt embeddings ``h`` ``(B, n, E)`` over the tilts marked in ``mask`` ``(B, n)``.

    ``concatenate`` -> ``(B, n * E)`` (every tilt must be real); ``max``/``mean``/``median`` -> ``(B, E)`` over the
    real tilts only (``median`` of an even count is the mean of the two middle values).
    """
    if pooling == "concatenate":
        return h.reshape(h.shape[0], -1)
    m = mask[..., None]
    if pooling == "max":
        return h.masked_fill(~m, float("-inf")).amax(dim=1)
    if pooling == "mean":
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    if pooling == "median":
        return torch.nanquantile(h.float().masked_fill(~m, float("nan")), 0.5, dim=1).to(h.dtype)
    raise ValueError(f"unknown pooling {pooling!r}")


def select_tilts(batch: TiltBatch, n: int | None, random: bool) -> TiltBatch:
    """Choose up to ``n`` tilts per particle (``None``: all), without replacement.

    The order is that of ascending keys: fresh uniform random keys when ``random``, else the batch's fixed
    ``tilt_key``. Padding tilts sort last; particles with fewer than ``n`` tilts keep all and are padded.
    Returns the per-tilt entries of ``batch`` restricted to ``(B, n)``, with ``tilt_mask`` updated.
    """
    mask = batch["tilt_mask"]
    if n is None:
        return batch
    keys = torch.rand(mask.shape, device=mask.device) if random else batch["tilt_key"].float()
    keys = keys.masked_fill(~mask, 2.0)
    order = torch.argsort(keys, dim=1)[:, :n]
    out: dict[str, Any] = {"ctf": CTFTensors.of(batch["ctf"]).gather(1, order)}
    for name in ("y", "rot", "exposure", "tilt_deg", "tilt_mask", "tilt_key"):
        v = batch[name]
        idx = order.reshape(order.shape + (1,) * (v.ndim - 2)).expand(order.shape + v.shape[2:])
        out[name] = torch.gather(v, 1, idx)
    return dataclasses.replace(batch, **out) if dataclasses.is_dataclass(batch) else {**batch, **out}


def pack_masked(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the masked rows of ``values`` ``(B, L, C)`` into a padded ``(B, K, C)`` (``K`` = largest count).

    Returns ``packed`` (kept rows first, in order; zeros after), ``slot`` ``(B, L)`` (the packed row of each kept
    position, ``K`` for the others) and ``valid`` ``(B, K)`` bool. No sorting: slots are a running count.
    """
    B, L, C = values.shape
    K = int(mask.sum(dim=1).max()) if mask.numel() else 0
    slot = torch.where(mask, mask.long().cumsum(dim=1) - 1, torch.full_like(mask, K, dtype=torch.long))
    packed = values.new_zeros(B, K + 1, C).scatter(1, slot[..., None].expand(-1, -1, C), values)[:, :K]
    valid = torch.arange(K, device=mask.device)[None, :] < mask.sum(dim=1, keepdim=True)
    return packed, slot, valid


def unpack_masked(packed: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_masked`: ``(B, L, C)`` with zeros at the positions that were not packed
    (differentiable with respect to ``packed``).
    """
    padded = torch.cat([packed, packed.new_zeros(packed.shape[0], 1, packed.shape[-1])], dim=1)
    return torch.gather(padded, 1, slot[..., None].expand(-1, -1, packed.shape[-1]))


class TomoDRGN(FamilyModel):
    """Tilt-series VAE (``zdim > 0``) or homogeneous coordinate network (``zdim = 0``).

    Parameters
    ----------
    D, pixel_size_angstrom : image box (even) and pixel size.
    ntilts : tilts used per particle (required for ``concatenate`` pooling; ``None``: all).
    zdim, pooling : latent size and tilt pooling (:data:`POOLINGS`).
    enc_dim, enc_layers, tilt_embed_dim : encoder A (width, hidden layers, per-tilt embedding size).
    enc_dim_b, enc_layers_b : encoder B.
    dec_dim, dec_layers, pe_type, pe_dim, feat_sigma, activation : decoder (as cryoDRGN).
    beta : KL weight (``None``: ``1/zdim``); kl_norm : :data:`KL_NORMS`.
    recon_dose_weight, recon_tilt_weight, dose_mask : the paper's weighting and lattice masking.
    images_dose_weighted : the stacks were exposure-filtered when extracted; the model applies the same filter.
    norm_std : the data normalisation (volumes are rescaled by it).
    ctf_premultiplied : the stacks are CTF-premultiplied (slices multiplied by ``CTF^2``, no phase flip, squared
        errors also weighted by ``1 / (CTF^2 + eps)``).
    """

    # registered buffers (declared for type checkers: nn.Module attribute access is untyped)
    pixel_size_angstrom: torch.Tensor
    norm_std: torch.Tensor
    freqs: torch.Tensor
    points: torch.Tensor

    family = "tomodrgn"
    generate_volume_batch = CryoDRGN.generate_volume_batch
    generate_volume = CryoDRGN.generate_volume
    generate_volumes = CryoDRGN.generate_volumes

    def __init__(self, D: int, pixel_size_angstrom: float, ntilts: int | None, zdim: int = 8,
                 pooling: str = "concatenate", enc_dim: int = 256, enc_layers: int = 3, tilt_embed_dim: int = 128,
                 enc_dim_b: int = 256, enc_layers_b: int = 3, dec_dim: int = 256, dec_layers: int = 3,
                 pe_type: str = "gaussian", pe_dim: int | None = None, feat_sigma: float = 0.5,
                 activation: str = "relu", beta: float | None = None, kl_norm: str = "scored",
                 recon_dose_weight: bool = True, recon_tilt_weight: bool = True, dose_mask: bool = True,
                 images_dose_weighted: bool = False, norm_std: float = 1.0, ctf_premultiplied: bool = False):
        super().__init__()
        self.ctf_premultiplied = bool(ctf_premultiplied)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}")
        if kl_norm not in KL_NORMS:
            raise ValueError(f"unknown kl_norm {kl_norm!r}")
        if zdim > 0 and pooling == "concatenate" and not ntilts:
            raise ValueError("concatenate pooling needs a fixed number of tilts")
        self.D, self.zdim, self.pooling, self.kl_norm = D, zdim, pooling, kl_norm
        self.ntilts = int(ntilts) if ntilts else None
        self.beta = (1.0 / zdim if zdim > 0 else 0.0) if beta is None else float(beta)
        self.recon_dose_weight, self.recon_tilt_weight = recon_dose_weight, recon_tilt_weight
        self.dose_mask, self.images_dose_weighted = dose_mask, images_dose_weighted
        self.pixels = FourierPixels.create(D)
        self.register_buffer("pixel_size_angstrom", torch.tensor(float(pixel_size_angstrom)))
        self.register_buffer("norm_std", torch.tensor(float(norm_std)))
        self.register_buffer("freqs", self.pixels.freqs.clone(), persistent=False)
        m = self.pixels.n_half
        points = self.pixels.freqs[: m + 1].clone()  # decoded points: the half plane + DC (row m)
        points[m] = 0.0
        self.register_buffer("points", points, persistent=False)
        if zdim > 0:
            self.encoder_a = ResidualMLP(self.pixels.n_pixels, enc_layers, enc_dim, tilt_embed_dim, activation)
            self.pool_activation = activation_layer(activation)
            n_pooled = 1
            if pooling == "concatenate":
                assert self.ntilts is not None  # checked above: concatenate pooling needs ntilts
                n_pooled = self.ntilts
            in_b = tilt_embed_dim * n_pooled
            self.encoder_b = ResidualMLP(in_b, enc_layers_b, enc_dim_b, 2 * zdim, activation)
        self.decoder = CoordinateDecoder(D, zdim, dec_dim, dec_layers, pe_type, pe_dim, feat_sigma, activation)
        self.consensus_only = False  # set_consensus_only

    def set_consensus_only(self, on: bool) -> None:
        """Ab initio search phase of a heterogeneous model (``cryoscape abinit --model tomodrgn --zdim N``): while
        ``on``, the decoder is given the latent 0 for every particle (one consensus map; the encoder still gets its
        KL term) and the pose search uses that map for every particle (one shared grid), as
        :meth:`CryoDRGN.set_consensus_only <cryoscape.models.cryodrgn.CryoDRGN.set_consensus_only>`;
        :class:`~cryoscape.models.pose_search.TiltPoseSearcher` switches it off when the local refinement starts.
        """
        self.consensus_only = bool(on) and self.zdim > 0

    # -- tilts ----------------------------------------------------------------------------------------------
    @property
    def tilts_used(self) -> int | None:
        """Tilts per particle the model looks at (``None``: all)."""
        if self.zdim == 0 or (self.pooling != "concatenate" and self.ntilts is None):
            return None
        return self.ntilts

    def select(self, batch: TiltBatch) -> TiltBatch:
        """The tilts of each particle this pass uses (random while training, fixed in eval mode)."""
        n = self.tilts_used
        if n is not None and self.pooling == "concatenate" and int(batch["tilt_mask"].sum(1).min()) < n:
            raise InputError(f"a particle has fewer than the {n} tilts this model was trained on",
                             hint="leave out particles with few tilts (--ind)")
        return select_tilts(batch, n, random=self.training)

    # -- the forward model --------------------------------------------------------------------------------------
    def ctf_values(self, ctf: CTFTensors) -> torch.Tensor:
        """CTF ``(B, n, P)`` at the model's pixels for parameters of shape ``(B, n)``."""
        return compute_ctf(self.freqs / self.pixel_size_angstrom, CTFTensors.of(ctf))

    def encode(self, y: torch.Tensor, ctf_values: torch.Tensor, mask: torch.Tensor):
        """``y`` ``(B, n, P)`` -> ``(mu, logvar)`` ``(B, zdim)`` each (images phase-flipped by the CTF sign, unless
        CTF-premultiplied).
        """
        B, n, P = y.shape
        x = y if self.ctf_premultiplied else y * torch.sign(ctf_values)
        h = self.encoder_a(x.reshape(B * n, P)).reshape(B, n, -1)
        out = self.encoder_b(self.pool_activation(pool_tilts(h, mask, self.pooling)))
        return out[:, : self.zdim], out[:, self.zdim :]

    def transfer(self, ctf_values: torch.Tensor) -> torch.Tensor:
        """What multiplies the rendered slices: the CTF, or ``CTF^2`` for CTF-premultiplied stacks."""
        return ctf_values * ctf_values if self.ctf_premultiplied else ctf_values

    def decode_mask(self, exposure: torch.Tensor, ctf: CTFTensors, tilt_mask: torch.Tensor) -> torch.Tensor:
        """Bool ``(B, n, M + 1)``: decoded points of each tilt (half plane by exposure, DC always; real tilts)."""
        keep = tilt_mask[..., None].expand(-1, -1, self.points.shape[0])
        if not self.dose_mask:
            return keep
        k = self.points.norm(dim=-1) / self.pixel_size_angstrom
        return keep & optimal_exposure_mask(k, exposure[..., None], CTFTensors.of(ctf).voltage[..., None])

    def render(self, rot: torch.Tensor, z: torch.Tensor | None, keep: torch.Tensor,
               normal_offset: float = 0.0) -> torch.Tensor:
        """Hartley values ``(B, n, P)`` of the central slices at ``rot`` ``(B, n, 3, 3)``, decoding only ``keep``
        ``(B, n, M + 1)`` points of the whole batch in one call (zeros elsewhere). ``normal_offset`` (cycles/pixel;
        pose refinement's derivatives) moves the half-plane points along each slice's normal (their mates, the
        negated points, by minus it).
        """
        B, n = rot.shape[:2]
        Q = self.points.shape[0]
        q = central_slice_coords(rot.reshape(B * n, 3, 3), self.points, normal_offset).reshape(B, n * Q, 3)
        flat = keep.reshape(B, n * Q)
        if bool(flat.all()):
            out = self.decoder(q, z)
        else:
            packed, slot, _ = pack_masked(q, flat)
            out = unpack_masked(self.decoder(packed, z), slot)
        return hartley_from_half_plane(out.reshape(B, n, Q, 2).float(), Q - 1)

    def loss_weights(self, exposure: torch.Tensor, tilt_deg: torch.Tensor, ctf: CTFTensors) -> torch.Tensor:
        """Per-pixel weights ``(B, n, P)``: dose attenuation times ``cos(tilt)`` (each 1 when switched off)."""
        w = torch.ones(exposure.shape + (self.freqs.shape[0],), device=exposure.device)
        if self.recon_dose_weight:
            w = w * self.attenuation(exposure, ctf)
        if self.recon_tilt_weight:
            w = w * tilt_weights(tilt_deg)[..., None]
        return w

    def attenuation(self, exposure: torch.Tensor, ctf: CTFTensors) -> torch.Tensor:
        """``exp(-N / (2 Ne(k)))`` ``(B, n, P)`` at the model's pixels."""
        k = self.freqs.norm(dim=-1) / self.pixel_size_angstrom
        return dose_weights(k, exposure[..., None].float(), CTFTensors.of(ctf).voltage[..., None].float())

    def forward(self, batch: TiltBatch) -> dict[str, torch.Tensor]:
        """Loss and its terms for a batch of particles (see the module docstring)."""
        b = self.select(batch)
        y, mask = b["y"], b["tilt_mask"]
        ctf = self.ctf_values(b["ctf"])
        terms: dict[str, torch.Tensor] = {}
        z = None
        if self.zdim > 0:
            mu, logvar = self.encode(y, ctf, mask)
            z = reparameterize(mu, logvar, self.training)
            if self.consensus_only:  # ab initio search phase: one consensus map (set_consensus_only)
                cls = b.get("class_index")
                if cls is None:
                    z = z * 0.0
                else:  # several class maps (abinit --classes): the decoder at each particle's class code
                    code = class_codes(cls, self.zdim).to(mu)
                    class_fit = class_code_kl(mu, logvar, code)
                    terms["class_fit"] = class_fit.mean()
                    z = z * 0.0 + code
        keep = self.decode_mask(b["exposure"], b["ctf"], mask)
        pred = self.render(b["rot"], z, keep) * self.transfer(ctf.float())
        if self.images_dose_weighted:
            pred = pred * self.attenuation(b["exposure"], b["ctf"])
        m = keep.shape[-1] - 1
        scored = torch.cat([keep[..., :m], keep[..., :m], keep[..., m:]], dim=-1).float()
        w = self.loss_weights(b["exposure"], b["tilt_deg"], b["ctf"]) * scored
        w_particle = w.sum(dim=(1, 2)).clamp(min=1e-8)
        err = (pred - y.float()) ** 2
        if self.ctf_premultiplied:  # likelihood weights; w_particle (the normaliser) stays the dose/tilt weights'
            err = err * premultiplied_weights(ctf.float())
        recon = (w * err).sum() / w_particle.sum()
        terms["recon"] = recon
        loss = recon
        if z is not None:
            kl = gaussian_kl(mu, logvar)
            norm = w_particle if self.kl_norm == "scored" else mask.sum(dim=1).float() * self.D**2
            terms["kl"] = kl.mean()
            loss = loss + self.beta * (kl.float() / norm).mean()
            if "class_fit" in terms:  # the encoder learns the class codes (normalised as the KL term)
                loss = loss + (class_fit / norm).mean()
        terms["loss"] = loss
        return terms

    @torch.no_grad()
    def latent_means(self, batch: TiltBatch) -> torch.Tensor:
        """Posterior means ``(B, zdim)`` (fixed tilt subset in eval mode)."""
        b = self.select(batch)
        return self.encode(b["y"], self.ctf_values(b["ctf"]), b["tilt_mask"])[0]

    def _compared(self, batch: TiltBatch, half: torch.Tensor):
        """``(positions (2 M' + 1,), keep (B, T, M + 1), transfer (B, T, 2 M' + 1), weights (B, T, 2 M' + 1))`` of the
        half-plane pixels ``half`` (and their mates and DC): what the forward model multiplies the rendered slice
        by there (transfer, exposure filter) and the loss's per-pixel weights (exposure and tilt weights, lattice
        mask, premultiplied likelihood weights; 0 for padding tilts); ``keep`` the decoded points.
        """
        m = self.pixels.n_half
        dc = torch.tensor([2 * m], device=half.device)
        positions = torch.cat([half, half + m, dc])
        ctf = self.ctf_values(batch["ctf"]).float()
        keep = self.decode_mask(batch["exposure"], batch["ctf"], batch["tilt_mask"])
        compared = torch.zeros(m + 1, dtype=torch.bool, device=keep.device)
        compared[half] = True
        compared[m] = True
        keep = keep & compared
        transfer = self.transfer(ctf)[..., positions]
        if self.images_dose_weighted:
            transfer = transfer * self.attenuation(batch["exposure"], batch["ctf"])[..., positions]
        scored = torch.cat([keep[..., :m], keep[..., :m], keep[..., m:]], dim=-1)[..., positions].float()
        weights = self.loss_weights(batch["exposure"], batch["tilt_deg"], batch["ctf"])[..., positions] * scored
        if self.ctf_premultiplied:
            weights = weights * premultiplied_weights(ctf[..., positions])
        return positions, keep, transfer, weights

    def _pose_latent(self, batch: TiltBatch) -> torch.Tensor | None:
        """The latent the pose hooks render at: the posterior mean of the particle's fixed evaluation subset of
        tilts; ``None`` for the homogeneous model and in the consensus phase (:meth:`set_consensus_only`).
        """
        if self.zdim == 0 or self.consensus_only:
            return None
        b = select_tilts(batch, self.tilts_used, random=False)
        return self.encode(b["y"], self.ctf_values(b["ctf"]), b["tilt_mask"])[0]

    @torch.no_grad()
    def tilt_pose_predictor(self, batch: TiltBatch, half: torch.Tensor):
        """``(predict, weights)`` for local pose refinement of tilt series (:class:`~cryoscape.models.poses.
        TiltPoseRefiner`) on the half-plane pixels ``half`` (positions into the ``M`` half-plane pixels):
        ``predict(rot (B, T, 3, 3)) -> (B, T, 2 M' + 1)`` the model's prediction of every tilt image at the
        pixels ``[half, mates, DC]`` (at the posterior mean of the particle's fixed evaluation subset of tilts, as
        the forward model: transfer, exposure filter, lattice mask; the latent 0 in the consensus phase), and
        ``weights`` ``(B, T, 2 M' + 1)`` the loss's per-pixel weights there (exposure and tilt weights, lattice
        mask, premultiplied likelihood weights; 0 for padding tilts).
        """
        positions, keep, transfer, weights = self._compared(batch, half)
        z = self._pose_latent(batch)
        if z is None and self.zdim > 0:
            z = torch.zeros(batch["y"].shape[0], self.zdim, device=batch["y"].device)

        from cryoscape.models.poses import SlicePredictor

        def along_normal(rot: torch.Tensor, delta: float) -> torch.Tensor:
            return self.render(rot, z, keep, normal_offset=delta)[..., positions] * transfer

        return SlicePredictor(lambda rot: along_normal(rot, 0.0), along_normal), weights

    @torch.no_grad()
    def tilt_search_predictor(self, batch: TiltBatch, half: torch.Tensor, radius_cycles: float,
                              oversample: float | None = None, class_index: int | None = None):
        """For ab initio pose search of tilt series (:func:`cryoscape.models.pose_search.grouped_search`): a
        :class:`~cryoscape.models.pose_search.SearchPredictor` of the batch's tilt images at the half-plane
        positions ``half`` ``(M',)`` (``[half, mates, DC]`` order), all within ``radius_cycles`` (cycles/pixel):
        ``slices`` of rotations ``(B, N, 3, 3)`` -> ``(B, N, 2 M' + 1)`` without the transfer; ``transfer`` and
        ``weight`` ``(B, T, 2 M' + 1)`` per tilt image (:meth:`tilt_pose_predictor`'s).

        The decoder is evaluated once on a Cartesian grid of the ball of that radius (spacing ``1 / (oversample
        D)``; default 2 for the one map of the homogeneous model or of the consensus phase, 1 for a heterogeneous
        one, one grid per particle at its posterior-mean latent) and the slices are its trilinear samples
        (:func:`~cryoscape.models.pose_search.decoder_grid`, :func:`~cryoscape.models.pose_search.sample_slices`).
        ``class_index`` (the consensus phase of ``abinit --classes``): the one map of that class, shared.
        """
        from cryoscape.models.pose_search import decoder_search_predictor

        _, _, transfer, weights = self._compared(batch, half)
        z = self._pose_latent(batch)
        shared_z = None
        if class_index is not None:
            if not self.consensus_only:
                raise RuntimeError("class maps are searched in the consensus phase only (set_consensus_only)")
            shared_z = class_codes(torch.tensor([int(class_index)]), self.zdim).to(batch["y"].device)
        freqs = torch.cat([self.freqs[half], self.freqs[:1] * 0.0])  # the half-plane points and DC
        return decoder_search_predictor(self.decoder, z, self.zdim, self.D, radius_cycles, freqs, transfer, weights,
                                        batch["y"].device, oversample, shared_z=shared_z)


class TomoDRGNFamily(ModelFamily):
    """How the engine builds a tomoDRGN run (``cryoscape train ... --model tomodrgn``).

    Particles come from a tilt-series STAR file (:func:`cryoscape.io.tilt_series.load_tilt_series`); positions,
    ``--ind`` and ``RUN/indices.npy`` count particles, not tilt images.
    """

    name = "tomodrgn"
    default_batch_size = 1  # particles per batch, as in the tomoDRGN paper
    default_lr = 2e-4  # the tomoDRGN paper's
    data_state = ("pixel_size_angstrom", "norm_std")
    own_input_format = True
    refines_poses = True  # one rigid correction per particle for all its tilts (models.poses.TiltPoseRefiner)
    searches_poses = True  # cryoscape abinit (models.pose_search.TiltPoseSearcher, TomoDRGN.tilt_search_predictor)

    def make_pose_refiner(self, data, config):
        """A :class:`~cryoscape.models.poses.TiltPoseRefiner` (a rotation and a 3-D shift per particle, in its
        reference tilt's frame; ``--pose-method local`` through :meth:`TomoDRGN.tilt_pose_predictor`) with
        ``--refine-poses``; for ``cryoscape abinit`` a :class:`~cryoscape.models.pose_search.TiltPoseSearcher` (the
        same pose, searched from random ones with all of a particle's tilts); else ``None``.
        """
        t = config.train
        if t.abinit:
            from cryoscape.models.pose_search import TiltPoseSearcher

            return TiltPoseSearcher.for_data(data, seed=t.seed, pretrain_images=t.pretrain_images,
                                             max_search_epochs=t.search_epochs, search_draws=t.search_draws,
                                             latent_search_epochs=(t.latent_search_epochs if config.model.zdim > 0
                                                                   else 0),
                                             n_classes=t.search_classes if config.model.zdim > 0 else 0,
                                             min_search_epochs=min(3, t.search_epochs),
                                             search_radius=t.pose_search_radius)
        if not t.refine_poses:
            return None
        from cryoscape.models.poses import TiltPoseRefiner

        return TiltPoseRefiner.for_data(data, lr=t.pose_lr, shift_lr=t.shift_lr, start_epoch=t.refine_start,
                                        method=t.pose_method, search_radius=t.pose_search_radius)

    def load_particles(self, config, path=None, datadir=None, apply_ind: bool = True, poses=None, ctf=None,
                       reader_options=None):
        """``(TiltSeriesSet, indices into the file's particles)`` of ``config.data`` (or of another ``path``);
        ``--ind`` is applied to the run's own particles when ``apply_ind``. Poses and CTF come from the STAR
        file (``poses``, ``ctf``, ``reader_options`` are not read; the run's CTF overrides apply).
        """
        from cryoscape.errors import InputError
        from cryoscape.io.indices import read_particle_indices
        from cryoscape.io.tilt_series import load_tilt_series

        d = config.data
        if d.poses or d.ctf:
            raise InputError("--poses/--ctf do not apply to tilt series (poses and CTF come from the STAR file)")
        if d.cs_alignments:
            raise InputError("--cs-alignments applies to cryoSPARC .cs files, not to tilt series")
        tilts = load_tilt_series(path or d.particles, config.model.tilt_format, datadir=datadir or d.datadir,
                                 apix=d.apix, ctf_overrides=d.reader_options()["ctf_overrides"])
        indices = np.arange(len(tilts), dtype=np.int64)
        if d.ind and path is None and apply_ind:
            indices = read_particle_indices(d.ind, tilts.offsets)  # per-image files are named as such
            if len(indices) == 0:
                raise InputError("the index file selects no particles", d.ind)
            tilts = tilts.subset(indices)
        return tilts, indices

    def write_subset(self, particles, chosen, out_dir, fmt="auto"):
        """Write the particles ``chosen`` (indices into the file) in the input's format (``cryoscape filter``)."""
        from cryoscape.io.particles import ParticleSet
        from cryoscape.io.tilt_series import write_tilt_subset

        if isinstance(particles, ParticleSet):  # another file given for the run's particles (filter --particles)
            return super().write_subset(particles, chosen, out_dir, fmt)
        return write_tilt_subset(particles, chosen, out_dir)

    def make_data(self, particles, config, norm_std=None, progress=True):
        """The Hermitian-half Fourier pixels of every particle's tilt images (:class:`TiltSeriesData`)."""
        from cryoscape.data.fourier_pixels import FourierPixels
        from cryoscape.data.tilt_data import TiltSeriesData

        d = config.data
        return TiltSeriesData(particles, FourierPixels.create(particles.D), invert=d.invert_data, window=d.window,
                              window_inner=d.window_inner, lazy=d.lazy, norm_std=norm_std, progress=progress)

    def build_info(self, data) -> dict:
        """As the base, plus ``min_tilts`` (the fewest tilts of any particle)."""
        return {"D": int(data.D), "pixel_size_angstrom": float(data.pixel_size_angstrom),
                "norm_std": float(data.norm_std), "min_tilts": int(data.min_tilts),
                "ctf_premultiplied": bool(data.ctf_premultiplied)}

    def resolve_ntilts(self, config, min_tilts: int) -> int | None:
        """Tilts per particle: ``--ntilts``, else the smallest tilt count for concatenate pooling, else all."""
        from cryoscape.errors import InputError

        m = config.model
        if m.pooling == "concatenate" and m.zdim > 0:
            n = m.ntilts or min_tilts
            if n > min_tilts:
                raise InputError(f"--ntilts {n} is more than the {min_tilts} tilts of the particle with the fewest",
                                 hint="lower --ntilts, or leave out particles with few tilts with --ind")
            return n
        return m.ntilts

    def build_model(self, config, build: dict) -> TomoDRGN:
        """A :class:`TomoDRGN` from the model and train options and the build values."""
        m, t = config.model, config.train
        ntilts = self.resolve_ntilts(config, int(build["min_tilts"]))
        return TomoDRGN(D=int(build["D"]), pixel_size_angstrom=float(build["pixel_size_angstrom"]), ntilts=ntilts,
                        zdim=m.zdim, pooling=m.pooling, enc_dim=m.enc_dim, enc_layers=m.enc_layers,
                        tilt_embed_dim=m.tilt_embed_dim, enc_dim_b=m.enc_dim_b or m.enc_dim,
                        enc_layers_b=m.enc_layers if m.enc_layers_b is None else m.enc_layers_b, dec_dim=m.dec_dim,
                        dec_layers=m.dec_layers, pe_type=m.pe_type, pe_dim=m.pe_dim, feat_sigma=m.feat_sigma,
                        activation=m.activation, beta=t.beta, kl_norm=m.kl_norm,
                        recon_dose_weight=m.recon_dose_weight, recon_tilt_weight=m.recon_tilt_weight,
                        dose_mask=m.dose_mask, images_dose_weighted=m.images_dose_weighted,
                        norm_std=float(build["norm_std"]),
                        ctf_premultiplied=bool(build.get("ctf_premultiplied", False)))

    def make_optimizer(self, model, config):
        """``(AdamW at lr and weight_decay, None)``: no scheduler."""
        t = config.train
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay), None
