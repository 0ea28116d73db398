"""Align a map to a reference by a rotation, a translation and, optionally, a hand flip (mirror).

An ab initio map comes in an arbitrary orientation, position and hand; before it can be compared with a reference
(FSC, correlation) it is brought into the reference's frame. The transform found maps the moving map ``M`` to

    aligned(r) = M(F^h R^T (r - t))

with ``r = (x, y, z)`` the position relative to the box centre (voxel ``D // 2`` on every axis,
``docs/conventions.md``), ``R`` a rotation matrix (reported also as RELION ZYZ Euler angles
``matrix_to_euler_relion(R)``: the aligned map is ``M`` in the frame that RELION's ``A = R`` maps it to),
``t`` the translation (Angstrom, ``(x, y, z)``), ``F = diag(1, 1, -1)`` the mirror of the z axis (the first array
axis) and ``h`` 1 when the hand is flipped, else 0: a feature at ``p`` in ``M`` is found at ``R F^h p + t``.

Search (:func:`align_maps`), done once for ``M`` and once for its mirror ``M(F r)``:

1. Coarse: both maps are Fourier-cropped to ``coarse_box`` (default 24) voxels, blurred (Gaussian, 1 voxel),
   masked by a soft sphere (solvent level from the box corners set to 0, the reference made zero-mean) and
   normalised; for every rotation of the HEALPix SO(3) grid of level ``coarse_level`` (default 1: 576 rotations,
   spacing 30 degrees; :mod:`cryoscape.imaging.so3_grid`) the rotated map (trilinear,
   ``scipy.ndimage.map_coordinates``) is cross-correlated with the reference over all translations at once by
   FFT (within ``max_shift`` of the box, default a quarter). The score of a rotation is the normalised height of
   the correlation peak, interpolated between voxels (a parabola along each axis), so it varies smoothly.
2. Local: the ``n_candidates`` (default 4) best rotations at least 1.5 grid spacings apart are refined at the
   coarse size by hill-climbing on local grids (:func:`cryoscape.imaging.so3_grid.local_grid`, 27 rotations;
   spacings 15, 7.5, 3.75 degrees, up to 4 moves each).
3. Fine: the best of each hand is refined on the maps at full size (Fourier-cropped to ``refine_box``, default
   64, for larger boxes: at D = 128 a box of 64 gave the same rotation, 0.23 degrees off, in a fifth of the time),
   blurred by half a voxel, with the 6 face neighbours at spacings 3.75 down to
   ``final_spacing_deg`` (default 0.5: 0.47 degrees) and then the whole 27-point cube at the last spacing. At
   each spacing the shift is re-estimated to a fraction of a voxel (maximum of the Fourier-series interpolant of
   the cross-correlation) and the reference is moved by its fractional part, so that rotations are compared at
   the right sub-voxel shift.

The hand whose fine score is higher wins; its correlation and the other hand's (after the same search) are both
reported (:class:`MapAlignment`). Cost: per hand, 576 + 4 x (3 to 12) x 27 rotations at 24^3 (each a trilinear
resampling of the ~7000 voxels of the sphere and a 24^3 FFT) and about 100-200 rotations at the fine size (each
a resampling of the sphere, ~0.5 D^3 voxels, and a D^3 FFT), then two cubic-spline resamplings at full size:
measured 15-26 s for D = 64 (about 2600 rotations), 25 s for D = 128 and 8 s for D = 24-32 on the 2-core
machine shared with other jobs (load 10; about 8 s of CPU for D = 64); ``tests/test_map_align.py`` runs
D = 24-32. For a rotated, shifted (and mirrored) copy of a map the transform is recovered to within a degree and
a tenth of a voxel (blob maps and a simulator ground-truth map at D = 64, also with added noise of the map's own
standard deviation).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy import ndimage

from cryoscape.errors import InputError
from cryoscape.imaging.rotations import matrix_to_euler_relion
from cryoscape.imaging.so3_grid import geodesic_distance_deg, grid_rotations, grid_spacing_deg, local_grid

__all__ = ["MapAlignment", "align_maps", "AlignedGenerator", "MIRROR"]

MIRROR = np.diag([1.0, 1.0, -1.0])  # F: mirror of the z axis (the first array axis), in (x, y, z)
_REVERSE = np.eye(3)[::-1]  # (x, y, z) <-> array index order (z, y, x)


@dataclass(frozen=True)
class MapAlignment:
    """The transform bringing a map onto a reference (module doc: ``aligned(r) = M(F^h R^T (r - t))``).

    Attributes
    ----------
    rotation : ``(3, 3)`` rotation matrix ``R`` (det +1).
    translation_angstrom : ``(3,)`` ``t`` in Angstrom, ``(x, y, z)``.
    hand_flipped : whether the map was mirrored (``F``, z axis) before the rotation.
    correlation : real-space correlation of the aligned map with the reference (full box, unmasked).
    correlation_other_hand : the same for the best transform of the other hand (how clearly the hand was decided).
    pixel_size_angstrom : voxel size the translation was converted with.
    n_rotations : rotations scored in the search; seconds : wall time of the search.
    """

    rotation: np.ndarray
    translation_angstrom: np.ndarray
    hand_flipped: bool
    correlation: float
    correlation_other_hand: float
    pixel_size_angstrom: float
    n_rotations: int = 0
    seconds: float = 0.0
    rotation_other_hand: np.ndarray | None = field(default=None, repr=False)

    @property
    def euler_deg(self) -> np.ndarray:
        """RELION ZYZ Euler angles ``(rot, tilt, psi)`` of ``rotation`` in degrees, ``(3,)``."""
        return matrix_to_euler_relion(self.rotation)[0]

    @property
    def rotation_angle_deg(self) -> float:
        """Angle (degrees) of ``rotation`` (its geodesic distance from the identity)."""
        return float(geodesic_distance_deg(self.rotation, np.eye(3)))

    @property
    def linear_map(self) -> np.ndarray:
        """``R F^h`` ``(3, 3)``: where the map's ``(x, y, z)`` directions go."""
        return self.rotation @ MIRROR if self.hand_flipped else self.rotation.copy()

    def apply(self, volume, pixel_size_angstrom: float | None = None, order: int = 3) -> np.ndarray:
        """The map ``volume`` ``(D, D, D)`` in the reference's frame, float32 ``(D, D, D)`` (spline of ``order``;
        voxels brought in from outside the box are 0). ``pixel_size_angstrom`` (default: the alignment's)
        converts the translation, so a map of another box but the same voxel size can be transformed too.
        """
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(f"expected a cubic volume, got shape {vol.shape}")
        apix = float(pixel_size_angstrom or self.pixel_size_angstrom)
        t_px = np.asarray(self.translation_angstrom, dtype=np.float64) / apix
        matrix, offset = _index_affine(self.linear_map, t_px, vol.shape[0])
        return ndimage.affine_transform(vol, matrix, offset, order=order, mode="constant", cval=0.0)

    def to_dict(self) -> dict:
        """JSON-ready summary (lists and floats)."""
        rot, tilt, psi = (float(a) for a in self.euler_deg)
        return {
            "rotation_matrix": np.asarray(self.rotation).round(6).tolist(),
            "euler_relion_deg": {"rot": round(rot, 3), "tilt": round(tilt, 3), "psi": round(psi, 3)},
            "rotation_angle_deg": round(self.rotation_angle_deg, 3),
            "translation_angstrom": [round(float(v), 3) for v in self.translation_angstrom],
            "hand_flipped": bool(self.hand_flipped),
            "mirror_axis": "z (the first array axis), before the rotation" if self.hand_flipped else None,
            "correlation": _finite_or_none(self.correlation),
            "correlation_other_hand": _finite_or_none(self.correlation_other_hand),
            "pixel_size_angstrom": float(self.pixel_size_angstrom),
            "n_rotations_searched": int(self.n_rotations),
            "seconds": round(float(self.seconds), 2),
        }

    def describe(self) -> str:
        """Two lines for a console: rotation, translation, hand and the correlations."""
        rot, tilt, psi = self.euler_deg
        t = self.translation_angstrom
        hand = "flipped (mirrored along z, then rotated)" if self.hand_flipped else "kept"
        other = (f" (best with the other hand {self.correlation_other_hand:.4f})"
                 if math.isfinite(self.correlation_other_hand) else " (hand not searched)")
        return (f"aligned: rotation (RELION rot, tilt, psi) = ({rot:.1f}, {tilt:.1f}, {psi:.1f}) deg "
                f"[{self.rotation_angle_deg:.1f} deg about its axis], translation ({t[0]:.2f}, {t[1]:.2f}, "
                f"{t[2]:.2f}) A, hand {hand}\n"
                f"  correlation after alignment {self.correlation:.4f}{other}; {self.n_rotations} rotations "
                f"in {self.seconds:.1f} s")


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _index_affine(L: np.ndarray, t_px: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` for ``ndimage.affine_transform`` (output index -> input index) of
    ``out(r) = in(L^-1 (r - t))`` with ``r`` in pixels ``(x, y, z)`` about the centre ``D // 2``.
    """
    Linv = np.linalg.inv(L)
    matrix = _REVERSE @ Linv @ _REVERSE
    c = np.full(3, float(D // 2))
    offset = c - matrix @ c - _REVERSE @ Linv @ np.asarray(t_px, dtype=np.float64)
    return matrix, offset


def _volume(vol, name: str) -> np.ndarray:
    arr = np.asarray(vol, dtype=np.float64)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise InputError(f"{name}: expected a cubic volume, got shape {arr.shape}")
    if arr.shape[0] % 2 or arr.shape[0] < 8:
        raise InputError(f"{name}: the box must be even and at least 8 voxels, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} has non-finite voxels")
    if np.ptp(arr) == 0:
        raise InputError(f"{name} is constant: nothing to align")
    return arr


def _crop(vol: np.ndarray, size: int) -> np.ndarray:
    """Fourier crop (or keep) a cube to ``size`` voxels (float64)."""
    if vol.shape[0] == size:
        return vol.copy()
    import torch

    from cryoscape.imaging.fft import resample_volume

    return resample_volume(torch.from_numpy(vol), size).numpy().astype(np.float64)


class _Scorer:
    """Scores rotations of a moving map against a reference at one box size: rotate, cross-correlate by FFT."""

    def __init__(self, moving: np.ndarray, reference: np.ndarray, max_shift_px: float, blur_px: float,
                 batch: int = 96):
        D = moving.shape[0]
        self.D = D
        i = np.arange(D) - D // 2
        zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
        radius = np.sqrt(xx ** 2 + yy ** 2 + zz ** 2)
        rmax = D / 2 - 1
        sphere = np.clip(rmax - radius, 0.0, 1.0)  # soft over a voxel
        self.inside = radius < rmax
        self.points = np.stack([xx[self.inside], yy[self.inside], zz[self.inside]]).astype(np.float64)  # (3, P)

        outside = radius >= D / 2

        def prep(v, zero_mean):
            if blur_px > 0:
                v = ndimage.gaussian_filter(v, blur_px, mode="nearest")
            v = (v - (np.mean(v[outside]) if outside.any() else np.median(v))) * sphere  # solvent level -> 0
            if zero_mean:
                v = v - v.mean()
            return v / (np.linalg.norm(v) or 1.0)

        # the reference has zero mean over the box, so a constant in the moving map adds nothing at any shift
        # (a mean subtracted inside a sphere of both maps would pull the shift towards 0)
        self.moving = prep(moving, False)
        ref = prep(reference, True)
        self.ref_ft0 = self.ref_ft = scipy.fft.rfftn(ref.astype(np.float32))
        self.offset = np.zeros(3)
        dist = np.minimum(np.arange(D), D - np.arange(D))  # circular shift distance per axis
        self.shift_ok = (dist[:, None, None] ** 2 + dist[None, :, None] ** 2
                         + dist[None, None, :] ** 2) <= max_shift_px ** 2
        self.batch = batch

    def set_offset(self, offset_px) -> None:
        """Correlate against the reference moved by ``-offset`` (pixels, x y z; Fourier shift), so that shifts found
        are ``offset`` + whole voxels: a fractional offset lets the rotation be scored at a fractional shift.
        """
        self.offset = np.asarray(offset_px, dtype=np.float64)
        k = np.fft.fftfreq(self.D)
        kx = np.fft.rfftfreq(self.D)
        phase = (k[:, None, None] * self.offset[2] + k[None, :, None] * self.offset[1]
                 + kx[None, None, :] * self.offset[0])
        self.ref_ft = (self.ref_ft0 * np.exp(2j * np.pi * phase)).astype(np.complex64)

    def rotated(self, L: np.ndarray) -> np.ndarray:
        """The moving map under ``r -> L r`` (no translation), ``(n, D, D, D)`` for ``L`` ``(n, 3, 3)``."""
        n = L.shape[0]
        src = np.einsum("nji,jp->nip", L, self.points)  # L^-1 r = L^T r for orthogonal L
        coords = src[:, ::-1] + self.D // 2  # (n, 3 [z, y, x], P)
        vals = ndimage.map_coordinates(self.moving, coords.transpose(1, 0, 2).reshape(3, -1), order=1,
                                       mode="constant", cval=0.0)
        out = np.zeros((n,) + self.moving.shape, dtype=np.float32)
        out[:, self.inside] = vals.reshape(n, -1)
        return out

    def correlation_volumes(self, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-correlation volumes ``(n, D, D, D)`` (index = circular shift, z y x) and map norms ``(n,)``."""
        rot = self.rotated(L)
        sums = rot.sum(axis=(1, 2, 3), dtype=np.float64)
        norms = np.sqrt(np.maximum(np.einsum("nzyx,nzyx->n", rot, rot, dtype=np.float64) - sums ** 2 / rot[0].size,
                                   0.0))
        cc = scipy.fft.irfftn(self.ref_ft[None] * np.conj(scipy.fft.rfftn(rot, axes=(1, 2, 3))),
                              s=rot.shape[1:], axes=(1, 2, 3))
        return cc, np.maximum(norms, 1e-30)

    def score(self, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best normalised correlation ``(n,)`` over allowed shifts and that shift ``(n, 3)`` (pixels, x y z).

        The correlation is the height of the peak interpolated between voxels (a parabola along each axis through
        the best voxel and its two neighbours), so that it changes smoothly with the rotation even when the best
        shift is not a whole number of voxels.
        """
        scores = np.empty(L.shape[0])
        shifts = np.empty((L.shape[0], 3))
        D = self.D
        for s in range(0, L.shape[0], self.batch):
            cc, norms = self.correlation_volumes(L[s:s + self.batch])
            n = cc.shape[0]
            flat = cc.reshape(n, -1)
            best = np.where(self.shift_ok.ravel()[None], flat, -np.inf).argmax(axis=1)
            zyx = np.stack(np.unravel_index(best, (D,) * 3), axis=1)  # (n, 3)
            rows = np.arange(n)
            peak = flat[rows, best]
            height = peak.copy()
            for axis in range(3):
                lo, hi = zyx.copy(), zyx.copy()
                lo[:, axis] = (lo[:, axis] - 1) % D
                hi[:, axis] = (hi[:, axis] + 1) % D
                a = cc[rows, lo[:, 0], lo[:, 1], lo[:, 2]]
                c = cc[rows, hi[:, 0], hi[:, 1], hi[:, 2]]
                curv = a - 2 * peak + c
                ok = curv < 0
                height += np.where(ok, -((a - c) ** 2) / (8 * np.where(ok, curv, -1.0)), 0.0)
            scores[s:s + self.batch] = height / norms
            shifts[s:s + self.batch] = ((zyx + D // 2) % D - D // 2)[:, ::-1] + self.offset
        return scores, shifts

    def subvoxel_shift(self, L: np.ndarray) -> np.ndarray:
        """Shift ``(3,)`` (pixels, x y z) of the correlation peak for one ``L`` ``(3, 3)``: the best whole-voxel
        shift, then the maximum within a voxel of it of the band-limited (Fourier-series) interpolant of the
        cross-correlation, found by L-BFGS-B (a parabola through the peak is biased by a tenth of a voxel).
        """
        from scipy.optimize import minimize

        rot = self.rotated(L[None])[0]
        X = self.ref_ft * np.conj(scipy.fft.rfftn(rot))
        cc = np.where(self.shift_ok, scipy.fft.irfftn(X, s=rot.shape), -np.inf)
        peak = np.array(np.unravel_index(int(cc.argmax()), cc.shape), dtype=np.float64)
        D = self.D
        k = np.fft.fftfreq(D)
        kx = np.fft.rfftfreq(D)
        w = np.where((np.arange(kx.size) == 0) | (np.arange(kx.size) == D // 2), 1.0, 2.0)  # Hermitian halves
        Xw = X.astype(np.complex128) * w / D ** 3
        kz3, ky3, kx3 = k[:, None, None], k[None, :, None], kx[None, None, :]

        def negative_cc(t):  # t: shift in index order (z, y, x)
            e = Xw * np.exp(2j * np.pi * (kz3 * t[0] + ky3 * t[1] + kx3 * t[2]))
            grad = -np.array([(e * (2j * np.pi * kk)).real.sum() for kk in (kz3, ky3, kx3)])
            return -e.real.sum(), grad

        res = minimize(negative_cc, peak, jac=True, method="L-BFGS-B",
                       bounds=[(p - 1.0, p + 1.0) for p in peak])
        out = res.x if res.fun <= negative_cc(peak)[0] else peak
        return ((out + D // 2) % D - D // 2)[::-1] + self.offset


def _distinct_best(L: np.ndarray, scores: np.ndarray, n: int, min_sep_deg: float) -> list[int]:
    """Indices of up to ``n`` best-scoring rotations, each at least ``min_sep_deg`` from those picked before."""
    picked: list[int] = []
    for i in np.argsort(-scores):
        if all(geodesic_distance_deg(L[i], L[j]) >= min_sep_deg for j in picked):
            picked.append(int(i))
            if len(picked) == n:
                break
    return picked


_STAR = np.array([13, 4, 22, 10, 16, 12, 14])  # centre and the 6 face neighbours of the 3 x 3 x 3 local grid


def _refine(scorer: _Scorer, R: np.ndarray, F: np.ndarray, spacings, max_moves: int = 4,
            star: bool = False) -> tuple[np.ndarray, float, int]:
    """Hill-climb ``R`` on local grids of the given spacings: at each spacing, move to the best of the 27 points
    (``star``: the centre and its 6 face neighbours) around the current rotation until the centre is the best,
    at most ``max_moves`` times.
    """
    best_score = -math.inf
    count = 0
    for spacing in spacings:
        for _ in range(max_moves):
            cand = local_grid(R, spacing, radius=1)[0]  # (27, 3, 3), the centre at 13
            if star:
                cand = cand[_STAR]
            scores, _ = scorer.score(cand @ F)
            count += len(cand)
            i = int(np.argmax(scores))
            R, best_score = cand[i], float(scores[i])
            if i == (0 if star else 13):
                break
    return R, best_score, count


def _halvings(start: float, stop: float) -> list[float]:
    """``start, start / 2, ...`` down to the first value at or below ``stop``."""
    out = [start]
    while out[-1] > stop * 1.001:
        out.append(out[-1] / 2.0)
    return out


def align_maps(moving, reference, pixel_size_angstrom: float = 1.0, flip: bool = True, coarse_box: int = 24,
               coarse_level: int = 1, n_candidates: int = 4, refine_box: int = 64,
               final_spacing_deg: float = 0.5, max_shift: float = 0.25, blur_px: float = 1.0) -> MapAlignment:
    """Find the rotation, translation and hand that best bring ``moving`` onto ``reference`` (module doc).

    Parameters
    ----------
    moving, reference : ``(D, D, D)`` maps of the same box (even ``D >= 8``) and voxel size.
    pixel_size_angstrom : voxel size (A), for the translation in Angstrom.
    flip : also try the mirrored map and keep the better hand (default); ``False`` keeps the hand.
    coarse_box : box (voxels) of the coarse search (the maps are Fourier-cropped to it when larger).
    coarse_level : level of the SO(3) grid of the coarse search (1: 576 rotations, 30 degrees; 2: 4608, 15).
    n_candidates : distinct coarse optima refined locally (per hand).
    refine_box : largest box of the fine refinement (larger maps are Fourier-cropped to it for the search).
    final_spacing_deg : spacing (degrees) of the last local grid.
    max_shift : largest translation searched, as a fraction of the box.
    blur_px : Gaussian blur (voxels of each stage's box) applied before correlating.

    Returns
    -------
    :class:`MapAlignment` (the correlation is that of ``alignment.apply(moving)`` with ``reference``).
    """
    from cryoscape.analysis.maps import map_correlation

    t0 = time.perf_counter()
    M = _volume(moving, "the moving map")
    ref = _volume(reference, "the reference map")
    if M.shape != ref.shape:
        raise InputError(f"the maps differ in box: {M.shape} vs {ref.shape}",
                         hint="resample one map to the other's box and pixel size first")
    if not pixel_size_angstrom > 0:
        raise InputError(f"the voxel size must be positive, got {pixel_size_angstrom}")
    if not 0 < max_shift <= 0.5:
        raise InputError(f"max_shift must be a fraction of the box in (0, 0.5], got {max_shift}")
    D = M.shape[0]
    Dc = min(D, max(8, 2 * (int(coarse_box) // 2)))
    Df = min(D, max(Dc, 2 * (int(refine_box) // 2)))
    coarse = _Scorer(_crop(M, Dc), _crop(ref, Dc), max_shift * Dc, blur_px)
    fine = _Scorer(_crop(M, Df), _crop(ref, Df), max_shift * Df, blur_px * 0.5)
    grid = grid_rotations(coarse_level)
    spacing = grid_spacing_deg(coarse_level)
    coarse_steps = _halvings(spacing / 2, 3.75)
    fine_steps = _halvings(coarse_steps[-1], final_spacing_deg)
    n_rot = 0
    hands = []
    for flipped in ((False, True) if flip else (False,)):
        F = MIRROR if flipped else np.eye(3)
        scores, _ = coarse.score(grid @ F)
        n_rot += len(grid)
        best_R, best_s = grid[0], -math.inf
        for i in _distinct_best(grid, scores, n_candidates, 1.5 * spacing):
            R, s, n = _refine(coarse, grid[i], F, coarse_steps)
            n_rot += n
            if s > best_s:
                best_R, best_s = R, s
        # at each spacing, the reference is moved by the fractional part of the current shift, so that
        # whole-voxel shifts do not pull the rotation towards one that mimics the fraction
        R, s = best_R, -math.inf
        t = fine.subvoxel_shift(R @ F)
        for i, spacing in enumerate(fine_steps + fine_steps[-1:]):
            fine.set_offset(t - np.round(t))
            # face neighbours only while descending; the whole cube at the last spacing (diagonal ridges)
            R, s, n = _refine(fine, R, F, [spacing], max_moves=6, star=i < len(fine_steps))
            n_rot += n
            t = fine.subvoxel_shift(R @ F)
        t_px = t * (D / Df)
        hands.append((s, flipped, R, t_px))
    hands.sort(key=lambda h: -h[0])
    results = []
    for _, flipped, R, t_px in hands:
        a = MapAlignment(rotation=R, translation_angstrom=t_px * pixel_size_angstrom, hand_flipped=flipped,
                         correlation=math.nan, correlation_other_hand=math.nan,
                         pixel_size_angstrom=float(pixel_size_angstrom))
        results.append(map_correlation(a.apply(M), ref))
    _, flipped, R, t_px = hands[0]
    return MapAlignment(rotation=R, translation_angstrom=t_px * pixel_size_angstrom, hand_flipped=flipped,
                        correlation=float(results[0]),
                        correlation_other_hand=float(results[1]) if len(results) > 1 else math.nan,
                        pixel_size_angstrom=float(pixel_size_angstrom), n_rotations=n_rot,
                        seconds=time.perf_counter() - t0,
                        rotation_other_hand=hands[1][2] if len(hands) > 1 else None)


class AlignedGenerator:
    """A volume generator whose ``generate_volumes`` returns its maps moved by ``alignment`` (everything else,
    e.g. ``pixel_size_angstrom``, is the wrapped generator's): all maps of one decoder share one frame.
    """

    def __init__(self, generator, alignment: MapAlignment):
        self._generator = generator
        self.alignment = alignment

    def __getattr__(self, name):
        return getattr(self._generator, name)

    def generate_volumes(self, z, batch_size: int = 8) -> np.ndarray:
        """The wrapped generator's volumes ``(n, D, D, D)`` float32 for latents ``z`` ``(n, zdim)``, aligned."""
        vols = np.asarray(self._generator.generate_volumes(z, batch_size=batch_size), dtype=np.float32)
        apix = float(getattr(self._generator, "pixel_size_angstrom", self.alignment.pixel_size_angstrom))
        return np.stack([self.alignment.apply(v, apix) for v in vols]) if len(vols) else vols
