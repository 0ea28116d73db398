"""Ab initio pose estimation: hierarchical search over SO(3) x in-plane shifts (``cryoscape abinit``).

Each particle's pose is found by comparing its image with the model's CTF-modulated central slices at every
rotation of a uniform HEALPix grid (:mod:`cryoscape.imaging.so3_grid`, level ``base_level``: 576 rotations 30
degrees apart at level 1) and every shift of a square grid, on the Fourier pixels within the current *lattice
radius* only (low resolution first), then refining the ``top_k`` best rotations on the finer grids below them (the
8 children of each, ``n_levels`` times: 3.75 degrees after three levels from level 1) while halving the shift step.
The score is the training loss itself, the (weighted) squared error::

    E(b, r, t) = sum_p w_bp (T_t y_bp - c_bp P_r[p])^2
               = sum_p w y_t^2 - 2 sum_p (w c y_t) P_r + sum_p (w c^2) P_r^2

so that for the homogeneous model, whose slices ``P_r`` are the same for every image, the global level is one
matrix product ``(B S, P) @ (P, R)`` for all images ``b``, shifts ``t`` (applied to the images as phase factors,
:func:`~cryoscape.models.poses.hartley_translate`) and rotations ``r`` at once.

The slices come from the decoder evaluated once per batch on a Cartesian 3-D grid of the low-resolution Fourier
ball (spacing ``1 / (oversample D)`` cycles/pixel; for a heterogeneous model one grid per image, at the image's
posterior-mean latent) and sampled at the rotated lattice points by trilinear interpolation: one decoder pass for
any number of rotations. :class:`SearchPredictor` is what a model returns for this (``pose_search_predictor``).

:class:`PoseSearcher` runs the search inside training (the engine's pose-refiner hook): the poses start as uniform
random rotations; the first ``pretrain_images`` images of training use them as they are (the decoder learns a first
blob), then every training batch of a *search epoch* is searched against the current decoder before its training
step, the lattice radius growing from ``radius_start_px`` to ``radius_end_px`` over the search epochs. Once few
poses still move (in the last search epoch fewer than ``stable_fraction``, 10 %, of the particles moved by more than
twice the finest grid spacing, 7.5 degrees, and fewer than ``stable_far_fraction``, 5 %, by more than four times it;
after at least ``min_search_epochs`` complete searches of every particle; at the latest after ``max_search_epochs``
of them) the searcher switches to the local Gauss-Newton steps of :class:`~cryoscape.models.poses.PoseRefiner`
(``--pose-method local`` of ``train --refine-poses``) for the remaining epochs. The poses are stored as the pose
table's corrections of identity rotations and zero origins, so the run folder's learned poses (``RUN/poses/``) are
the estimated poses.

A heterogeneous model is searched *consensus first*: during the search epochs its decoder is given the latent 0
(one map for all images, searched like a homogeneous one) and the latent is switched on when the local phase
starts. Searching each image against the map at its own latent from the start let the latent absorb the pose
(poses never converged on ``discrete3``; ``bench/RESULTS.md``), and the shared grid is also far cheaper.

Tilt series (``cryoscape abinit --model tomodrgn``): a particle's tilt images share one unknown rotation; their
rotations relative to the particle's reference tilt (``R_t = A_t A_ref^T``, the tilt geometry) are known and kept
(``cryoscape.train.run.without_poses``). :func:`grouped_search` scores each candidate rotation ``A`` of the same
hierarchy by the weighted squared errors of all the particle's tilts ``t``, each against the slice at ``R_t A``,
summed (the tomodrgn loss weights: dose and tilt weights, lattice mask, padding tilts 0); the shift candidates are
2-D shifts in the reference tilt's frame (a 3-D shift of zero depth), projected into every tilt as
:func:`~cryoscape.models.poses.tilt_compose` does. :class:`TiltPoseSearcher` runs it in :class:`PoseSearcher`'s
schedule with :class:`~cryoscape.models.poses.TiltPoseRefiner`'s pose (a rotation and a 3-D shift per particle)
and local Gauss-Newton phase.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cryoscape.imaging import so3_grid
from cryoscape.models.poses import PoseRefiner, TiltPoseRefiner, _get, _replace, hartley_translate, so3_log

log = logging.getLogger("cryoscape")

# A search whose last complete epoch still moved more than this share of the poses by more than four times the
# finest grid spacing (15 degrees with the default grids) has probably not converged: converged searches at SNR 0.1
# still move 17 % that far, one that never posed a pseudo-symmetric heterogeneous set (bench/RESULTS.md 14e,
# `--zdim 0` on `discrete3`) moved 55-76 % in its last three search epochs.
NOT_CONVERGED_FAR_FRACTION = 0.5

__all__ = ["default_search_epochs", "SearchPredictor", "decoder_grid", "decoder_search_predictor",
           "map_search_predictor", "sample_slices",
           "shift_grid", "hierarchical_search", "PoseSearcher", "random_rotations", "search_radii", "grouped_search",
           "TiltPoseSearcher"]


@dataclasses.dataclass
class SearchPredictor:
    """The model's predicted images for a pose search of one batch.

    ``slices(rotations)``: rotations ``(R, 3, 3)`` (``shared``: the same slices for every image, the homogeneous
    model) or ``(B, R, 3, 3)`` (one set per image; also accepted when ``shared``) -> Hartley values ``(R, P')`` or
    ``(B, R, P')`` at the searched positions (``[half, mates, DC]`` order), *without* the CTF.
    ``transfer``: ``(B, P')`` what multiplies a slice (the CTF, or its square for premultiplied images; ``None``:
    no CTF). ``weight``: ``(B, P')`` per-pixel weights of the squared error (``None``: 1).
    """

    slices: Callable[[torch.Tensor], torch.Tensor]
    transfer: torch.Tensor | None
    weight: torch.Tensor | None
    shared: bool


def decoder_grid(decode: Callable[[torch.Tensor], torch.Tensor], radius_cycles: float, spacing_cycles: float,
                 batch: int, device, chunk: int = 65536, hermitian: bool = False) -> torch.Tensor:
    """The decoder's raw output on a Cartesian grid of the Fourier ball, for trilinear sampling.

    ``decode(coords (b, n, 3)) -> (b, n, C)``, coordinates ``(kx, ky, kz)`` in cycles/pixel; evaluated on the grid
    points ``k = (i - G) * spacing_cycles`` (``i = 0 .. 2G``, ``G = ceil(radius / spacing) + 1``) within the ball of
    radius ``radius_cycles + 2 spacing`` (zero outside), ``chunk // batch`` points per call. ``hermitian``: the
    output is ``(re, im)`` of a Hermitian function (``F(-k) = conj F(k)``, the coordinate decoders), so only the
    half ``k_z <= 0`` is evaluated and the other half filled from it (the grid is symmetric: ``-k`` is the point at
    the mirrored flat index). Returns ``(batch, C, 2G+1, 2G+1, 2G+1)`` in ``[z, y, x]`` order
    (``torch.nn.functional.grid_sample``'s layout).
    """
    G = int(math.ceil(radius_cycles / spacing_cycles)) + 1
    k = (torch.arange(2 * G + 1, device=device, dtype=torch.float32) - G) * spacing_cycles
    coords = torch.stack(torch.meshgrid(k, k, k, indexing="ij"), dim=-1).flip(-1).reshape(-1, 3)  # (x, y, z)
    ball = coords.norm(dim=1) <= radius_cycles + 2.0 * spacing_cycles
    n_total = coords.shape[0]
    if hermitian:  # flat index j and n_total - 1 - j hold k and -k; evaluate the first half (k_z <= 0) only
        ball &= torch.arange(n_total, device=device) <= (n_total - 1) // 2
    inside = torch.nonzero(ball).squeeze(1)
    out = None
    step = max(1, chunk // max(1, batch))
    for start in range(0, inside.numel(), step):
        idx = inside[start : start + step]
        values = decode(coords[idx][None].expand(batch, -1, -1)).float()  # (batch, n, C)
        if out is None:
            out = torch.zeros(batch, values.shape[-1], coords.shape[0], device=device)
        out[:, :, idx] = values.transpose(1, 2)
    assert out is not None
    if hermitian:
        mirror = n_total - 1 - inside
        out[:, 0, mirror] = out[:, 0, inside]
        out[:, 1, mirror] = -out[:, 1, inside]
    return out.reshape(batch, -1, 2 * G + 1, 2 * G + 1, 2 * G + 1)


def sample_slices(grid: torch.Tensor, spacing_cycles: float, rotations: torch.Tensor, freqs: torch.Tensor
                  ) -> torch.Tensor:
    """Trilinear samples of ``grid`` (:func:`decoder_grid`, ``(b, C, n, n, n)``) at the central-slice points
    ``[kx, ky, 0] @ A`` of ``freqs`` ``(P, 2)`` (cycles/pixel) for ``rotations`` ``(b, R, 3, 3)`` (``b`` = the
    grid's batch; ``b = 1`` grids serve any number of rotation sets given as ``(1, R, 3, 3)``). Returns
    ``(b, R, P, C)``.
    """
    b, R = rotations.shape[:2]
    n = grid.shape[-1]
    half_extent = (n - 1) / 2 * spacing_cycles
    q = freqs.to(rotations.dtype) @ rotations[..., :2, :]  # (b, R, P, 3): kx A[0] + ky A[1]
    q = (q / half_extent).reshape(b, R, -1, 1, 3)  # grid_sample's (x, y, z) in [-1, 1]
    out = F.grid_sample(grid, q.to(grid.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(b, grid.shape[1], R, -1).permute(0, 2, 3, 1)  # (b, R, P, C)


def decoder_search_predictor(decoder: Callable, z: torch.Tensor | None, zdim: int, D: int, radius_cycles: float,
                             freqs: torch.Tensor, transfer, weight, device, oversample: float | None = None,
                             shared_z: torch.Tensor | None = None) -> SearchPredictor:
    """A :class:`SearchPredictor` from a coordinate decoder ``decoder(q (b, n, 3), z)`` (cycles/pixel -> the two
    Fourier channels): the decoder evaluated once on a Cartesian grid of the ball of radius ``radius_cycles``
    (:func:`decoder_grid`, spacing ``1 / (oversample D)``; default oversampling 2 for one shared map, 1 for one
    grid per image) and the slices of any rotation its trilinear samples (:func:`sample_slices`) at ``freqs``
    ``(M' + 1, 2)`` (the half-plane points, then DC), as Hartley values ``[half, mates, DC]``.

    ``z``: ``(B, zdim)`` posterior-mean latents, one grid per image; ``None``: one map for every image (the
    homogeneous model, or a heterogeneous one's consensus, its map at the latent ``shared_z`` ``(1, zdim)``, default
    0: a class map of ``abinit --classes``). ``transfer``, ``weight``: as :class:`SearchPredictor`.
    """
    from cryoscape.models.vae import hartley_from_half_plane

    os_ = float(oversample if oversample is not None else (2.0 if z is None else 1.0))
    spacing = 1.0 / (os_ * D)
    b = 1 if z is None else z.shape[0]
    if z is not None or zdim == 0:
        z_dec = z
    else:
        z_dec = shared_z.to(device) if shared_z is not None else torch.zeros(1, zdim, device=device)
    grid = decoder_grid(lambda q: decoder(q, z_dec), float(radius_cycles), spacing, b, device, hermitian=True)
    n_half = freqs.shape[0] - 1

    def slices(rotations: torch.Tensor) -> torch.Tensor:
        single = rotations.dim() == 3
        rots = rotations[None] if single else rotations
        if z is None and rots.shape[0] > 1:  # one grid, several rotation sets: sample them as one
            B, R = rots.shape[:2]
            out = sample_slices(grid, spacing, rots.reshape(1, B * R, 3, 3), freqs).reshape(B, R, -1, 2)
        else:
            out = sample_slices(grid, spacing, rots, freqs)
        values = hartley_from_half_plane(out, n_half)
        return values[0] if single else values

    return SearchPredictor(slices=slices, transfer=transfer, weight=weight, shared=z is None)


def map_search_predictor(volume: np.ndarray, radius_cycles: float, freqs: torch.Tensor, transfer=None,
                         weight=None, scale: float = 1.0) -> SearchPredictor:
    """A shared :class:`SearchPredictor` of a known real-space map ``volume`` ``(D, D, D)`` (``[z, y, x]``, centre
    voxel ``D // 2``): its slices are trilinear samples of the map's centred 3-D Fourier transform (2x zero
    padding, spacing ``1 / (2 D)`` cycles/pixel) within ``radius_cycles`` at ``freqs`` ``(M' + 1, 2)`` (the
    half-plane points, then DC), as Hartley values ``[half, mates, DC]`` times ``scale``: what the decoder grid of
    a perfect decoder gives (a search against a reference map; tests and ``bench/abinit_oracle.py``).
    """
    from cryoscape.models.vae import hartley_from_half_plane

    D = volume.shape[0]
    Dp = 2 * D
    pad = np.zeros((Dp, Dp, Dp))
    s = (Dp - D) // 2
    pad[s : s + D, s : s + D, s : s + D] = volume
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(pad)))
    spacing = 1.0 / Dp
    G = int(np.ceil(radius_cycles / spacing)) + 1
    c = Dp // 2
    if G > c:
        raise ValueError(f"radius {radius_cycles} cycles/pixel is beyond the padded transform of a {D}-box map")
    sub = F[c - G : c + G + 1, c - G : c + G + 1, c - G : c + G + 1]
    grid = torch.tensor(np.stack([sub.real, sub.imag]), dtype=torch.float32)[None]
    n_half = freqs.shape[0] - 1

    def slices(rotations: torch.Tensor) -> torch.Tensor:  # (R, 3, 3) -> (R, P'); (B, R, 3, 3) -> (B, R, P')
        single = rotations.dim() == 3
        r = rotations[None] if single else rotations
        B, R = r.shape[:2]
        out = sample_slices(grid, spacing, r.reshape(1, B * R, 3, 3), freqs).reshape(B, R, -1, 2)
        values = hartley_from_half_plane(out, n_half) * scale
        return values[0] if single else values

    return SearchPredictor(slices=slices, transfer=transfer, weight=weight, shared=True)


def shift_grid(extent_px: float, step_px: float, device=None) -> torch.Tensor:
    """Shifts ``(S, 2)`` in pixels on a square grid of spacing ``step_px`` within ``|t_x|, |t_y| <= extent_px``
    (the origin included).
    """
    n = int(math.floor(extent_px / step_px + 1e-9))
    g = torch.arange(-n, n + 1, dtype=torch.float32, device=device) * step_px
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).reshape(-1, 2)


def _translated(y: torch.Tensor, freqs: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``y`` ``(B, P)`` translated by every shift of ``shifts`` ``(S, 2)`` or ``(B, S, 2)`` -> ``(B, S, P)``."""
    B, P = y.shape
    if shifts.dim() == 2:
        shifts = shifts[None].expand(B, -1, -1)
    S = shifts.shape[1]
    out = hartley_translate(y[:, None].expand(B, S, P).reshape(B * S, P), freqs, shifts.reshape(B * S, 2))
    return out.reshape(B, S, P)


def _errors_shared(y_t: torch.Tensor, slices: torch.Tensor, transfer, weight) -> torch.Tensor:
    """Squared errors ``(B, S, R)`` of translated images ``y_t`` ``(B, S, P)`` against shared slices ``(R, P)``."""
    w = torch.ones_like(y_t[:, 0]) if weight is None else weight  # (B, P)
    c = torch.ones_like(w) if transfer is None else transfer
    a = (w[:, None] * y_t * y_t).sum(-1)  # (B, S)
    cross = (y_t * (w * c)[:, None]) @ slices.T  # (B, S, R)
    norm = (w * c * c) @ (slices * slices).T  # (B, R)
    return a[:, :, None] - 2.0 * cross + norm[:, None, :]


def _errors_per_image(y_t: torch.Tensor, slices: torch.Tensor, transfer, weight) -> torch.Tensor:
    """Squared errors ``(B, S, R)`` of translated images ``y_t`` ``(B, S, P)`` against per-image slices
    ``(B, R, P)``.
    """
    w = torch.ones_like(y_t[:, 0]) if weight is None else weight  # (B, P)
    c = torch.ones_like(w) if transfer is None else transfer
    a = (w[:, None] * y_t * y_t).sum(-1)  # (B, S)
    cross = torch.bmm(y_t * (w * c)[:, None], slices.transpose(1, 2))  # (B, S, R)
    norm = ((w * c * c)[:, None] * slices * slices).sum(-1)  # (B, R)
    return a[:, :, None] - 2.0 * cross + norm[:, None, :]


def _errors_own(y_t: torch.Tensor, slices: torch.Tensor, transfer, weight) -> torch.Tensor:
    """Squared errors ``(B, K, S)`` of per-candidate translated images ``y_t`` ``(B, K, S, P)`` against the
    candidates' slices ``(B, K, P)``.
    """
    pred = slices if transfer is None else slices * transfer[:, None]
    diff = y_t - pred[:, :, None]
    sq = diff * diff
    if weight is not None:
        sq = sq * weight[:, None, None]
    return sq.sum(-1)


def global_candidates(best_err: torch.Tensor, top_k: int, n_values: float | torch.Tensor,
                      sample_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(errors, indices)`` ``(B, k)`` of the global-level rotations a search refines, from the errors
    ``best_err`` ``(B, R)`` of every rotation at its best shift: the ``top_k`` best, or with ``sample_generator``
    one rotation per image drawn from its posterior ``exp(-(E_r - E_min) / (2 sigma^2))``, ``sigma^2 = E_min /
    n_values`` the image's residual variance per compared value (white Gaussian noise; ``n_values``: a number or
    ``(B,)``, the sum of the error's weights), by Gumbel-max with that
    generator (reproducible). Drawing instead of taking the best is stochastic EM: in expectation the decoder
    trains on the posterior-weighted poses, and early wrong maps do not lock the assignments in.
    """
    if sample_generator is None:
        return best_err.topk(min(top_k, best_err.shape[1]), dim=1, largest=False)
    e_min = best_err.min(dim=1, keepdim=True).values
    n = torch.as_tensor(n_values, dtype=e_min.dtype, device=e_min.device).reshape(-1, 1).clamp_min(1.0)
    sigma2 = e_min.clamp_min(1e-12) / n
    log_post = -(best_err - e_min).double() / (2.0 * sigma2.double())
    u = torch.rand(best_err.shape, generator=sample_generator, dtype=torch.float64).to(best_err.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-12)))
    idx = (log_post + gumbel).argmax(dim=1, keepdim=True)
    return best_err.gather(1, idx), idx


@torch.no_grad()
def hierarchical_search(predictor: SearchPredictor, y: torch.Tensor, freqs: torch.Tensor, base_level: int = 1,
                        n_levels: int = 3, top_k: int = 8, shift_extent_px: float = 4.0, shift_step_px: float = 2.0,
                        chunk: int = 1152, sample_generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best pose of each image of a batch by a coarse-to-fine search over rotations and in-plane shifts.

    Parameters
    ----------
    predictor : the model's :class:`SearchPredictor` for the batch.
    y : ``(B, P')`` the images' Hartley values at the searched positions (``[half (M'), mates (M'), DC]``).
    freqs : ``(M', 2)`` the half-plane frequencies (cycles/pixel) of those positions.
    base_level : level of the global :mod:`~cryoscape.imaging.so3_grid` (every rotation scored).
    n_levels : finer levels searched below the ``top_k`` best rotations of the level above (8 children each).
    shift_extent_px, shift_step_px : square grid of shifts of the global level; each finer level searches the 3 x 3
        shifts around its parent's best one at half the previous step.
    chunk : rotations per block of the global level (memory ``B x S x chunk`` scores and ``B x chunk x P'`` slices).
    sample_generator : draw the global-level rotation of each image from its posterior instead of keeping the
        ``top_k`` best (``None``: the best; :func:`global_candidates`); the finer levels refine the drawn one.

    Returns
    -------
    ``(rotations (B, 3, 3) float64, shifts (B, 2) pixels, error (B,))``: the RELION matrices ``A`` and the shifts
    ``t`` that best bring ``T_t y`` onto the prediction (apply them as the pose and the image translation), and
    the squared error there.
    """
    device = y.device
    B = y.shape[0]
    freqs = freqs.to(device=device, dtype=torch.float32)
    y = y.float()
    shifts0 = shift_grid(shift_extent_px, shift_step_px, device)  # (S, 2)
    y_t = _translated(y, freqs, shifts0)  # (B, S, P)
    rot0 = torch.as_tensor(so3_grid.grid_rotations(base_level), dtype=torch.float32, device=device)
    R = rot0.shape[0]
    best_err = torch.empty(B, R, device=device)
    best_shift = torch.empty(B, R, dtype=torch.long, device=device)
    for start in range(0, R, chunk):
        rots = rot0[start : start + chunk]
        if predictor.shared:
            err = _errors_shared(y_t, predictor.slices(rots), predictor.transfer, predictor.weight)  # (B, S, r)
        else:
            sl = predictor.slices(rots[None].expand(B, -1, -1, -1))  # (B, r, P)
            err = _errors_per_image(y_t, sl, predictor.transfer, predictor.weight)  # (B, S, r)
        e, s = err.min(dim=1)
        best_err[:, start : start + chunk] = e
        best_shift[:, start : start + chunk] = s
    n_values = y.shape[1] if predictor.weight is None else predictor.weight.float().sum(-1)

    def score_children(rots: torch.Tensor, parent_shifts: torch.Tensor) -> torch.Tensor:
        kp = parent_shifts.shape[1]
        # the 8 children of a candidate share its 9 translated images
        y_c = _translated(y, freqs, parent_shifts.reshape(B, kp * 9, 2)).reshape(B, kp, 1, 9, -1)
        sl = predictor.slices(rots).reshape(B, kp, 8, -1)  # (B, k, 8, P)
        return _errors_own(y_c.expand(-1, -1, 8, -1, -1).reshape(B, kp * 8, 9, -1), sl.reshape(B, kp * 8, -1),
                           predictor.transfer, predictor.weight)  # (B, K, 9)

    return _coarse_to_fine(best_err, best_shift, shifts0, n_values, score_children, base_level, n_levels, top_k,
                           shift_step_px, sample_generator)


def _coarse_to_fine(best_err: torch.Tensor, best_shift: torch.Tensor, shifts0: torch.Tensor,
                    n_values: float | torch.Tensor,
                    score_children: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], base_level: int,
                    n_levels: int, top_k: int, shift_step_px: float, sample_generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The finer levels of :func:`hierarchical_search` and :func:`grouped_search` from the global level's scores.

    ``best_err`` ``(B, R)`` and ``best_shift`` ``(B, R)`` (indices into ``shifts0`` ``(S, 2)``) are each image's
    (group's) error and best shift at every rotation of the global level; the ``top_k`` candidates
    (:func:`global_candidates`, drawn with ``sample_generator``) are refined on ``n_levels`` finer levels, where
    ``score_children(rots (B, 8k, 3, 3), parent_shifts (B, k, 9, 2)) -> (B, 8k, 9)`` scores the 8 children of each
    candidate at the 9 shifts around their parent's best one (the step halved per level).
    """
    device = best_err.device
    B = best_err.shape[0]
    err_k, idx_k = global_candidates(best_err, top_k, n_values, sample_generator)  # (B, k)
    shift_k = shifts0[best_shift.gather(1, idx_k)]  # (B, k, 2)
    idx_k_np = idx_k.cpu().numpy()
    level = base_level
    step = shift_step_px
    offsets = shift_grid(1.0, 1.0, device)  # (9, 2) unit offsets
    for _ in range(n_levels):
        level += 1
        step = step / 2.0
        children = so3_grid.child_indices(level - 1, idx_k_np).reshape(B, -1)  # (B, 8k): 8 per candidate
        rots = torch.as_tensor(so3_grid.grid_rotations(level, children), dtype=torch.float32, device=device)
        parent_shifts = shift_k[:, :, None, :] + step * offsets[None, None]  # (B, k, 9, 2)
        err = score_children(rots, parent_shifts)  # (B, K, 9)
        cand_shifts = parent_shifts.repeat_interleave(8, dim=1)  # (B, K, 9, 2)
        e, s = err.min(dim=2)  # (B, K)
        k = min(top_k, e.shape[1])
        err_k, pick = e.topk(k, dim=1, largest=False)
        idx_k_np = np.take_along_axis(children, pick.cpu().numpy(), axis=1)
        chosen_shift = cand_shifts.gather(2, s[:, :, None, None].expand(-1, -1, 1, 2)).squeeze(2)  # (B, K, 2)
        shift_k = chosen_shift.gather(1, pick[:, :, None].expand(-1, -1, 2))
    best = so3_grid.grid_rotations(level, idx_k_np[:, 0])
    return torch.as_tensor(best, dtype=torch.float64), shift_k[:, 0].cpu(), err_k[:, 0].cpu()


def random_rotations(n: int, seed: int) -> np.ndarray:
    """``n`` uniformly distributed rotation matrices ``(n, 3, 3)`` (float64), reproducibly from ``seed``."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=np.random.default_rng(seed)).as_matrix()


def default_search_epochs(n_particles: int) -> int:
    """Default most search epochs for ``n_particles``: about 60000 searched images, at least 10 and at most 40
    epochs (the decoder needs hundreds to thousands of steps to turn random poses into a consistent map, more at
    low SNR: on 5000 images of a 24 kDa protein at SNR 0.1, D=64, 63 % of the poses still moved by more than 7.5
    degrees after 4 complete searches; a small data set needs more passes for as many steps; the search stops
    earlier once the poses are stable).
    """
    return int(min(40, max(10, math.ceil(60000 / max(1, int(n_particles))))))


def search_radii(D: int) -> tuple[float, float]:
    """Default lattice radii (pixels) of the search at the first and the last search epoch for box ``D``:
    ``D/8`` and ``D/4``, at least 5 and 8 and at most 16 and 32 pixels (beyond 32 the grid of the decoder's
    values costs more than the training step; at D=128 and 1.5 A/px the search reaches 6 A).
    """
    return float(min(16, max(5, D // 8))), float(min(32, max(8, D // 4)))


class PoseSearcher(PoseRefiner):
    """Ab initio poses inside training: search epochs, then local refinement (module docstring).

    Parameters
    ----------
    n : particles of the data provider; ``half_freqs`` ``(M, 2)``: its half-plane frequencies (cycles/pixel).
    D : box; ``pixel_size_angstrom``: for the log's resolutions; ``seed``: of the random initial rotations.
    train_positions : the particles searched (the others, e.g. validation, keep their random rotations).
    pretrain_images : training images, from the start, that use the initial random poses before searching.
    min_search_epochs, max_search_epochs, stable_fraction, stable_far_fraction : when to switch to local
        refinement (module docstring).
    base_level, n_levels, top_k, shift_extent_px, shift_step_px : :func:`hierarchical_search`.
    radius_start_px, radius_end_px : lattice radius of the first and the last search epoch.
    search_radius : fraction of Nyquist compared by the local steps afterwards.
    consensus_first : a heterogeneous model (one with ``set_consensus_only``) is one consensus map while the poses
        are searched, its latent switched on with the local phase (``CryoDRGN.set_consensus_only``).
    search_draws : the first this many complete search epochs (and the partial one before them) draw each
        particle's global-level rotation from its posterior (:func:`global_candidates`) instead of taking the best;
        at most ``max_search_epochs - 2``. Those epochs never count as stable.
    latent_search_epochs : a heterogeneous model searched consensus first: after the consensus search, this many
        more search epochs against each image's own map (the decoder at its posterior-mean latent, switched on),
        before the local refinement; 0: straight to the local refinement. Give it only for models with a latent.
    n_classes : ``K >= 2`` (``abinit --classes K``, a heterogeneous model searched consensus first, ``K <= zdim``):
        the consensus phase keeps ``K`` class maps instead of one (the decoder at the class codes,
        :func:`~cryoscape.models.cryodrgn.class_codes`; the model's ``pose_search_predictor(..., class_index=k)``).
        Every particle starts in a random class; each search scores it against every class map and takes the pose
        of the class drawn from its annealed posterior ``p_k ~ exp(-beta (E_k - E_min) / (2 sigma^2))`` (as
        :func:`global_candidates`' ``sigma^2``), ``beta`` growing from ``1 / class_anneal_epochs`` to 1 over the
        first ``class_anneal_epochs`` complete searches (default half the most search epochs), then the best class.
        Classes that start alike thus part gradually (cryoSPARC's multi-class ab initio anneals its class
        posteriors likewise). The training step gives each image its class's code (``batch["class_index"]``).
        0 or 1: one consensus map.
    """

    def __init__(self, n: int, half_freqs: torch.Tensor, D: int, pixel_size_angstrom: float, seed: int = 0,
                 train_positions=None, pretrain_images: int = 1000, min_search_epochs: int = 3,
                 max_search_epochs: int = 10, stable_fraction: float = 0.1, stable_far_fraction: float = 0.05,
                 base_level: int = 1, n_levels: int = 3,
                 top_k: int = 8, shift_extent_px: float | None = None, shift_step_px: float | None = None,
                 radius_start_px: float | None = None, radius_end_px: float | None = None,
                 search_radius: float = 0.5, consensus_first: bool = True, search_draws: int = 0,
                 latent_search_epochs: int = 0, n_classes: int = 0, class_anneal_epochs: int | None = None):
        super().__init__(n, half_freqs, lr=0.0, start_epoch=1, method="local", search_radius=search_radius)
        self.D = int(D)
        self.apix = float(pixel_size_angstrom)
        r0, r1 = search_radii(self.D)
        self.radius_start_px = float(radius_start_px if radius_start_px is not None else r0)
        self.radius_end_px = float(radius_end_px if radius_end_px is not None else r1)
        self.pretrain_images = int(pretrain_images)
        self.consensus_first = bool(consensus_first)
        self.min_search_epochs = int(min_search_epochs)
        self.max_search_epochs = max(1, int(max_search_epochs))
        # the first complete searches draw the poses from their posteriors; at least two searches for the best
        self.search_draws = min(max(0, int(search_draws)), max(0, self.max_search_epochs - 2))
        self.latent_search_epochs = max(0, int(latent_search_epochs))
        self.n_classes = int(n_classes) if int(n_classes) >= 2 and consensus_first else 0
        self.class_anneal_epochs = max(1, int(class_anneal_epochs if class_anneal_epochs is not None
                                              else self.max_search_epochs // 2))
        # the class of each particle (abinit --classes), random to start with; checkpointed
        g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
        self.classes = (torch.randint(self.n_classes, (n,), generator=g) if self.n_classes
                        else torch.zeros(0, dtype=torch.long))
        self.seed = int(seed)
        self.stable_fraction = float(stable_fraction)
        self.stable_far_fraction = float(stable_far_fraction)
        self.base_level, self.n_levels, self.top_k = int(base_level), int(n_levels), int(top_k)
        # shifts: the global grid covers +-10 % of the box (real particles are centred to a few percent)
        self.shift_extent_px = float(shift_extent_px if shift_extent_px is not None else max(2.0, round(0.1 * D)))
        self.shift_step_px = float(shift_step_px if shift_step_px is not None
                                   else max(1.0, self.shift_extent_px / 3.0))
        self.final_spacing_deg = so3_grid.grid_spacing_deg(self.base_level + self.n_levels)
        self.base_level_size = so3_grid.grid_size(self.base_level)
        self.global_shifts = shift_grid(self.shift_extent_px, self.shift_step_px)
        rng_rot = random_rotations(n, seed)
        self.table.values[:, :3] = so3_log(torch.as_tensor(rng_rot)).float()
        self.n_searched_particles = n if train_positions is None else len(train_positions)
        # state (checkpointed): images trained on, the epoch the local phase starts (0: not yet), per-epoch counts
        self.images_seen = 0
        self.full_searches = 0  # epochs in which every particle was searched
        self.local_from = 0
        self.latent_from = 0  # the epoch the latent-aware search epochs start (0: none)
        self.epoch_counts = {"searched": 0, "moved": 0, "moved_far": 0, "error": 0.0, "class_changed": 0}
        self.history: list[dict] = []
        self._last_log = time.monotonic()
        self._last_loss = float("nan")
        self._counted_epoch = 1

    # -- the schedule -------------------------------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """``search`` or ``local`` in ``epoch``."""
        return "local" if self.local_from and epoch >= self.local_from else "search"

    def lattice_radius_px(self, epoch: int | None = None) -> float:
        """Lattice radius (pixels) of the search in progress: linear from the start to the end radius over
        ``max_search_epochs`` complete searches (epochs in which every particle was searched; a first epoch
        partly spent on pretraining does not count). ``epoch`` is accepted for symmetry and not used.
        """
        if self.max_search_epochs <= 1:
            return self.radius_end_px
        t = min(1.0, self.full_searches / (self.max_search_epochs - 1))
        return self.radius_start_px + t * (self.radius_end_px - self.radius_start_px)

    def radius(self, epoch: int) -> float:
        """Compared pixels of the local steps (a fraction of Nyquist): ``search_radius`` throughout."""
        return self.search_radius

    def active(self, epoch: int) -> bool:
        """Always (every epoch searches or refines); closes the previous epoch's counts when a new one starts."""
        if int(epoch) != self._counted_epoch:
            self._end_epoch(self._counted_epoch)
            self._counted_epoch = int(epoch)
        self._epoch = int(epoch)
        return True

    def _end_epoch(self, epoch: int) -> None:
        """Close ``epoch``'s counts; decide whether the next epoch refines locally."""
        c = self.epoch_counts
        if c["searched"] == 0:
            return
        frac = c["moved"] / c["searched"]
        far = c.get("moved_far", 0) / c["searched"]
        radius = self.lattice_radius_px()
        self.history.append({"epoch": epoch, "searched": c["searched"], "moved_fraction": frac,
                             "moved_far_fraction": far, "radius_px": radius, "error": c["error"] / c["searched"]})
        drawn = self.drawing()  # this epoch drew its poses from their posteriors
        self.history[-1]["drawn"] = drawn
        classes = ""
        if self.class_search_on(epoch):
            sizes = torch.bincount(self.classes, minlength=self.n_classes).tolist()
            changed = c.get("class_changed", 0) / c["searched"]
            self.history[-1].update(class_sizes=sizes, class_changed_fraction=changed,
                                    class_beta=self.class_beta())
            classes = (f"; classes {' / '.join(map(str, sizes))} (posterior weight {self.class_beta():.2g}), "
                       f"{100 * changed:.1f} % changed class")
        log.info(f"abinit epoch {epoch}: searched {c['searched']} particles at lattice radius {radius:.1f} px"
                 f"{' (poses drawn from their posteriors)' if drawn else ''}; "
                 f"{100 * frac:.1f} % moved by more than {2 * self.final_spacing_deg:g} deg, {100 * far:.1f} % by more "
                 f"than {4 * self.final_spacing_deg:g}; mean search error "
                 f"{c['error'] / c['searched']:.4g}{classes}")
        if c["searched"] >= self.n_searched_particles:  # every particle searched in this epoch
            self.full_searches += 1
        # stable: few poses moved by more than twice the finest spacing, and fewer by more than four times it. Looser
        # thresholds were tried: at SNR 1 a search that had not converged (a quarter of the poses within 10 degrees
        # of the truth) already had only 34 % of its poses moving by 7.5 and 11 % by 15 degrees; at SNR 0.1 the
        # poses of a converged search (95 % within 10 degrees) still moved 30 % and 17 % (tests, bench/RESULTS.md)
        stable = (not drawn and self.full_searches >= self.min_search_epochs and frac < self.stable_fraction
                  and far < self.stable_far_fraction)
        if not self.local_from and (stable or self.full_searches >= self.max_search_epochs):
            latent = self.latent_search_epochs if self.consensus_first else 0
            self.latent_from = epoch + 1 if latent else 0
            self.local_from = epoch + 1 + latent
            moved = (f"{100 * frac:.1f} % of the poses moved by more than {2 * self.final_spacing_deg:g} deg, "
                     f"{100 * far:.1f} % by more than {4 * self.final_spacing_deg:g}")
            then = (f"{latent} search epoch(s) against each image's own map (latent on) from epoch {epoch + 1}, "
                    f"local refinement from epoch {self.local_from}" if latent else
                    f"local refinement from epoch {epoch + 1}")
            if stable:
                log.info(f"abinit: poses stable after epoch {epoch} ({moved}); {then}")
            elif far > NOT_CONVERGED_FAR_FRACTION:
                log.warning(f"abinit: the search has probably not converged: after {self.full_searches} complete "
                            f"search epochs (--search-epochs) {moved} in the last. The map and the poses may be "
                            "wrong: check the map (and the report's pose table), and run again with more "
                            "--search-epochs or, for a heterogeneous sample, with --zdim N; states that look like "
                            f"each other turned can keep a search from settling (README). {then}")
            else:
                log.info(f"abinit: {self.full_searches} complete search epochs done (--search-epochs) with {moved} "
                         f"in the last; {then}")
        self.epoch_counts = {"searched": 0, "moved": 0, "moved_far": 0, "error": 0.0, "class_changed": 0}

    def class_search_on(self, epoch: int) -> bool:
        """Whether ``epoch`` searches against the class maps (``n_classes``: the consensus phase)."""
        return bool(self.n_classes) and self.phase(epoch) == "search" and not (
            self.latent_from and epoch >= self.latent_from)

    def class_beta(self) -> float:
        """The weight of the likelihood in the class posteriors of the search in progress (``n_classes``): from
        ``1 / class_anneal_epochs`` in the first search up to 1 after ``class_anneal_epochs`` complete searches.
        """
        return min(1.0, (self.full_searches + 1) / self.class_anneal_epochs)

    def drawing(self) -> bool:
        """Whether the search in progress draws the poses from their posteriors (``search_draws``)."""
        return self.full_searches < self.search_draws

    def _draw_generator(self) -> torch.Generator | None:
        """The generator of this batch's posterior draws (``None``: take the best): seeded from the run's seed and
        the images trained on so far, so that a resumed run draws the same poses.
        """
        if not self.drawing():
            return None
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.images_seen)
        return g

    # -- one batch ----------------------------------------------------------------------------------------------
    def prepare(self, batch, model=None, gather_rows=None):
        """The batch with its particles' poses: the random initial ones while pretraining, freshly searched ones
        in a search epoch (:meth:`search_update`), one local step each afterwards (``PoseRefiner``).
        """
        index = _get(batch, "index")
        searching = self.phase(self._epoch) != "local"
        if model is not None and hasattr(model, "set_consensus_only"):
            own_maps = bool(self.latent_from) and self._epoch >= self.latent_from  # latent-aware search epochs
            model.set_consensus_only(searching and self.consensus_first and not own_maps)
        if not searching:
            out = super().prepare(batch, model, gather_rows)
        elif self.images_seen < self.pretrain_images:
            out = self.corrected(batch)
        else:
            if model is None:
                raise ValueError("PoseSearcher.prepare needs the model")
            self.search_update(model, batch, gather_rows)
            out = self.corrected(batch)
        if searching and self.class_search_on(self._epoch):
            out = _replace(out, class_index=self.classes[index.cpu().long()].to(_get(batch, "y").device))
        self.images_seen += int(index.numel())
        self._maybe_log()
        return out

    @torch.no_grad()
    def search_update(self, model, batch, gather_rows=None) -> None:
        """Search the poses of the batch's particles against ``model.pose_search_predictor`` and write them into
        the table (gathered over the processes with ``gather_rows``).
        """
        index = _get(batch, "index")
        y_full = _get(batch, "y")
        device = y_full.device
        radius = self.lattice_radius_px(self._epoch) / self.D  # cycles/pixel
        half, positions, freqs = self._local_pixels(device, 2.0 * radius)  # within radius (fraction 2r of Nyquist)
        # the search sees the images as the provider gives them (consensus = identity, zero origin)
        y = y_full[:, positions].float()
        if self.class_search_on(self._epoch):
            A, t, err, cls = self._class_search(model, batch, y, half, freqs, radius)
            self._record_search(index, so3_log(A).float(), t.float(), err, positions.numel(), device, gather_rows,
                                classes=cls)
            return
        predictor = model.pose_search_predictor(batch, half, radius)
        A, t, err = hierarchical_search(predictor, y, freqs, self.base_level,
                                        self.n_levels, self.top_k, self.shift_extent_px, self.shift_step_px,
                                        sample_generator=self._draw_generator())
        self._record_search(index, so3_log(A).float(), t.float(), err, positions.numel(), device, gather_rows)

    def _class_search(self, model, batch, y: torch.Tensor, half: torch.Tensor, freqs: torch.Tensor, radius: float):
        """Search the batch against every class map and draw each image's class from its annealed posterior
        (``n_classes``). Returns ``(rotations (B, 3, 3), shifts (B, 2), errors (B,), classes (B,))``, the pose of the
        chosen class.
        """
        found = []
        for k in range(self.n_classes):
            predictor = model.pose_search_predictor(batch, half, radius, class_index=k)
            found.append(hierarchical_search(predictor, y, freqs, self.base_level, self.n_levels, self.top_k,
                                             self.shift_extent_px, self.shift_step_px,
                                             sample_generator=self._draw_generator()))
            n_values = y.shape[1] if predictor.weight is None else predictor.weight.float().sum(-1).cpu()
        return self._choose_class(found, n_values)

    def _choose_class(self, found: list, n_values):
        """Each image's class, drawn from its annealed posterior (``n_classes``), from ``found``: per class the
        search's ``(rotations (B, 3, 3), shifts (B, k), errors (B,))``; ``n_values``: the errors' weight sums
        (a number or ``(B,)``). Returns the chosen class's ``(rotations, shifts, errors)`` and the classes ``(B,)``.
        """
        err = torch.stack([f[2] for f in found], dim=1).double()  # (B, K)
        beta = self.class_beta()
        e_min = err.min(dim=1, keepdim=True).values
        g = None
        if beta < 1.0:  # draw (seeded by the images trained on: a resumed run draws the same)
            g = torch.Generator().manual_seed(self.seed * 1_000_033 + self.images_seen + 7)
        # the posterior with the likelihood weighted by beta: the differences to the best class scaled by it
        cls = global_candidates(e_min + beta * (err - e_min), 1, n_values, g)[1][:, 0]
        rows = torch.arange(err.shape[0])
        A = torch.stack([f[0] for f in found], dim=1)[rows, cls]
        t = torch.stack([f[1] for f in found], dim=1)[rows, cls]
        return A, t, err[rows, cls].float(), cls

    def _record_search(self, index: torch.Tensor, w_new: torch.Tensor, shifts: torch.Tensor, err: torch.Tensor,
                       n_values: int, device, gather_rows=None, classes: torch.Tensor | None = None) -> None:
        """Write the searched table rows ``[w_new (B, 3), shifts (B, k)]`` of the batch's particles ``index``
        (gathered over the processes with ``gather_rows``) and count, for the epoch's log, the poses that moved by
        more than twice and four times the finest spacing and the search error per compared value; ``classes``
        ``(B,)``: the particles' new classes (``n_classes``), gathered likewise.
        """
        w_old, _ = self.table.take(index, "cpu")
        angle = _angle_deg(w_old.detach().double(), w_new.double())
        moved = angle > 2.0 * self.final_spacing_deg
        moved_far = angle > 4.0 * self.final_spacing_deg
        rows = torch.cat([w_new, shifts], dim=1)
        changed = 0.0
        if classes is not None:
            changed = float((classes.cpu() != self.classes[index.cpu().long()]).sum())
            rows = torch.cat([rows, classes.to(rows.dtype)[:, None]], dim=1)
        rows = rows.to(device)
        idx = index.detach().to(device).long()
        stats = torch.tensor([[float(moved.sum()), float(err.sum()), float(len(err)), float(moved_far.sum()),
                               changed]], device=device)
        if gather_rows is not None:
            idx, rows, stats = gather_rows(idx, rows, stats)
        if classes is not None:
            self.classes[idx.cpu()] = rows[:, -1].round().long().cpu()
            rows = rows[:, :-1]
        self.table.values[idx.cpu()] = rows.cpu()
        self.table.steps[idx.cpu()] += 1
        total = stats.sum(0).cpu()
        npix = max(1, int(n_values))
        self.epoch_counts["moved"] += int(total[0])
        self.epoch_counts["moved_far"] = self.epoch_counts.get("moved_far", 0) + int(total[3])
        self.epoch_counts["error"] += float(total[1]) / npix
        self.epoch_counts["searched"] += int(total[2])
        self.epoch_counts["class_changed"] = self.epoch_counts.get("class_changed", 0) + int(total[4])

    def observe(self, terms: dict) -> None:
        """The loss terms of the training step just taken (for the log lines)."""
        if "loss" in terms:
            self._last_loss = float(terms["loss"])

    def _maybe_log(self, every_s: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._last_log < every_s:
            return
        self._last_log = now
        log.info(self.progress_line())

    def progress_line(self) -> str:
        """The log line a user follows: phase, lattice radius (pixels and Angstrom), share of moved poses, loss."""
        e = self._epoch
        c = self.epoch_counts
        if self.phase(e) == "local":
            what = f"local refinement (pixels within {self.search_radius:g} x Nyquist)"
        elif self.images_seen < self.pretrain_images:
            what = f"pretraining on random poses ({self.images_seen}/{self.pretrain_images} images)"
        else:
            r = self.lattice_radius_px(e)
            moved = f"{100 * c['moved'] / c['searched']:.1f} %" if c["searched"] else "-"
            what = (f"search{' (posterior draws)' if self.drawing() else ''}, lattice radius {r:.1f} px "
                    f"({self.D * self.apix / r:.1f} A), {c['searched']} "
                    f"particles searched this epoch, {moved} moved > {2 * self.final_spacing_deg:g} deg")
        return f"abinit epoch {e}: {what}, loss {self._last_loss:.5g}"

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The table and the search's progress (images seen, phase, the epoch's counts, history)."""
        return {**super().state_dict(), "images_seen": self.images_seen, "local_from": self.local_from,
                "latent_from": self.latent_from,
                "full_searches": self.full_searches,
                "epoch_counts": dict(self.epoch_counts), "history": list(self.history),
                "counted_epoch": self._counted_epoch, "classes": self.classes.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.images_seen = int(state.get("images_seen", 0))
        self.local_from = int(state.get("local_from", 0))
        self.latent_from = int(state.get("latent_from", 0))
        self.full_searches = int(state.get("full_searches", 0))
        self.epoch_counts = dict(state.get("epoch_counts", {"searched": 0, "moved": 0, "moved_far": 0, "error": 0.0}))
        self.history = list(state.get("history", []))
        self._counted_epoch = int(state.get("counted_epoch", 1))
        if self.n_classes and "classes" in state:
            self.classes = torch.as_tensor(state["classes"]).long().clone()


def _angle_deg(w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angles (degrees) between the rotations ``exp([w_a]x)`` and ``exp([w_b]x)`` (``(B, 3)`` each)."""
    from cryoscape.models.poses import so3_exp

    Ra, Rb = so3_exp(w_a), so3_exp(w_b)
    cos = ((Ra.transpose(1, 2) @ Rb).diagonal(dim1=1, dim2=2).sum(-1) - 1.0) / 2.0
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


# -- tilt series: one unknown rotation per group of images (cryoscape abinit --model tomodrgn) ----------------------
# A tilt-series particle is a group of images whose rotations are known relative to each other: the tilt geometry
# ``R_t = A_t A_ref^T`` (the rotation of tilt ``t`` relative to the particle's reference tilt, independent of the
# particle's orientation). Its one unknown is the reference tilt's rotation ``A`` (and a shift): tilt ``t`` is then
# seen at ``R_t A``. The search scores each candidate ``A`` by the weighted squared errors of all the particle's
# tilts, summed; a shift candidate ``s`` is a 2-D shift in the reference tilt's frame (a 3-D shift ``(s, 0)`` of zero
# depth), which moves tilt ``t`` by ``(R_t (s, 0))[:2]``, as :func:`~cryoscape.models.poses.tilt_compose` moves it.


def _tilt_shifts(rel: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Per-tilt image shifts ``(B, S, T, 2)`` of 2-D reference-frame shifts ``shifts`` ``(B, S, 2)`` (zero depth)
    through the tilt geometry ``rel`` ``(B, T, 3, 3)``: ``(R_t (s, 0))[:2] = R_t[:2, :2] s``.
    """
    return torch.einsum("btij,bsj->bsti", rel[..., :2, :2].to(shifts.dtype), shifts)


def _translated_tilts(y: torch.Tensor, freqs: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Tilt images ``y`` ``(B, T, P)`` translated by per-tilt shifts ``shifts`` ``(B, S, T, 2)`` -> ``(B, S, T, P)``."""
    B, T, P = y.shape
    S = shifts.shape[1]
    out = hartley_translate(y[:, None].expand(B, S, T, P).reshape(B * S * T, P), freqs, shifts.reshape(-1, 2))
    return out.reshape(B, S, T, P)


def _tilt_slices(predictor: SearchPredictor, rel: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """The slices ``(B, r, T, P)`` of every tilt at ``R_t A`` for candidate reference rotations ``rotations``
    ``(r, 3, 3)`` (the same for every particle) or ``(B, r, 3, 3)``.
    """
    B, T = rel.shape[:2]
    if rotations.dim() == 3:
        rotations = rotations[None].expand(B, -1, -1, -1)
    r = rotations.shape[1]
    A = rel[:, None].to(rotations.dtype) @ rotations[:, :, None]  # (B, r, T, 3, 3)
    return predictor.slices(A.reshape(B, r * T, 3, 3)).reshape(B, r, T, -1)


@torch.no_grad()
def grouped_search(predictor: SearchPredictor, y: torch.Tensor, rel: torch.Tensor, freqs: torch.Tensor,
                   base_level: int = 1, n_levels: int = 3, top_k: int = 8, shift_extent_px: float = 4.0,
                   shift_step_px: float = 2.0, budget: int = 2**24, sample_generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best rotation and shift of each group of images that share one unknown rotation (the tilts of a
    tilt-series particle), by the coarse-to-fine search of :func:`hierarchical_search`.

    Every rotation ``A`` of the base HEALPix grid is scored (then the ``top_k`` best refined on ``n_levels`` finer
    levels, 8 children each, the shift step halved per level) by the sum over the group's images ``t`` of the
    weighted squared errors ``sum_p w_tp (T_{s_t} y_tp - c_tp P_{R_t A}[p])^2`` against the model's slice at
    ``R_t A``; the shift candidates ``s`` are 2-D shifts in the reference frame, ``s_t = R_t[:2, :2] s``.

    Parameters
    ----------
    predictor : the model's :class:`SearchPredictor` of the batch; ``slices`` takes ``(B, N, 3, 3)`` rotations
        (``shared``: one map for every group, else one per group); ``transfer`` and ``weight`` are ``(B, T, P')``
        per image (``weight`` 0 for padding images; ``None``: 1).
    y : ``(B, T, P')`` the images' Hartley values at the searched positions (``[half (M'), mates (M'), DC]``).
    rel : ``(B, T, 3, 3)`` the images' rotations relative to the reference one (``R_t = A_t A_ref^T``).
    freqs : ``(M', 2)`` the half-plane frequencies (cycles/pixel) of those positions.
    base_level, n_levels, top_k, shift_extent_px, shift_step_px : as :func:`hierarchical_search`.
    budget : float values per block of the global level's slices (rotations are chunked to ``budget / (B T P')``).

    Returns
    -------
    ``(rotations (B, 3, 3) float64, shifts (B, 2) pixels, error (B,))``: the reference image's RELION matrix ``A``
    (image ``t`` at ``R_t A``), the reference-frame shift ``s`` (apply ``(R_t (s, 0))[:2]`` to image ``t``, as the
    origin correction of :func:`~cryoscape.models.poses.tilt_compose` with ``d = (s, 0)``) and the summed squared
    error there.
    """
    device = y.device
    B, T, P = y.shape
    freqs = freqs.to(device=device, dtype=torch.float32)
    y = y.float()
    rel = rel.to(device=device, dtype=torch.float32)
    w = torch.ones_like(y) if predictor.weight is None else predictor.weight.float()
    c = torch.ones_like(w) if predictor.transfer is None else predictor.transfer.float()
    wc, wcc = w * c, w * c * c
    shifts0 = shift_grid(shift_extent_px, shift_step_px, device)  # (S, 2)
    S = shifts0.shape[0]
    y_t = _translated_tilts(y, freqs, _tilt_shifts(rel, shifts0[None].expand(B, -1, -1)))  # (B, S, T, P)
    a = (w[:, None] * y_t * y_t).sum(dim=(2, 3))  # (B, S)
    yw = (y_t * wc[:, None]).reshape(B, S, T * P)
    del y_t
    rot0 = torch.as_tensor(so3_grid.grid_rotations(base_level), dtype=torch.float32, device=device)
    R = rot0.shape[0]
    chunk = max(1, int(budget) // max(1, B * T * P))
    best_err = torch.empty(B, R, device=device)
    best_shift = torch.empty(B, R, dtype=torch.long, device=device)
    for start in range(0, R, chunk):
        sl = _tilt_slices(predictor, rel, rot0[start : start + chunk])  # (B, r, T, P)
        r = sl.shape[1]
        cross = torch.bmm(yw, sl.reshape(B, r, T * P).transpose(1, 2))  # (B, S, r)
        norm = (sl * sl * wcc[:, None]).sum(dim=(2, 3))  # (B, r)
        e, s = (a[:, :, None] - 2.0 * cross + norm[:, None, :]).min(dim=1)
        best_err[:, start : start + r] = e
        best_shift[:, start : start + r] = s
    del yw

    def score_children(rots: torch.Tensor, parent_shifts: torch.Tensor) -> torch.Tensor:
        kp = parent_shifts.shape[1]
        # the 8 children of a candidate share its 9 translated groups of images
        y_c = _translated_tilts(y, freqs, _tilt_shifts(rel, parent_shifts.reshape(B, kp * 9, 2)))  # (B, 9k, T, P)
        a_c = (w[:, None] * y_c * y_c).sum(dim=(2, 3)).reshape(B, kp, 9)
        yw_c = (y_c * wc[:, None]).reshape(B * kp, 9, T * P)
        del y_c
        sl = _tilt_slices(predictor, rel, rots)  # (B, 8k, T, P)
        norm = (sl * sl * wcc[:, None]).sum(dim=(2, 3)).reshape(B, kp, 8)
        cross = torch.bmm(sl.reshape(B * kp, 8, T * P), yw_c.transpose(1, 2)).reshape(B, kp, 8, 9)
        return (a_c[:, :, None, :] - 2.0 * cross + norm[..., None]).reshape(B, kp * 8, 9)  # (B, K, 9)

    return _coarse_to_fine(best_err, best_shift, shifts0, w.sum(dim=(1, 2)), score_children, base_level, n_levels,
                           top_k, shift_step_px, sample_generator)


class TiltPoseSearcher(PoseSearcher):
    """Ab initio poses of tilt-series particles inside training (``cryoscape abinit --model tomodrgn``).

    The schedule of :class:`PoseSearcher` (pretraining on random poses, search epochs with a growing lattice radius,
    the stability test, consensus first for a heterogeneous model, then local refinement) with the pose of
    :class:`~cryoscape.models.poses.TiltPoseRefiner`: one rotation ``w`` and one 3-D shift ``d`` per particle in
    its reference tilt's frame, applied to all its tilts through the tilt geometry
    (:func:`~cryoscape.models.poses.tilt_compose`). The provider's per-tilt rotations are the tilt geometry alone
    (``cryoscape.train.run.without_poses``: each tilt's rotation relative to the reference tilt, so the reference
    tilt has the identity), so ``exp([w]x)`` is the particle's pose and the table's rows are the estimated poses.

    A search (:meth:`search_update`, :func:`grouped_search`) scores every candidate rotation by all of a particle's
    tilts at once and sets ``w`` to the best rotation and ``d`` to ``(s, 0)`` for the best reference-frame shift
    ``s``; the local phase is :meth:`TiltPoseRefiner.local_update` (one damped Gauss-Newton step of the 6 parameters
    from all tilts, through ``model.tilt_pose_predictor``). The learned poses are written as
    ``train --model tomodrgn --refine-poses`` writes them (``RUN/poses/epoch_NNN.npz``, per tilt image and per
    particle).

    Parameters
    ----------
    ref : ``(N,)`` every particle's reference tilt (:func:`~cryoscape.models.poses.reference_tilts`).
    Others as :class:`PoseSearcher`.
    """

    def __init__(self, n: int, half_freqs: torch.Tensor, ref, D: int, pixel_size_angstrom: float, **kwargs):
        from cryoscape.models.poses import PoseTable

        super().__init__(n, half_freqs, D, pixel_size_angstrom, **kwargs)
        random_w = self.table.values[:, :3].clone()
        self.table = PoseTable(n, lr=0.0, shift_dims=3)
        self.table.values[:, :3] = random_w
        self.ref = torch.as_tensor(np.asarray(ref), dtype=torch.long).cpu()
        if self.ref.shape != (self.table.n,):
            raise ValueError(f"reference tilts of {tuple(self.ref.shape)} for {self.table.n} particles")

    @classmethod
    def for_data(cls, data, **kwargs) -> TiltPoseSearcher:
        """The searcher of a :class:`~cryoscape.data.tilt_data.TiltSeriesData` (reference tilts from its metadata)."""
        from cryoscape.models.poses import reference_tilts

        tilts = data.tilts
        ref = reference_tilts(tilts.offsets, tilts.tilt_deg, tilts.exposure_e_per_angstrom2)
        return cls(len(data), data.pixels.half_freqs(), ref, D=int(data.D),
                   pixel_size_angstrom=float(data.pixel_size_angstrom), **kwargs)

    # the tilt-series pose: applied, refined locally and written as TiltPoseRefiner does
    _apply = TiltPoseRefiner._apply
    local_update = TiltPoseRefiner.local_update
    learned = TiltPoseRefiner.learned
    save_epoch_poses = TiltPoseRefiner.save_epoch_poses

    @torch.no_grad()
    def search_update(self, model, batch, gather_rows=None) -> None:
        """Search the poses of the batch's particles from all their tilts (:func:`grouped_search`) against
        ``model.tilt_search_predictor`` and write them into the table (gathered over the processes with
        ``gather_rows``).
        """
        index = _get(batch, "index")
        y_full, rot = _get(batch, "y"), _get(batch, "rot")
        device = y_full.device
        B = y_full.shape[0]
        radius = self.lattice_radius_px(self._epoch) / self.D  # cycles/pixel
        half, positions, freqs = self._local_pixels(device, 2.0 * radius)
        ref = self.ref[index.detach().cpu().long()].to(device)
        A_ref = rot[torch.arange(B, device=device), ref].float()  # (B, 3, 3): the identity after without_poses
        rel = rot.float() @ A_ref.transpose(-1, -2)[:, None]  # (B, T, 3, 3) the tilt geometry
        y = y_full[..., positions].float()
        cls = None
        if self.class_search_on(self._epoch):  # abinit --classes: against every class map (PoseSearcher)
            found = []
            for k in range(self.n_classes):
                predictor = model.tilt_search_predictor(batch, half, radius, class_index=k)
                found.append(grouped_search(predictor, y, rel, freqs, self.base_level, self.n_levels, self.top_k,
                                            self.shift_extent_px, self.shift_step_px,
                                            sample_generator=self._draw_generator()))
            n_values = (y.shape[1] * y.shape[2] if predictor.weight is None
                        else predictor.weight.float().sum(dim=(1, 2)).cpu())
            A, s, err, cls = self._choose_class(found, n_values)
        else:
            predictor = model.tilt_search_predictor(batch, half, radius)
            A, s, err = grouped_search(predictor, y, rel, freqs, self.base_level, self.n_levels, self.top_k,
                                       self.shift_extent_px, self.shift_step_px,
                                       sample_generator=self._draw_generator())
        w_new = so3_log(A @ A_ref.detach().cpu().double().transpose(-1, -2)).float()  # A = exp([w]x) A_ref
        d = torch.cat([s.float(), torch.zeros(B, 1)], dim=1)  # zero depth
        self._record_search(index, w_new, d, err, positions.numel(), device, gather_rows, classes=cls)

    def state_dict(self) -> dict:
        """As :class:`PoseSearcher`'s, with the reference tilts (checked on load)."""
        return {**super().state_dict(), "reference_tilt": self.ref.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        if "reference_tilt" in state and not torch.equal(torch.as_tensor(state["reference_tilt"]), self.ref):
            raise ValueError("the checkpoint's reference tilts differ from this data set's")
        super().load_state_dict(state)
