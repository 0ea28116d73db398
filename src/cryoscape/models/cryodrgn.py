"""The cryoDRGN family: an MLP image encoder and a coordinate-network decoder on central slices.

Implements the method of Zhong et al., Nature Methods 18, 176-185 (2021), doi:10.1038/s41592-020-01049-4
(Methods; see ``docs/references.md``): the encoder maps
the (phase-flipped) Hartley transform of a centred particle image to ``q(z|X) = N(mu, diag(exp(logvar)))``;
the decoder evaluates the volume's Fourier transform at the 3-D coordinates of the image's central slice
(``[kx, ky, 0] @ A``); the rendered slice is multiplied by the particle's CTF and compared with the image.
Loss = MSE + beta * KL / P (KL to N(0, I), ``P`` = number of pixels, beta = 1/zdim by default, as in cryoDRGN).
``zdim = 0`` is the homogeneous coordinate network (cryoDRGN's ``train_nn``).

CTF-premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``) hold ``CTF x image``: the rendered slice is then
multiplied by ``CTF^2`` (sign-free), the encoder sees the images as they are (no phase flip), and each pixel's
squared error is weighted by ``1 / (CTF^2 + eps)`` (:func:`cryoscape.imaging.ctf.premultiplied_weights`: the
likelihood of ``CTF x`` noise), which puts the loss on the plain data's scale.

Only half of the Hermitian-symmetric slice is evaluated; the other half follows from ``F(-k) = conj F(k)``.

Image formation (``ctf_field``): with 1 (cryoDRGN's model) the slice is multiplied by the CTF on the box's own
``D x D`` spectrum, a circular convolution in which the signal the CTF spreads past the box edge wraps back in.
Particles cut from micrographs do not wrap: their delocalised signal has left the box (and a neighbour's has
come in, as noise). With ``ctf_field = F > 1`` the rendered slice (zero outside the model's pixels) is taken to
real space, placed in a field ``F D`` wide, multiplied there by the CTF on the field's finer spectrum, the
central ``D x D`` box cut out and multiplied by the images' real-space window, then transformed back: the
forward model of ``cryoscape simulate --field F`` and of a box cut from a micrograph (``docs/conventions.md``).
The FFTs cost little next to the decoder (D=64, F=2: three ``128 x 128`` and two ``64 x 64`` transforms per image).
CTF-premultiplied images (the cut box's spectrum multiplied by its CTF once more) get that second CTF on the box's
spectrum after the cut (the window is applied before it here, after it in the data: an approximation at the edge).

Frequency marching (optional, as in cryoDRGN-AI): while training, only pixels with ``|k| < r`` are decoded and
scored, the radius ``r`` growing linearly from ``march_start * D/2`` to ``D/2`` over the first
``freq_march_epochs`` epochs. The low resolutions, which carry the heterogeneity signal, are learnt first, and the
decoder, ~97 % of the step's arithmetic, evaluates ``(r / (D/2))^2`` of the points meanwhile. The encoder always
sees the whole image, and evaluation (validation loss, latents, volumes) always uses the full lattice.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.preprocess import make_window
from cryoscape.errors import InputError
from cryoscape.imaging.ctf import compute_ctf, premultiplied_weights
from cryoscape.imaging.fft import freq_grid_2d, hartley2, ifft3_centered, ihartley2
from cryoscape.imaging.lattice import central_slice_coords
from cryoscape.models.decoders import CoordinateDecoder
from cryoscape.models.family import FamilyModel, ModelFamily
from cryoscape.models.mlp import ResidualMLP
from cryoscape.models.vae import hartley_from_half_plane, kl_divergence, reparameterize, volumes_in_batches

log = logging.getLogger(__name__)


#: Norm of the class codes of ``abinit --classes`` (twice the prior's standard deviation per axis).
CLASS_CODE_SCALE = 2.0


def class_codes(index: torch.Tensor, zdim: int) -> torch.Tensor:
    """The latents ``(B, zdim)`` of classes ``index`` ``(B,)`` (``abinit --classes K``, ``K <= zdim``): class ``k``
    at ``CLASS_CODE_SCALE * e_k``, the ``k``-th axis of the latent space, so that the ``K`` class maps are the
    decoder at ``K`` points that the encoder can learn to reach and that stay apart (``2 sqrt 2`` apart at scale 2).
    """
    index = torch.as_tensor(index).long().reshape(-1)
    if index.numel() and int(index.max()) >= zdim:
        raise ValueError(f"class {int(index.max())} needs a latent of more than {zdim} dimensions")
    return CLASS_CODE_SCALE * torch.nn.functional.one_hot(index, zdim).float()


#: Standard deviation of the posterior the encoder learns around its class code (``abinit --classes``).
CLASS_CODE_SIGMA = CLASS_CODE_SCALE / 8.0


def class_code_kl(mu: torch.Tensor, logvar: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(code, CLASS_CODE_SIGMA^2))`` per image ``(B,)``: what teaches the encoder the
    class codes during the class search of ``abinit --classes``, its posterior mean at the image's code and its
    spread at ``CLASS_CODE_SIGMA`` (a quarter of the codes' norm of 2; the codes are 2.8 apart). Without the spread
    term the encoder's ``logvar`` sat at the prior's 0 when the latent was switched on (only the prior's KL acts on
    it while the decoder is given the codes), and latents drawn with a standard deviation of 1 blurred the class
    maps into each other within one epoch (``bench/RESULTS.md`` 14g).
    """
    tau2 = CLASS_CODE_SIGMA**2
    var = logvar.float().exp()
    return 0.5 * ((var + (mu.float() - code) ** 2) / tau2 - 1.0 - logvar.float() + math.log(tau2)).sum(dim=1)


class CryoDRGN(FamilyModel):
    """VAE (``zdim > 0``) or homogeneous network (``zdim = 0``) on Fourier slices.

    Parameters
    ----------
    D : image box size (even).
    pixel_size_angstrom : of the training images (for the CTF and the volume header).
    zdim, enc_dim, enc_layers, dec_dim, dec_layers, pe_type, pe_dim, feat_sigma, activation : architecture.
    beta : KL weight; ``None`` gives ``1 / zdim``.
    norm_std : the data normalisation (volumes are rescaled by it).
    freq_march_epochs, march_start : frequency marching (see the module docstring; ``0`` epochs = off).
    ctf_premultiplied : the images are CTF-premultiplied (the slice is multiplied by ``CTF^2``; no phase flip;
        squared errors weighted by ``1 / (CTF^2 + eps)``).
    ctf_field, window : image formation on a field ``ctf_field`` boxes wide, then cut and multiplied by ``window``
        ``(D, D)`` (the images' real-space window; ``None``: none); 1 (default): the circular model (module
        docstring).
    """

    # registered buffers (declared for type checkers: nn.Module attribute access is untyped)
    pixel_size_angstrom: torch.Tensor
    norm_std: torch.Tensor
    freqs: torch.Tensor
    window: torch.Tensor | None
    field_freqs: torch.Tensor | None

    family = "cryodrgn"

    def __init__(self, D: int, pixel_size_angstrom: float, zdim: int = 8, enc_dim: int = 256, enc_layers: int = 3,
                 dec_dim: int = 256, dec_layers: int = 3, pe_type: str = "gaussian", pe_dim: int | None = None,
                 feat_sigma: float = 0.5, activation: str = "relu", beta: float | None = None,
                 norm_std: float = 1.0, freq_march_epochs: float = 0.0, march_start: float = 0.25,
                 ctf_premultiplied: bool = False, ctf_field: int = 1, window: torch.Tensor | None = None):
        super().__init__()
        self.D = D
        self.ctf_premultiplied = bool(ctf_premultiplied)
        self.ctf_field = int(ctf_field)
        if self.ctf_field < 1:
            raise ValueError(f"ctf_field must be >= 1, got {ctf_field}")
        # the real-space window of the images (ctf_field > 1 applies it to the rendered images too)
        self.register_buffer("window", None if window is None else torch.as_tensor(window, dtype=torch.float32),
                             persistent=False)
        # the field's frequencies (cycles/pixel, (F D * F D, 2)), made once rather than per batch
        self.register_buffer("field_freqs", freq_grid_2d(self.ctf_field * D).reshape(-1, 2)
                             if self.ctf_field > 1 else None, persistent=False)
        self.zdim = zdim
        self.consensus_only = False  # set_consensus_only
        self.beta = (1.0 / zdim if zdim > 0 else 0.0) if beta is None else float(beta)
        self.pixels = FourierPixels.create(D)
        self.register_buffer("pixel_size_angstrom", torch.tensor(float(pixel_size_angstrom)))
        self.register_buffer("norm_std", torch.tensor(float(norm_std)))
        self.register_buffer("freqs", self.pixels.freqs.clone(), persistent=False)
        half_radius_px = (self.pixels.half_freqs().norm(dim=1) * D).numpy()
        self._half_by_radius = np.argsort(half_radius_px, kind="stable")  # marching subsets are prefixes of this
        self._sorted_half_radius = half_radius_px[self._half_by_radius]
        self._subset_cache: tuple[int, torch.Tensor] | None = None
        self.freq_march_epochs = float(freq_march_epochs)
        self.march_start = float(march_start)
        self.train_radius_px = D / 2  # set by set_training_progress
        self.encoder = (
            ResidualMLP(self.pixels.n_pixels, enc_layers, enc_dim, 2 * zdim, activation) if zdim > 0 else None
        )
        self.decoder = CoordinateDecoder(D, zdim, dec_dim, dec_layers, pe_type, pe_dim, feat_sigma, activation)

    # -- the forward model -------------------------------------------------------------------------
    def encode(self, y: torch.Tensor, ctf_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``y``: ``(B, P)`` normalised Hartley pixels -> ``(mu, logvar)``, each ``(B, zdim)``; images are
        phase-flipped by the CTF sign unless they are CTF-premultiplied (then already sign-free).
        """
        if self.encoder is None:
            raise RuntimeError("a homogeneous model (zdim 0) has no encoder")
        x = y if ctf_values is None or self.ctf_premultiplied else y * torch.sign(ctf_values)
        out = self.encoder(x)
        return out[:, : self.zdim], out[:, self.zdim :]

    def set_consensus_only(self, on: bool) -> None:
        """Ab initio search phase of a heterogeneous model (``cryoscape abinit --zdim N``): while ``on``, the decoder
        is given the latent 0 for every image (one consensus map; the encoder still gets its KL term) and the pose
        search uses that map for every image (one shared grid). Searching against per-image latents from the start
        let the latent absorb the orientation: on ``discrete3`` (SNR 0.1) the poses never converged
        (``bench/RESULTS.md``, section 14). :class:`~cryoscape.models.pose_search.PoseSearcher` switches it off
        once the poses are stable.
        """
        self.consensus_only = bool(on) and self.zdim > 0

    def set_training_progress(self, epochs_done: float) -> None:
        """Frequency-marching schedule: the training lattice radius after ``epochs_done`` (fractional) epochs."""
        nyquist = self.D / 2
        if self.freq_march_epochs <= 0:
            self.train_radius_px = nyquist
            return
        t = min(1.0, max(0.0, epochs_done) / self.freq_march_epochs)
        self.train_radius_px = nyquist * (self.march_start + (1.0 - self.march_start) * t)

    def pixel_subset(self) -> torch.Tensor | None:
        """Positions ``(P',)`` (``[half, mates, DC]`` order) trained at the current radius; ``None`` = all."""
        if not self.training or self.train_radius_px >= self.D / 2:
            return None
        count = int(np.searchsorted(self._sorted_half_radius, self.train_radius_px, side="left"))
        device = self.freqs.device
        if self._subset_cache is None or self._subset_cache[0] != count or self._subset_cache[1].device != device:
            m = self.pixels.n_half
            half = torch.from_numpy(np.sort(self._half_by_radius[:count]))  # raster order, as the full lattice
            subset = torch.cat([half, half + m, torch.tensor([2 * m])]).to(device)
            self._subset_cache = (count, subset)
        return self._subset_cache[1]

    def render(self, rotations: torch.Tensor, z: torch.Tensor | None, half: torch.Tensor | None = None,
               normal_offset: float = 0.0) -> torch.Tensor:
        """Hartley values of the central slices at ``rotations`` ``(B, 3, 3)`` for latents ``z``.

        Returns ``(B, P)`` in the model's pixel order, or ``(B, 2 M' + 1)`` for the half-plane positions ``half``
        ``(M',)`` only (``[half, their mates, DC]``). ``normal_offset`` (cycles/pixel; pose refinement's
        derivatives) moves the half-plane points along the slice normal (the mates, negated points, move by minus
        it).
        """
        B = rotations.shape[0]
        m = self.pixels.n_half
        if half is None:
            freqs = self.freqs[: m + 1].clone()  # half-plane + a dummy row replaced by DC below
        else:
            freqs = torch.cat([self.freqs[half], self.freqs[:1]])
            m = half.numel()
        freqs[m] = 0.0
        q = central_slice_coords(rotations, freqs, normal_offset)  # (B, m + 1, 3)
        return hartley_from_half_plane(self.decoder(q, z), m).reshape(B, -1)

    def ctf_values(self, ctf: torch.Tensor | None) -> torch.Tensor | None:
        """CTF ``(B, P)`` at the model's pixels for :class:`CTFTensors` ``(B,)`` (``None`` -> ``None``)."""
        if ctf is None:
            return None
        return compute_ctf(self.freqs / self.pixel_size_angstrom, ctf)

    def transfer(self, ctf_values: torch.Tensor) -> torch.Tensor:
        """What multiplies the rendered slice: the CTF, or ``CTF^2`` for CTF-premultiplied images."""
        return ctf_values * ctf_values if self.ctf_premultiplied else ctf_values

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss and its terms for a batch (``y``, ``rot``, optional ``ctf``); see the module docstring."""
        y = batch["y"]
        ctf = self.ctf_values(batch.get("ctf"))
        terms: dict[str, torch.Tensor] = {}
        z = None
        if self.zdim > 0:
            mu, logvar = self.encode(y, ctf)
            z = reparameterize(mu, logvar, self.training)
            terms["kl"] = kl_divergence(mu, logvar)
            if self.consensus_only:  # ab initio search phase: one consensus map (set_consensus_only)
                cls = batch.get("class_index")
                if cls is None:
                    z = z * 0.0
                else:  # several class maps (abinit --classes): the decoder at each image's class code
                    code = class_codes(cls, self.zdim).to(mu)
                    terms["class_fit"] = class_code_kl(mu, logvar, code).mean()
                    z = z * 0.0 + code
        subset = self.pixel_subset()
        if subset is None:
            pred = self.render(batch["rot"], z)
            target = y
        else:
            pred = self.render(batch["rot"], z, subset[: (subset.numel() - 1) // 2])
            target, ctf = y[:, subset], (None if ctf is None else ctf[:, subset])
        if ctf is not None:
            if self.ctf_field > 1:
                pred = self.ctf_in_field(pred, batch["ctf"], None if subset is None else self.pixels.index[subset])
                if self.ctf_premultiplied:  # the box's spectrum multiplied by the CTF once more, after the cut
                    pred = pred * ctf
            else:
                pred = pred * self.transfer(ctf)
        weight = batch.get("weight")
        if weight is not None:
            if subset is not None:
                raise RuntimeError("focus weights (train --focus-mask) need the full lattice (no --freq-march)")
            pred = self.weight_in_real_space(pred, weight)
        if ctf is not None and self.ctf_premultiplied:
            recon = torch.mean(premultiplied_weights(ctf) * (pred - target) ** 2)
        else:
            recon = torch.mean((pred - target) ** 2)
        terms["recon"] = recon
        loss = recon
        if "kl" in terms:
            loss = loss + self.beta * terms["kl"] / y.shape[1]
        if "class_fit" in terms:  # the encoder learns the class codes, ready for the latent's switch-on
            loss = loss + terms["class_fit"] / y.shape[1]
        terms["loss"] = loss
        return terms

    def ctf_in_field(self, values: torch.Tensor, ctf, index: torch.Tensor | None = None) -> torch.Tensor:
        """The images of rendered slices, formed as in a micrograph (module docstring, ``ctf_field``).

        Parameters
        ----------
        values : ``(B, P')`` Hartley values of the slices at the model's pixels (``index`` ``(P',)``: their flat
            ``D * D`` positions; default all of the model's pixels), zero elsewhere (band-limited to the lattice).
        ctf : :class:`~cryoscape.imaging.ctf.CTFTensors` ``(B,)``.

        Returns
        -------
        ``(B, P')`` Hartley values of ``window * crop_D(IFT_FD(CTF_FD * FT_FD(pad_FD(IFT_D(values)))))`` at the
        same pixels (the CTF is real and even, so it multiplies Hartley values as it does Fourier ones).
        """
        B, D = values.shape[0], self.D
        FD = self.ctf_field * D
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()  # --amp: FFTs in float32 (CUDA has no bfloat16 FFT)
        if index is None:
            index = self.pixels.index
        index = index.to(values.device)
        grid = values.new_zeros(B, D * D).index_copy(1, index, values)
        projection = ihartley2(grid.reshape(B, D, D))  # centre at pixel D // 2
        o = FD // 2 - D // 2  # the box's centre onto the field's
        field = torch.nn.functional.pad(projection, (o, FD - D - o, o, FD - D - o))
        freqs = self.field_freqs if self.field_freqs is not None else freq_grid_2d(FD).reshape(-1, 2)
        freqs = freqs.to(device=values.device, dtype=values.dtype)
        ctf_field = compute_ctf(freqs / self.pixel_size_angstrom, ctf).reshape(B, FD, FD).to(values.dtype)
        image = ihartley2(hartley2(field) * ctf_field)[:, o:o + D, o:o + D]
        if self.window is not None:
            image = image * self.window.to(values.dtype)
        return hartley2(image).reshape(B, D * D)[:, index]

    def weight_in_real_space(self, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Hartley pixels ``(B, P)`` of ``weight * image``, ``image`` the centred real-space image whose Hartley
        pixels are ``values`` ``(B, P)`` (zero outside the model's pixels), ``weight`` ``(B, D, D)``: how
        ``train --focus-mask`` weights the rendered slices as the images were (:mod:`cryoscape.data.focus`).
        """
        B, D = values.shape[0], self.D
        index = self.pixels.index.to(values.device)
        grid = values.new_zeros(B, D * D).index_copy(1, index, values)
        image = ihartley2(grid.reshape(B, D, D)) * weight.to(values.dtype)
        return hartley2(image).reshape(B, D * D)[:, index]

    def _batch_for_poses(self, batch: dict[str, torch.Tensor], half: torch.Tensor):
        """``(z, transfer, weight)`` of a batch for the pose predictors: posterior-mean latents (``None`` when
        homogeneous), what multiplies a slice and the premultiplied images' error weights (``None``: 1) at the
        positions ``[half, mates, DC]``.
        """
        ctf = self.ctf_values(batch.get("ctf"))
        z = self.encode(batch["y"], ctf)[0] if self.zdim > 0 and not self.consensus_only else None
        m = self.pixels.n_half
        positions = torch.cat([half, half + m, torch.tensor([2 * m], device=half.device)])
        if ctf is None:
            return z, None, None
        ctf = ctf[:, positions]
        return z, self.transfer(ctf), premultiplied_weights(ctf) if self.ctf_premultiplied else None

    @torch.no_grad()
    def pose_predictor(self, batch: dict[str, torch.Tensor], half: torch.Tensor):
        """For local pose refinement (``models.poses.PoseRefiner.local_update``): a function ``rotations (B, 3, 3)
        -> (B, 2 M' + 1)`` giving the model's prediction of the batch's images (CTF-modulated slices, latents at
        the posterior means of ``batch["y"]``) at the half-plane positions ``half`` ``(M',)``
        (``[half, their mates, DC]`` order, as :meth:`render`).
        """
        from cryoscape.models.poses import SlicePredictor

        z, transfer, _ = self._batch_for_poses(batch, half)

        def along_normal(rotations: torch.Tensor, delta: float) -> torch.Tensor:
            pred = self.render(rotations, z, half, normal_offset=delta)
            return pred if transfer is None else pred * transfer

        return SlicePredictor(lambda rotations: along_normal(rotations, 0.0), along_normal)

    @torch.no_grad()
    def pose_search_predictor(self, batch: dict[str, torch.Tensor], half: torch.Tensor, radius_cycles: float,
                              oversample: float | None = None, class_index: int | None = None):
        """For ab initio pose search (:mod:`cryoscape.models.pose_search`): a
        :class:`~cryoscape.models.pose_search.SearchPredictor` of the batch's images at the half-plane positions
        ``half`` ``(M',)`` (``[half, mates, DC]`` order), all within ``radius_cycles`` (cycles/pixel).

        The decoder is evaluated once on a Cartesian grid of the ball of that radius (spacing ``1 / (oversample
        D)``; default oversampling 2 for the homogeneous model, whose one grid serves every image, and 1 for a
        heterogeneous one, one grid per image at its posterior-mean latent) and the slices of any rotation are its
        trilinear samples. ``class_index`` (the consensus phase of ``abinit --classes``): the one map of that
        class (the decoder at :func:`class_codes`), shared by every image.
        """
        from cryoscape.models.pose_search import decoder_search_predictor

        z, transfer, weight = self._batch_for_poses(batch, half)
        shared_z = None
        if class_index is not None:
            if not self.consensus_only:
                raise RuntimeError("class maps are searched in the consensus phase only (set_consensus_only)")
            shared_z = class_codes(torch.tensor([int(class_index)]), self.zdim).to(batch["y"].device)
        freqs = torch.cat([self.freqs[half], self.freqs[:1] * 0.0])  # the half-plane points and DC
        return decoder_search_predictor(self.decoder, z, self.zdim, self.D, radius_cycles, freqs, transfer, weight,
                                        batch["y"].device, oversample, shared_z=shared_z)

    @torch.no_grad()
    def latent_means(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Posterior means ``(B, zdim)`` of a batch."""
        return self.encode(batch["y"], self.ctf_values(batch.get("ctf")))[0]

    # -- volumes --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_volume_batch(self, z: torch.Tensor | None = None, chunk: int = 65536) -> torch.Tensor:
        """Real-space volumes ``(b, D, D, D)`` for latents ``z`` ``(b, zdim)`` (``None``: the homogeneous map, b = 1).

        The decoder is evaluated on every voxel of the centred ``D^3`` Fourier grid inside the sphere of radius
        ``D/2``, for all ``b`` latents in one call per chunk of ``chunk // b`` coordinates; values are rescaled
        by the data normalisation so that projections of the volume match the input images.
        """
        D = self.D
        device = self.norm_std.device
        k = (torch.arange(D, device=device, dtype=torch.float32) - D // 2) / D
        grid = torch.stack(torch.meshgrid(k, k, k, indexing="ij"), dim=-1)  # [z, y, x] -> (kz, ky, kx)
        coords = grid.flip(-1).reshape(-1, 3)  # (x, y, z)
        inside = torch.nonzero(coords.norm(dim=1) < 0.5).squeeze(1)
        zb = None if z is None else torch.as_tensor(z, dtype=torch.float32, device=device).reshape(-1, self.zdim)
        b = 1 if zb is None else zb.shape[0]
        values = torch.zeros(b, D**3, dtype=torch.complex64, device=device)
        step = max(1, chunk // b)
        for start in range(0, inside.numel(), step):
            idx = inside[start : start + step]
            out = self.decoder(coords[idx][None].expand(b, -1, -1), zb)
            values[:, idx] = torch.complex(out[..., 0], out[..., 1])
        dc = (D // 2) * D * D + (D // 2) * D + D // 2
        values[:, dc] = values[:, dc].real + 0j
        volume = ifft3_centered(values.reshape(b, D, D, D)).real
        return volume * self.norm_std

    @torch.no_grad()
    def generate_volume(self, z: torch.Tensor | None = None, chunk: int = 65536) -> torch.Tensor:
        """Real-space volume ``(D, D, D)`` for one latent ``z`` (``(zdim,)``; ``None`` when homogeneous)."""
        return self.generate_volume_batch(None if z is None else torch.as_tensor(z).reshape(1, -1), chunk)[0]

    def generate_volumes(self, z: np.ndarray | None, batch_size: int = 1) -> np.ndarray:
        """Volumes ``(n, D, D, D)`` float32 for latents ``z`` ``(n, zdim)`` (``None`` -> the one homogeneous map),
        decoded ``batch_size`` latents at a time.
        """
        if z is None or self.zdim == 0:
            return self.generate_volume(None).cpu().numpy()[None].astype(np.float32)
        return volumes_in_batches(z, self.zdim, batch_size, self.generate_volume_batch, self.D)


class CryoDRGNFamily(ModelFamily):
    """cryoDRGN: MLP encoder + coordinate-network decoder on Fourier slices."""

    name = "cryodrgn"
    # lr 1e-3 and batch 32: on data sets of a few thousand particles and 20 epochs, lr 1e-4 with batch 16 leaves
    # the model unconverged (the demo's data: ARI 0.465 against 0.875 with these values, issue 20; the
    # benchmarks: bench/RESULTS.md sections 3 and 7b)
    default_batch_size = 32
    default_lr = 1e-3
    data_state = ("pixel_size_angstrom", "norm_std")
    refines_poses = True  # train --refine-poses (models/poses.py)
    searches_poses = True  # cryoscape abinit (models/pose_search.py, CryoDRGN.pose_search_predictor)

    def validate(self, config):
        """The shared checks, and ``--focus-mask``'s: it needs a consensus map (``cryoscape train`` makes one) and
        cannot be combined with ``--freq-march`` or ``--refine-poses``.
        """
        super().validate(config)
        m = config.model
        if getattr(m, "focus_mask", None):
            if not m.focus_consensus:
                raise InputError("--focus-mask needs a consensus map (focus_consensus): `cryoscape train` "
                                 "back-projects one; from Python give one (cryoscape.cli._focus.focus_consensus_map)")
            if m.freq_march > 0:
                raise InputError("--focus-mask cannot be combined with --freq-march (the per-pixel weighting needs "
                                 "the full lattice)")
            if config.train.refine_poses or config.train.abinit:
                raise InputError("--focus-mask cannot be combined with --refine-poses or abinit (the subtraction and "
                                 "the weights use the consensus poses)")

    def make_data(self, particles, config, norm_std=None, progress=True):
        """The Hermitian-half Fourier pixels of ``particles`` (:class:`SliceParticleData`); with ``--focus-mask``
        the consensus outside the mask subtracted and the focus weights applied (:mod:`cryoscape.data.focus`).
        """
        from cryoscape.data.fourier_pixels import FourierPixels
        from cryoscape.data.particle_data import SliceParticleData

        d, m = config.data, config.model
        focus = None
        if getattr(m, "focus_mask", None):
            from cryoscape.data.focus import FocusSubtraction, load_focus_map

            D, apix = particles.images.D, particles.pixel_size_angstrom
            mask = load_focus_map(m.focus_mask, D, apix, "mask")
            consensus = load_focus_map(m.focus_consensus, D, apix, "consensus")
            focus = FocusSubtraction(mask, consensus, apix,
                                     ctf_premultiplied=bool(getattr(particles, "ctf_premultiplied", False)))
            log.info("--focus-mask %s: consensus %s subtracted outside the mask, images weighted by the share of "
                     "their rays' density inside it", m.focus_mask, m.focus_consensus)
        return SliceParticleData(particles, FourierPixels.create(particles.images.D), invert=d.invert_data,
                                 window=d.window, window_inner=d.window_inner, lazy=d.lazy, norm_std=norm_std,
                                 progress=progress, focus=focus)

    def build_info(self, data) -> dict:
        """The shared build values, and with ``--focus-mask`` the fitted consensus scale (``focus_scale``, for the
        record: a resumed run fits it again on the same images).
        """
        info = super().build_info(data)
        focus = getattr(data, "focus", None)
        if focus is not None:
            info["focus_scale"] = float(focus.scale)
        return info

    def build_model(self, config, build: dict) -> CryoDRGN:
        """A :class:`CryoDRGN` from the model and train options and the build values."""
        m = config.model
        return CryoDRGN(D=int(build["D"]), pixel_size_angstrom=float(build["pixel_size_angstrom"]), zdim=m.zdim,
                        enc_dim=m.enc_dim, enc_layers=m.enc_layers, dec_dim=m.dec_dim, dec_layers=m.dec_layers,
                        pe_type=m.pe_type, pe_dim=m.pe_dim, feat_sigma=m.feat_sigma, activation=m.activation,
                        beta=config.train.beta, norm_std=float(build["norm_std"]),
                        freq_march_epochs=m.freq_march, march_start=m.march_start,
                        ctf_premultiplied=bool(build.get("ctf_premultiplied", False)),
                        ctf_field=int(getattr(m, "ctf_field", 1)),
                        window=make_window(int(build["D"]), config.data.window, config.data.window_inner)
                        if int(getattr(m, "ctf_field", 1)) > 1 else None)
