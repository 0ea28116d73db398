"""Density maps built from isotropic 3-D Gaussians, and the built-in heterogeneous presets.

Every map is a sum of Gaussians ``w_j / ((2 pi)^(3/2) sigma_j^3) * exp(-|r - c_j|^2 / (2 sigma_j^2))`` sampled
on a ``[z, y, x]`` grid whose centre is voxel ``D // 2`` (``docs/conventions.md``); the sum of the voxels of
one Gaussian is ``w_j``. A low-pass to a resolution ``d`` (Angstrom) is applied exactly by widening each
Gaussian: ``sigma^2 -> sigma^2 + (0.225 d)^2`` (Chimera ``molmap``'s ``sigma = d / (pi sqrt 2)``), so maps stay
positive and smooth at the chosen resolution without Fourier filtering.

Presets describe objects in fractions of the box, so they scale with any box size ``D``. They fill a sphere of
radius about ``0.33 D`` (blob centres within ``0.30 D``). The blob width is ``max(1, 0.035 D)`` pixels.

========================  ====================================================================  ==========
preset                    states                                                                weights
========================  ====================================================================  ==========
``homogeneous``           one object                                                            1
``linear1d``              two rods joined at a hinge; the second turns through 1.5 rad in 50    uniform
                          steps (coordinate = step / 49)
``discrete3``             common core + subunit A / core + subunit B / core + A + B             10:15:25
``hinge_discrete``        25 hinge angles x (extra subunit absent, present); 50 states          uniform
``eightconf``             dumbbell: two domains on a central hub, shifted in 8 ways             equal
========================  ====================================================================  ==========
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cryoscape.errors import InputError

__all__ = [
    "StateSet",
    "states_from_preset",
    "states_from_maps",
    "SIGMA_PER_RESOLUTION",
    "render_gaussians",
    "Preset",
    "PRESETS",
    "get_preset",
    "preset_volumes",
]

#: Gaussian width per unit resolution (Chimera molmap: 1 / (pi * sqrt(2))).
SIGMA_PER_RESOLUTION = 1.0 / (math.pi * math.sqrt(2.0))

_TRUNCATE_SIGMAS = 4.0  # Gaussians are evaluated within +-4 sigma (relative error < 4e-4)


def render_gaussians(
    centers_angstrom: np.ndarray,
    sigmas_angstrom,
    weights,
    D: int,
    pixel_size_angstrom: float,
    resolution_angstrom: float | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Render a sum of isotropic 3-D Gaussians on a cubic grid.

    Parameters
    ----------
    centers_angstrom : array ``(n, 3)``, Gaussian centres ``(x, y, z)`` in Angstrom relative to the box centre
        (voxel ``D // 2``).
    sigmas_angstrom : float or array ``(n,)``, standard deviations in Angstrom (may be 0 for point atoms when a
        resolution is given).
    weights : float or array ``(n,)``, integrated weight of each Gaussian (sum over its voxels).
    D : int, box size in voxels.
    pixel_size_angstrom : float, voxel size in Angstrom.
    resolution_angstrom : float, optional. Low-pass: each sigma is widened by ``SIGMA_PER_RESOLUTION * d``.
    chunk_size : int, Gaussians rendered per vectorised step (bounds memory).

    Returns
    -------
    float32 array ``(D, D, D)`` indexed ``[z, y, x]``, non-negative. Gaussians are truncated at 4 sigma and at
    the box edge.
    """
    centers = np.asarray(centers_angstrom, dtype=np.float64).reshape(-1, 3)
    n = centers.shape[0]
    sig = np.broadcast_to(np.asarray(sigmas_angstrom, dtype=np.float64), (n,))
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), (n,))
    if resolution_angstrom is not None:
        sig = np.sqrt(sig**2 + (SIGMA_PER_RESOLUTION * float(resolution_angstrom)) ** 2)
    sig_px = sig / float(pixel_size_angstrom)
    if n and np.min(sig_px) <= 0:
        raise ValueError("render_gaussians: every Gaussian needs a positive width (give a resolution)")
    pos_px = centers / float(pixel_size_angstrom) + D // 2  # array index of each centre, (x, y, z) order
    out = np.zeros(D**3, dtype=np.float64)
    # Group Gaussians by window half-width so each group is one vectorised einsum.
    half = np.ceil(_TRUNCATE_SIGMAS * sig_px).astype(np.int64)
    for h in np.unique(half):
        idx = np.nonzero(half == h)[0]
        offsets = np.arange(-h, h + 1)
        for start in range(0, idx.size, chunk_size):
            sel = idx[start : start + chunk_size]
            p, s = pos_px[sel], sig_px[sel]
            base = np.rint(p).astype(np.int64)  # (m, 3) nearest voxel
            coords = base[:, :, None] + offsets[None, None, :]  # (m, 3, w)
            d = coords - p[:, :, None]
            g = np.exp(-0.5 * (d / s[:, None, None]) ** 2)  # separable 1-D factors, (m, 3, w)
            g /= math.sqrt(2 * math.pi) * s[:, None, None]
            inside = (coords >= 0) & (coords < D)
            g = np.where(inside, g, 0.0)
            coords = np.clip(coords, 0, D - 1)
            vals = np.einsum("m,mi,mj,mk->mijk", w[sel], g[:, 2], g[:, 1], g[:, 0])  # [z, y, x] windows
            flat = (coords[:, 2, :, None, None] * D + coords[:, 1, None, :, None]) * D + coords[:, 0, None, None, :]
            out += np.bincount(flat.ravel(), weights=vals.ravel(), minlength=D**3)
    return out.reshape(D, D, D).astype(np.float32)


def _rod(start, end, spacing: float) -> np.ndarray:
    """Points from ``start`` to ``end`` (box fractions) about ``spacing`` apart, ``(n, 3)``."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    n = max(2, int(round(np.linalg.norm(end - start) / spacing)) + 1)
    return start + np.linspace(0.0, 1.0, n)[:, None] * (end - start)


def _rot_z(points: np.ndarray, angle_rad: float, pivot=(0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    pivot = np.asarray(pivot, float)
    return (points - pivot) @ R.T + pivot


_SP = 0.04  # blob spacing along rods (fraction of D); with sigma 0.035 D rods are continuous


def _hinge_arms(angle_rad: float) -> np.ndarray:
    """Two elongated blob clusters meeting at a hinge near the centre; the second arm turns about z."""
    hinge = np.array([0.02, -0.04, 0.0])
    arm_a = np.concatenate(
        [
            _rod(hinge + [-0.04, 0.0, 0.0], hinge + [-0.30, 0.0, 0.0], _SP),
            _rod(hinge + [-0.08, 0.0, 0.06], hinge + [-0.24, 0.0, 0.06], _SP),  # second row: a thick rod
            [hinge + [-0.20, 0.07, 0.0]],  # knob: breaks the symmetry
        ]
    )
    arm_b0 = np.concatenate(
        [
            _rod(hinge + [0.04, 0.0, 0.0], hinge + [0.28, 0.0, 0.0], _SP),
            _rod(hinge + [0.10, 0.0, -0.06], hinge + [0.22, 0.0, -0.06], _SP),
        ]
    )
    # arm B starts at 20 deg above +x and turns counter-clockwise by angle_rad
    arm_b = _rot_z(arm_b0, math.radians(20.0) + angle_rad, pivot=hinge)
    return np.concatenate([arm_a, [hinge], arm_b])


def _core() -> np.ndarray:
    """Compact asymmetric core near the centre."""
    return np.concatenate(
        [
            _rod([-0.10, -0.06, -0.04], [0.10, -0.06, -0.04], _SP),
            _rod([-0.10, 0.02, -0.04], [0.06, 0.02, -0.04], _SP),
            _rod([-0.06, -0.06, 0.04], [0.10, -0.06, 0.04], _SP),
            [[0.0, 0.06, 0.0]],
        ]
    )


def _subunit_a() -> np.ndarray:
    """Elongated subunit on the +y side."""
    return np.concatenate(
        [_rod([-0.12, 0.14, 0.0], [0.12, 0.14, 0.0], _SP), _rod([-0.04, 0.22, 0.04], [0.08, 0.22, 0.04], _SP)]
    )


def _subunit_b() -> np.ndarray:
    """Globular subunit on the -y/+z side."""
    pts = [[x, y, z] for x in (-0.04, 0.04) for y in (-0.16, -0.22) for z in (0.06, 0.14)]
    return np.concatenate([np.array(pts), [[0.10, -0.20, 0.10]]])


def _dumbbell(shift_left, shift_right) -> np.ndarray:
    """Central hub with a domain on each side along x; each domain displaced by its shift (box fractions)."""
    hub = np.concatenate(
        [_rod([-0.08, 0.0, 0.0], [0.08, 0.0, 0.0], _SP), _rod([-0.04, 0.04, 0.04], [0.04, 0.04, 0.04], _SP)]
    )
    domain = np.array([[x, y, z] for x in (0.0, 0.05) for y in (-0.035, 0.035) for z in (-0.035, 0.035)])
    left = domain + [-0.22, 0.0, 0.0] + np.asarray(shift_left, float)
    right = domain + [0.17, 0.0, 0.0] + np.asarray(shift_right, float)
    left = np.concatenate([left, [[-0.25, 0.06, 0.0]]])  # asymmetry knob
    return np.concatenate([hub, left, right])


@dataclass
class StateSet:
    """The ground-truth objects of a simulation.

    Attributes
    ----------
    name : str, preset name, or ``"volumes"`` / ``"atomic"``.
    D : int, box size in voxels.
    pixel_size_angstrom : float.
    render : callable ``state -> float32 (D, D, D)`` map.
    coordinates : ``(n_states,)`` continuous coordinate of each state.
    weights : ``(n_states,)`` relative populations.
    extra : dict of ``(n_states,)`` per-state values (integer labels such as ``subunit``, or e.g. the motion
        mode's ``angle_deg``), copied per particle into ``labels.npz``.
    """

    name: str
    D: int
    pixel_size_angstrom: float
    render: Callable[[int], np.ndarray]
    coordinates: np.ndarray
    weights: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_states(self) -> int:
        """Number of ground-truth maps."""
        return int(len(self.weights))


@dataclass(frozen=True)
class Preset:
    """A built-in family of objects.

    Attributes
    ----------
    name : str
    n_states : int, number of ground-truth maps.
    coordinates : ``(n_states,)`` continuous coordinate of each state in ``[0, 1]`` (discrete presets: the
        state index scaled to ``[0, 1]``; ``homogeneous``: 0).
    weights : ``(n_states,)`` relative population of each state.
    extra : dict of per-state integer labels stored alongside (e.g. ``subunit`` for ``hinge_discrete``).
    """

    name: str
    n_states: int
    coordinates: np.ndarray
    weights: np.ndarray
    points: tuple = field(repr=False, default=())  # per state: (n_j, 3) blob centres in box fractions
    extra: dict = field(default_factory=dict)

    def blob_centers(self, state: int) -> np.ndarray:
        """Blob centres ``(n, 3)`` of ``state`` as ``(x, y, z)`` fractions of the box."""
        return self.points[state]


def _make_presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    presets["homogeneous"] = Preset("homogeneous", 1, np.zeros(1), np.ones(1), (_hinge_arms(0.75),))

    c = np.linspace(0.0, 1.0, 50)
    presets["linear1d"] = Preset("linear1d", 50, c, np.ones(50), tuple(_hinge_arms(1.5 * ci) for ci in c))

    core, a, b = _core(), _subunit_a(), _subunit_b()
    presets["discrete3"] = Preset(
        "discrete3", 3, np.array([0.0, 0.5, 1.0]), np.array([10.0, 15.0, 25.0]),
        (np.concatenate([core, a]), np.concatenate([core, b]), np.concatenate([core, a, b])),
    )

    hc = np.linspace(0.0, 1.0, 25)
    # a sizeable subunit (about a third of the arms' mass) on the fixed arm, so that its presence is a discrete
    # state of similar visibility to the hinge motion
    extra_sub = np.concatenate(
        [
            _rod([-0.26, 0.08, 0.0], [-0.06, 0.08, 0.0], _SP),
            _rod([-0.22, 0.14, 0.04], [-0.10, 0.14, 0.04], _SP),
            [[-0.16, 0.11, -0.06]],
        ]
    )
    pts, coords, subunit = [], [], []
    for present in (0, 1):
        for ci in hc:
            arms = _hinge_arms(1.2 * ci)
            pts.append(np.concatenate([arms, extra_sub]) if present else arms)
            coords.append(ci)
            subunit.append(present)
    presets["hinge_discrete"] = Preset(
        "hinge_discrete", 50, np.array(coords), np.ones(50), tuple(pts), {"subunit": np.array(subunit)}
    )

    d = 0.05
    shifts = [((0, sl, sz), (0, sr, sz)) for sz in (0.0, d) for sl in (-d, d) for sr in (-d, d)]
    presets["eightconf"] = Preset(
        "eightconf", 8, np.arange(8) / 7.0, np.ones(8),
        tuple(_dumbbell(np.array(left), np.array(right)) for left, right in shifts),
    )
    return presets


PRESETS: dict[str, Preset] = _make_presets()


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises :class:`InputError` listing the choices if unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}") from None


def blob_sigma_px(D: int) -> float:
    """Blob standard deviation of the presets in pixels: ``max(1, 0.035 D)``."""
    return max(1.0, 0.035 * D)


def preset_volumes(
    name: str,
    D: int,
    pixel_size_angstrom: float,
    resolution_angstrom: float | None = None,
    states=None,
):
    """Render the ground-truth maps of a preset.

    Parameters
    ----------
    name : str, a key of :data:`PRESETS`.
    D : int, even box size in voxels.
    pixel_size_angstrom : float, voxel size in Angstrom.
    resolution_angstrom : float, optional extra low-pass (Angstrom); default none beyond the blob width.
    states : iterable of int, optional; the states to render (default all).

    Yields
    ------
    (state, float32 array ``(D, D, D)``) for each requested state. Blobs have unit peak height before the
    low-pass, so all states share one density scale.
    """
    preset = get_preset(name)
    sigma_px = blob_sigma_px(D)
    weight = (2 * math.pi) ** 1.5 * sigma_px**3  # unit peak height
    for state in range(preset.n_states) if states is None else states:
        centers = preset.blob_centers(state) * D * pixel_size_angstrom
        yield state, render_gaussians(
            centers, sigma_px * pixel_size_angstrom, weight, D, pixel_size_angstrom, resolution_angstrom
        )


def states_from_preset(
    name: str, D: int, pixel_size_angstrom: float, resolution_angstrom: float | None = None
) -> StateSet:
    """The objects of a built-in preset at box size ``D`` and voxel size ``pixel_size_angstrom`` (lazy rendering)."""
    preset = get_preset(name)
    if D % 2 or D < 8:
        raise InputError(f"box size {D} must be even and at least 8")

    def render(state: int) -> np.ndarray:
        return next(preset_volumes(name, D, pixel_size_angstrom, resolution_angstrom, states=[state]))[1]

    return StateSet(name, D, float(pixel_size_angstrom), render, preset.coordinates.astype(np.float64),
                    preset.weights.astype(np.float64), dict(preset.extra))


def states_from_maps(paths, pixel_size_angstrom: float | None = None) -> StateSet:
    """One state per MRC map (equal populations, coordinate ``i / (n - 1)``), read lazily.

    Parameters
    ----------
    paths : sequence of MRC files, all cubic with the same even box size.
    pixel_size_angstrom : float, optional; overrides the voxel size of the headers (required when they are unset).

    Raises
    ------
    InputError
        A map that is missing, not cubic/even, of a different box or voxel size than the first, or without a voxel
        size when none is given.
    """
    from cryoscape.io.mrc import read_header, read_mrc

    paths = list(paths)
    if not paths:
        raise InputError("no volumes given")
    D: int | None = None
    apix = 0.0  # set from the first map
    for p in paths:
        info = read_header(p)
        nz, ny, nx = info.shape
        if not nz == ny == nx or nx % 2:
            raise InputError(f"map is {nx} x {ny} x {nz} voxels; a cubic map with an even size is needed", p)
        if D is None:
            D, apix, first = nx, info.voxel_size_angstrom, p
        elif nx != D:
            raise InputError(f"map has {nx}^3 voxels but {first} has {D}^3", p, "all states need the same box")
        elif pixel_size_angstrom is None and abs(info.voxel_size_angstrom - apix) > 1e-3 * max(apix, 1e-6):
            raise InputError(f"voxel size {info.voxel_size_angstrom:.4f} A differs from {apix:.4f} A of {first}",
                             p, "pass --apix to override")
    if pixel_size_angstrom is not None:
        apix = float(pixel_size_angstrom)
    if not apix or apix <= 0:
        raise InputError("the map header has no voxel size", paths[0], "pass --apix")
    assert D is not None  # paths is not empty

    def render(state: int) -> np.ndarray:
        return read_mrc(paths[state])[0].astype(np.float32)

    n = len(paths)
    coords = np.arange(n) / max(n - 1, 1)
    return StateSet("volumes", int(D), float(apix), render, coords.astype(np.float64), np.ones(n))
