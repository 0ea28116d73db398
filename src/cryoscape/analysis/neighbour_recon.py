"""Latent-neighbour reconstruction: a map at a latent point re-estimated from the particles whose latents are
nearest it, by CTF-weighted (Wiener) back-projection with their poses (as RECOVAR re-estimates its maps by kernel
regression; Gilles & Singer 2024).

The rule, for a latent point ``z0`` (particles ``i`` with latents ``z_i``; ``d_i = |z_i - z0|``, Euclidean):

1. Candidate neighbourhoods: the ``k`` nearest particles for each ``k`` of a geometric ladder (default
   25, 50, 100, ..., 1600, capped at ``max_neighbours`` and the number of particles), and the whole set with equal
   weights (the consensus map: back-projected once per reconstructor and reused for every latent point, so it
   costs no time per map). Where the heterogeneity is below the noise (often the highest shells), the rule can so
   fall back on every particle instead of stopping at ``max_neighbours``.
2. Each candidate is back-projected (:func:`cryoscape.analysis.backprojection.backproject`, streamed, memory
   bounded) with Gaussian kernel weights ``w_i = exp(-d_i^2 / (2 h^2))``, ``h`` the distance of its ``k``-th
   neighbour (all weights 1 when ``h`` is 0), into two half maps ``A_k`` (even particle rows) and ``B_k`` (odd).
3. Per Fourier shell ``s`` (radius ``round(|k|)`` voxels, as the FSC), the chosen ``k`` minimises the half-set
   cross-validation error ``sum_s |A_k - B_k0|^2 + |B_k - A_k0|^2`` against the other half of the smallest
   neighbourhood ``k0``: that half is independent of ``A_k`` (other particles) and nearly unbiased (the closest
   particles), so the error estimates bias^2 + variance of ``A_k`` up to a constant. With ``oversample`` > 1 the
   reference halves ``A_k0``, ``B_k0`` are back-projected without padding (``oversample=1``): a dozen particles
   leave most voxels of the twice finer grid empty, which shrinks their map towards zero and biases the choice
   towards the whole set; the unpadded grid is four times denser (bench/RESULTS.md section 10d: +0.003-0.004
   per-image AU-FSC on the D=64 sets, +0.010 at the true coordinate on six images). Low frequencies, where the
   signal is strong, take small neighbourhoods (little blurring across the latent space); high frequencies,
   where noise dominates, take large ones.
4. The map, and its two half maps, are the shell-wise combination of the chosen candidates' full and half maps;
   the FSC of the half maps (resolution at 0.143) is the map's own resolution estimate. The choice of ``k``
   saw both halves, so that estimate is slightly optimistic.
5. Local choice (``local=True``, the default): heterogeneity is often local (a domain moves, the body does not),
   and the body gains from every particle at shells where the domain needs few. So steps 3-4 are made twice,
   on the candidates multiplied by a soft mask ``M`` of the *variable region* and by ``1 - M``, and the two
   results are added (with ``M`` empty this is exactly steps 3-4). ``M`` is estimated once per reconstructor
   from the data (:meth:`NeighbourReconstructor.variability`): the equal-weight half maps of the ``k_var``
   nearest particles (``min(800, N / 8)``) of up to 16 k-means centres of the latents, each smoothed by a
   Gaussian of 1.5 voxels; per voxel, the standard deviation over the centres of the half maps' mean, divided
   by the root mean square of their half difference (the same quantity when the region does not vary: about
   1 there). ``M`` is that ratio above 3, smoothed by a Gaussian of 2 voxels (the threshold and widths change
   the benchmark's per-image AU-FSC by under 0.001 between 2 and 5, 1 and 3; bench/RESULTS.md 10c).

Poses are the dataset's, or those a run learned (``train --refine-poses``, ``abinit``; :func:`particle_poses`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoscape.analysis.backprojection import NegatedImages, backproject
from cryoscape.analysis.fsc import fsc, resolution_at
from cryoscape.errors import InputError

__all__ = ["DEFAULT_KS", "DEFAULT_MAX_NEIGHBOURS", "NeighbourMap", "NeighbourReconstructor", "particle_poses",
           "reconstructor_from_run", "write_neighbour_map", "write_variable_region", "reconstruct_maps"]

DEFAULT_KS = (25, 50, 100, 200, 400, 800, 1600)
DEFAULT_MAX_NEIGHBOURS = 2000
VARIABILITY_CENTRES = 16  # latent points the variable region is estimated from (step 5 of the rule)
VARIABILITY_NEIGHBOURS = 800  # particles per point (at most N / 8)
VARIABILITY_SMOOTH_PX = 1.5  # Gaussian smoothing of the half maps before the per-voxel ratio
VARIABILITY_THRESHOLD = 3.0  # ratio of the spread over latent points to the half-map noise
VARIABILITY_EDGE_PX = 2.0  # Gaussian softening of the thresholded region
# Step 3 alternative, off by default (bench/RESULTS.md 10c: safer at SNR 0.01, a loss at 0.1): the candidate with
# the most particles within one standard error of the smallest error, counting a region's Fourier coefficients as
# its volume fraction of the shell's (ONE_SE_MASK_FRACTION) or every voxel as independent.
ONE_STANDARD_ERROR = False
ONE_SE_MASK_FRACTION = True


@dataclass
class NeighbourMap:
    """A latent-neighbour reconstruction: the map, its half maps and their FSC, and the neighbourhoods used."""

    z: np.ndarray
    volume: np.ndarray
    half_a: np.ndarray
    half_b: np.ndarray
    fsc: np.ndarray  # (D // 2,) FSC of the half maps over shells i / D (cycles/pixel)
    resolution_angstrom: float  # at FSC 0.143 of the half maps
    ks: list[int] = field(default_factory=list)  # candidate neighbourhood sizes (the last N: the whole set)
    bandwidths: list[float] = field(default_factory=list)  # kernel width h of each candidate (inf: equal weights)
    k_per_shell: list[int] = field(default_factory=list)  # the chosen k of each shell (the variable region's)
    k_per_shell_rest: list[int] = field(default_factory=list)  # outside the variable region (= k_per_shell: none)



class NeighbourReconstructor:
    """Latent-neighbour reconstructions of a posed particle set (see the module docstring for the rule).

    Parameters
    ----------
    z : ``(N, zdim)`` latents, row ``i`` that of particle ``i``.
    images : ``(N, D, D)`` array or lazy stack (``images[index_array]``); rotations ``(N, 3, 3)``; shifts_px
        ``(N, 2)``; ctf ``(N, 9)`` or None; pixel_size_angstrom; ctf_premultiplied: as
        :func:`cryoscape.analysis.backprojection.backproject`.
    ks : candidate neighbourhood sizes (each capped at ``max_neighbours`` and ``N``; at least 2).
    whole_set : also offer the whole set, equal weights, as a candidate (step 1 of the rule; default True).
    local : choose the neighbourhoods separately inside and outside the variable region (step 5; default True).
    region : a soft mask ``(D, D, D)`` in ``[0, 1]`` to use as the variable region instead of the estimate (e.g.
        the domain a user knows to move); ignored when ``local`` is off.
    oversample, device, batch_size : passed to ``backproject`` (``oversample=1``: about 8 times less memory and
        faster, slightly less accurate near Nyquist).

    Also usable wherever a model's ``generate_volumes`` is (e.g. the per-image AU-FSC of
    :mod:`cryoscape.analysis.evaluate`).
    """

    def __init__(self, z, images, rotations, shifts_px, ctf, pixel_size_angstrom: float,
                 ctf_premultiplied: bool = False, ks=DEFAULT_KS, max_neighbours: int = DEFAULT_MAX_NEIGHBOURS,
                 oversample: int = 2, device: str | None = "cpu", batch_size: int = 256, whole_set: bool = True,
                 local: bool = True, region: np.ndarray | None = None):
        z = np.asarray(z, dtype=np.float64)
        self.z = z.reshape(len(z), -1)
        n = self.z.shape[0]
        if len(images) != n:
            raise InputError(f"{n} latents but {len(images)} images")
        if max_neighbours < 2:
            raise InputError(f"the neighbourhood cap must be at least 2, got {max_neighbours}")
        self.images, self.rotations, self.shifts_px, self.ctf = images, rotations, shifts_px, ctf
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.ctf_premultiplied = bool(ctf_premultiplied)
        cap = min(int(max_neighbours), n)
        self.ks = sorted({min(int(k), cap) for k in ks if int(k) >= 2}) or [cap]
        self.oversample, self.device, self.batch_size = oversample, device, batch_size
        self.whole_set = bool(whole_set) and self.ks[-1] < n  # the ladder's top is not already every particle
        self._whole: dict | None = None
        self.local = bool(local)
        self._region: np.ndarray | None = None
        self._region_made = False
        if region is not None:
            self.set_region(region)

    @property
    def box(self) -> int:
        """The particles' box ``D`` (pixels)."""
        return int(np.shape(self.images[np.arange(1)])[-1])

    def set_region(self, region) -> None:
        """Use ``region`` (a soft mask ``(D, D, D)``, clipped to ``[0, 1]``) as the variable region instead of the
        estimate (no effect when ``local`` is off).
        """
        region = np.asarray(region, dtype=np.float32)
        D = self.box
        if region.shape != (D, D, D):
            raise InputError(f"the variable region is {region.shape}, the particles' box {D}^3")
        if self.local:
            self._region, self._region_made = np.clip(region, 0.0, 1.0), True

    def whole_set_maps(self) -> dict:
        """The whole set back-projected with equal weights (``volume``, ``half_a``, ``half_b``), made once."""
        if self._whole is None:
            n = self.z.shape[0]
            self._whole = self._backproject(np.arange(n), np.ones(n, dtype=np.float32))
        return self._whole

    def variability(self) -> np.ndarray | None:
        """The per-voxel ratio of step 5 of the rule ``(D, D, D)``, or None when the latents have fewer than two
        distinct points (nothing can vary).
        """
        from scipy import ndimage
        from sklearn.cluster import KMeans

        n = self.z.shape[0]
        distinct = np.unique(self.z, axis=0)
        n_centres = min(VARIABILITY_CENTRES, len(distinct))
        if n_centres < 2:
            return None
        k = max(2, min(VARIABILITY_NEIGHBOURS, n // 8))
        centres = KMeans(n_centres, n_init=4, random_state=0).fit(distinct).cluster_centers_
        mean, diff = [], []
        for c in centres:
            rows = np.argsort(np.linalg.norm(self.z - c, axis=1), kind="stable")[:k]
            m = self._backproject(rows, np.ones(k, dtype=np.float32))
            a = ndimage.gaussian_filter(m["half_a"], VARIABILITY_SMOOTH_PX)
            b = ndimage.gaussian_filter(m["half_b"], VARIABILITY_SMOOTH_PX)
            mean.append(0.5 * (a + b))
            diff.append(0.5 * (a - b))
        spread = np.stack(mean).std(axis=0)
        noise = np.sqrt(np.mean(np.square(np.stack(diff)), axis=0))
        return (spread / np.maximum(noise, 1e-6 * float(noise.max()) + 1e-30)).astype(np.float32)

    def variable_region(self) -> np.ndarray | None:
        """The soft mask ``M`` ``(D, D, D)`` of the variable region (step 5 of the rule; the ``region`` given, or
        estimated once); None when ``local`` is off or no voxel varies.
        """
        if not self._region_made:
            if self.local:
                from scipy import ndimage

                ratio = self.variability()
                if ratio is not None and (ratio > VARIABILITY_THRESHOLD).any():
                    self._region = np.clip(ndimage.gaussian_filter(
                        (ratio > VARIABILITY_THRESHOLD).astype(np.float32), VARIABILITY_EDGE_PX), 0.0, 1.0)
            self._region_made = True
        return self._region

    def _backproject(self, rows: np.ndarray, weights: np.ndarray, oversample: int | None = None) -> dict:
        full = np.zeros(self.z.shape[0], dtype=np.float32)
        full[rows] = weights
        order = np.sort(rows)
        oversample = self.oversample if oversample is None else oversample
        return backproject(self.images, self.rotations, self.shifts_px, self.ctf, self.pixel_size_angstrom,
                           indices=order, particle_weights=full, progress=False, oversample=oversample,
                           device=self.device, batch_size=self.batch_size, ctf_premultiplied=self.ctf_premultiplied)

    def reconstruct(self, z0) -> NeighbourMap:
        """The latent-neighbour map at one latent point ``z0`` ``(zdim,)``."""
        z0 = np.asarray(z0, dtype=np.float64).ravel()
        if z0.size != self.z.shape[1]:
            raise InputError(f"a latent point of {z0.size} values for latents of dimension {self.z.shape[1]}")
        d = np.linalg.norm(self.z - z0, axis=1)
        order = np.argsort(d, kind="stable")
        cands, bandwidths = [], []
        for k in self.ks:
            rows = order[:k]
            h = float(d[rows[-1]])
            cands.append(self._backproject(rows, _kernel(d[rows], h)))
            bandwidths.append(h)
        ks = list(self.ks)
        if self.whole_set:
            cands.append(self.whole_set_maps())
            bandwidths.append(math.inf)
            ks.append(self.z.shape[0])
        region = self.variable_region() if len(cands) > 1 else None
        reference = None
        if len(cands) > 1 and self.oversample > 1:  # step 3's reference halves, unpadded (denser grid)
            k0 = ks[0]
            reference = self._backproject(order[:k0], _kernel(d[order[:k0]], bandwidths[0]), oversample=1)
        if region is None:
            vol, ha, hb, chosen = _choose_per_shell(cands, reference=reference)
            chosen_rest = chosen
        else:
            parts = [_choose_per_shell(cands, weight, reference) for weight in (region, 1.0 - region)]
            vol, ha, hb = (parts[0][i] + parts[1][i] for i in range(3))
            chosen, chosen_rest = parts[0][3], parts[1][3]
        freqs, curve = fsc(ha, hb)
        return NeighbourMap(z=z0.astype(np.float32), volume=vol, half_a=ha, half_b=hb, fsc=curve,
                            resolution_angstrom=resolution_at(freqs, curve, 0.143, self.pixel_size_angstrom),
                            ks=ks, bandwidths=bandwidths, k_per_shell=[int(ks[j]) for j in chosen],
                            k_per_shell_rest=[int(ks[j]) for j in chosen_rest])

    def generate_volumes(self, z, batch_size: int | None = None) -> np.ndarray:
        """Maps ``(n, D, D, D)`` at the latent points ``z`` ``(n, zdim)`` (the interface of a trained model)."""
        z = np.asarray(z, dtype=np.float64)
        return np.stack([self.reconstruct(p).volume for p in z.reshape(len(z), -1)])


def _kernel(distances: np.ndarray, h: float) -> np.ndarray:
    """Step 2's Gaussian kernel weights ``exp(-d^2 / (2 h^2))`` (all 1 when the bandwidth ``h`` is 0)."""
    return np.exp(-0.5 * (distances / h) ** 2) if h > 0 else np.ones(len(distances))


def _choose_per_shell(cands: list[dict], weight: np.ndarray | None = None, reference: dict | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 3-4 of the rule on candidates (dicts of ``volume``, ``half_a``, ``half_b``), each multiplied by
    ``weight`` (a region's soft mask) when given: the map, its half maps and the chosen candidate per shell.
    ``reference``: the half maps the cross-validation error is measured against (default the first candidate's).
    """
    D = cands[0]["volume"].shape[-1]
    if len(cands) == 1:
        w = 1.0 if weight is None else weight
        c = cands[0]
        return c["volume"] * w, c["half_a"] * w, c["half_b"] * w, np.zeros(D // 2, dtype=np.int64)

    def spectrum(x):
        return np.fft.rfftn(x if weight is None else x * weight)

    shell = _shells(D).ravel()
    fa = [spectrum(c["half_a"]) for c in cands]
    fb = [spectrum(c["half_b"]) for c in cands]
    ra, rb = (fa[0], fb[0]) if reference is None else (spectrum(reference["half_a"]), spectrum(reference["half_b"]))
    voxel_err = np.stack([(np.abs(a - rb) ** 2 + np.abs(b - ra) ** 2).ravel()
                          for a, b in zip(fa, fb, strict=True)])  # (candidates, voxels)
    err = np.stack([np.bincount(shell, weights=e, minlength=D // 2) for e in voxel_err])
    chosen = np.argmin(err, axis=0)
    if ONE_STANDARD_ERROR:
        chosen = _one_standard_error(voxel_err, err, chosen, shell,
                                     1.0 if weight is None or not ONE_SE_MASK_FRACTION
                                     else float(np.mean(np.square(weight))))
    pick = chosen[shell.reshape(fa[0].shape)]

    def combine(spectra) -> np.ndarray:
        out = np.zeros_like(spectra[0])
        for j, f in enumerate(spectra):
            out[pick == j] = f[pick == j]
        return np.fft.irfftn(out, s=(D, D, D), axes=(0, 1, 2)).astype(np.float32)

    return combine([spectrum(c["volume"]) for c in cands]), combine(fa), combine(fb), chosen


def _one_standard_error(voxel_err: np.ndarray, err: np.ndarray, best: np.ndarray, shell: np.ndarray,
                        fraction: float) -> np.ndarray:
    """Step 3's "one standard error" choice: per shell, the candidate with the most particles (the last index)
    whose cross-validation error exceeds the smallest by at most one standard error of that difference.

    ``voxel_err`` ``(C, V)``: each candidate's error per spectrum voxel; ``err`` ``(C, S)`` their sums per shell;
    ``best`` ``(S,)`` the argmin; ``shell`` ``(V,)`` each voxel's shell; ``fraction``: the mean square of the region's
    mask (1 for the whole box). The standard error of a shell's summed difference ``d`` over its ``n`` voxels is
    ``sqrt(n var(d) / fraction)``: a map multiplied by a mask covering a fraction ``f`` of the box has about
    ``f n`` independent Fourier coefficients per shell, so a small region's error is noisier than its voxel
    count says.
    """
    n = np.bincount(shell, minlength=err.shape[1]).astype(np.float64)
    chosen = best.copy()
    for s in np.flatnonzero(n > 1):
        rows = shell == s
        b = int(best[s])
        for c in range(err.shape[0] - 1, b, -1):  # most particles first
            d = voxel_err[c, rows] - voxel_err[b, rows]
            if err[c, s] - err[b, s] <= np.sqrt(n[s] * np.var(d) / max(fraction, 1e-12)):
                chosen[s] = c
                break
    return chosen


def _shells(D: int) -> np.ndarray:
    """Shell index ``round(|k|)`` of each voxel of an ``rfftn`` spectrum of a ``D^3`` map, capped at ``D/2 - 1``."""
    k = np.fft.fftfreq(D) * D
    kr = np.fft.rfftfreq(D) * D
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
    return np.minimum(np.rint(r).astype(np.int64), D // 2 - 1)


def particle_poses(run_dir, particles, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotations ``(N, 3, 3)`` and shifts in pixels ``(N, 2)`` to back-project a run's particles with.

    A run that learns its poses (``train --refine-poses``, ``abinit``) back-projects with the poses learned by
    ``epoch`` (default: the run's best, else its last epoch; ``RUN/poses``, in the order of ``particles``); any
    other run with the dataset's.
    """
    from cryoscape.config import load_config

    config = load_config(Path(run_dir) / "config.yaml")
    if config.train.learns_poses:
        from cryoscape.metadata import Poses
        from cryoscape.models.poses import load_learned_poses

        _, learned = load_learned_poses(run_dir, epoch)
        if len(learned["rotations"]) != len(particles):
            raise InputError(f"the run learned poses for {len(learned['rotations'])} particles but its latents "
                             f"are of {len(particles)}", run_dir)
        poses = Poses(learned["rotations"], learned["shifts_angstrom"])
        return poses.rotations, poses.shifts_px(particles.pixel_size_angstrom)
    if particles.poses is None:
        raise InputError("the run's particles have no poses", run_dir, "latent-neighbour reconstruction needs them")
    return particles.poses.rotations, particles.poses.shifts_px(particles.pixel_size_angstrom)


def reconstructor_from_run(run_dir, epoch: int | None = None, **kwargs) -> NeighbourReconstructor:
    """A :class:`NeighbourReconstructor` over a run's particles and latents (``kwargs`` passed on).

    The particles are those the run was trained on (its ``config.yaml``; ``--invert-data`` applied), in the
    order of its latents (``indices.npy``), read lazily from disk.
    """
    from cryoscape.analysis.latent import load_latents
    from cryoscape.config import load_config
    from cryoscape.models.registry import get_family

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    latents = load_latents(run_dir, epoch)
    if latents.z.shape[1] == 0:
        raise InputError("a homogeneous run (zdim 0) has no latent space to take neighbours in", run_dir)
    family = get_family(config.model.family)
    particles, _ = family.load_particles(config, apply_ind=False)
    if not hasattr(particles, "poses") or not hasattr(particles, "images"):
        raise InputError(f"latent-neighbour reconstruction needs single-particle images; the "
                         f"{config.model.family} family's particles are not", run_dir)
    indices = latents.indices if latents.indices is not None else np.arange(len(particles))
    if indices.max() >= len(particles):
        raise InputError(f"the latents refer to particle {int(indices.max())} of a file with {len(particles)}",
                         run_dir)
    particles = particles.subset(indices)
    rotations, shifts = particle_poses(run_dir, particles, latents.epoch)
    images = NegatedImages(particles.images) if config.data.invert_data else particles.images
    ctf = None if particles.ctf is None else particles.ctf.to_array()
    return NeighbourReconstructor(latents.z, images, rotations, shifts, ctf, particles.pixel_size_angstrom,
                                  ctf_premultiplied=bool(getattr(particles, "ctf_premultiplied", False)), **kwargs)


def write_neighbour_map(path, result: NeighbourMap, pixel_size_angstrom: float) -> list[Path]:
    """Write ``PATH.mrc`` (the map), ``PATH_half_a.mrc``, ``PATH_half_b.mrc`` and ``PATH_fsc.txt`` (frequency in
    1/A, FSC of the half maps; the header gives the resolution at 0.143, the neighbourhood sizes and kernel
    widths), atomically.
    """
    from cryoscape.io.mrc import write_mrc
    from cryoscape.utils.atomic import atomic_path

    path = Path(path)
    stem = path.with_suffix("")
    paths = [path, Path(f"{stem}_half_a.mrc"), Path(f"{stem}_half_b.mrc"), Path(f"{stem}_fsc.txt")]
    write_mrc(paths[0], result.volume, pixel_size_angstrom)
    write_mrc(paths[1], result.half_a, pixel_size_angstrom)
    write_mrc(paths[2], result.half_b, pixel_size_angstrom)
    D = result.volume.shape[-1]
    freqs = np.arange(D // 2) / D / pixel_size_angstrom
    res = result.resolution_angstrom
    rest = result.k_per_shell_rest or result.k_per_shell
    header = (f"latent-neighbour map at z = {' '.join(f'{v:.4g}' for v in result.z)}\n"
              f"half-map resolution (FSC 0.143): {res:.2f} A\n" if math.isfinite(res) else
              f"latent-neighbour map at z = {' '.join(f'{v:.4g}' for v in result.z)}\n"
              "half-map resolution (FSC 0.143): none (below 0.143 at the first shell)\n")
    header += (f"candidate neighbourhoods k: {result.ks}; kernel widths h: "
               f"{[round(h, 4) for h in result.bandwidths]}\n"
               f"chosen k per shell: {result.k_per_shell} in the variable region, {rest} outside it\n"
               "columns: frequency_1/A  FSC(half_a, half_b)  chosen_k (variable region)  chosen_k (outside it)")
    with atomic_path(paths[3]) as tmp:
        np.savetxt(tmp, np.stack([freqs, result.fsc, result.k_per_shell, rest], axis=1),
                   fmt=["%.6f", "%.6f", "%d", "%d"], header=header)
    return paths


def write_variable_region(path, rec: NeighbourReconstructor, log=print, given: bool = False) -> Path | None:
    """Write the reconstructor's variable region (step 5 of the rule; a soft mask in [0, 1]) to ``path`` and log
    its size; nothing when it has none (``local`` off, or nothing varies).
    """
    from cryoscape.io.mrc import write_mrc

    region = rec.variable_region()
    if region is None:
        log("variable region: none (one neighbourhood choice per shell for the whole box)")
        return None
    write_mrc(path, region, rec.pixel_size_angstrom)
    log(f"variable region{' (given)' if given else ''}: {100 * float(np.mean(region > 0.5)):.2f} % of the box "
        f"({Path(path).name}); neighbourhoods are chosen inside and outside it separately")
    return Path(path)


def reconstruct_maps(run_dir, output, z=None, zfile=None, epoch: int | None = None, log=print,
                     region_mask=None, **kwargs) -> list[Path]:
    """Latent-neighbour maps of a run at the points ``z`` (one point) or of ``zfile``, written as
    ``cryoscape eval-vol --reconstruct`` does: ``output`` itself (an ``.mrc`` path, one point) or
    ``output/vol_NNN.mrc`` and ``z_values.txt``, each map with its half maps and FSC
    (:func:`write_neighbour_map`), and the variable region (:func:`write_variable_region`; ``region_mask``: an MRC
    file to use as that region). ``kwargs`` go to :class:`NeighbourReconstructor`. Returns the map paths.
    """
    from cryoscape.inference import read_latent_file
    from cryoscape.utils.atomic import atomic_path

    rec = reconstructor_from_run(run_dir, epoch, **kwargs)
    if region_mask is not None:
        from cryoscape.data.focus import load_focus_map

        rec.set_region(load_focus_map(region_mask, rec.box, rec.pixel_size_angstrom, name="region mask"))
    zdim = rec.z.shape[1]
    if zfile is not None:
        points = read_latent_file(zfile, zdim)
    elif z is not None:
        points = np.asarray(z, dtype=np.float32).reshape(1, -1)
        if points.shape[1] != zdim:
            raise InputError(f"--z has {points.shape[1]} values but the model has zdim {zdim}")
    else:
        raise InputError("give --z or --zfile (the latent points to reconstruct at)")
    output = Path(output)
    single = len(points) == 1 and output.suffix == ".mrc"
    paths = [output] if single else [output / f"vol_{i + 1:03d}.mrc" for i in range(len(points))]
    write_variable_region(output.with_name(f"{output.stem}_variable_region.mrc") if single
                          else output / "variable_region.mrc", rec, log, given=region_mask is not None)
    for p, path in zip(points, paths, strict=True):
        m = rec.reconstruct(p)
        write_neighbour_map(path, m, rec.pixel_size_angstrom)
        res = f"{m.resolution_angstrom:.2f} A" if math.isfinite(m.resolution_angstrom) else "none"
        log(f"{path.name}: half-map resolution (FSC 0.143) {res}; neighbours per shell "
            f"{min(m.k_per_shell)}-{max(m.k_per_shell)}" + ("" if m.k_per_shell_rest == m.k_per_shell else
                                                            f" (outside the variable region "
                                                            f"{min(m.k_per_shell_rest)}-{max(m.k_per_shell_rest)})"))
    if not single:
        with atomic_path(output / "z_values.txt") as tmp:
            np.savetxt(tmp, points)
    return paths
