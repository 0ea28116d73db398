"""Typed per-particle metadata: CTF parameters and poses, in cryoscape's single convention.

Every reader (STAR, cryoSPARC ``.cs``, cryoDRGN ``.pkl``) converts into these containers at the I/O
boundary; everything downstream uses only them. See ``docs/conventions.md``.

Conventions
-----------
* ``Poses.rotations`` are RELION's Euler matrices ``A = Euler_angles2matrix(rot, tilt, psi)`` (ZYZ),
  mapping volume coordinates to image (camera) coordinates. The image is the projection along the camera
  z axis of the volume rotated by ``A``; its central slice is ``F_img(k) = F_vol(A^T k)`` for ``k = (kx, ky, 0)``.
* ``Poses.shifts_angstrom`` are RELION origins (``rlnOriginXAngst``, ``rlnOriginYAngst``): the particle
  centre sits at the box centre minus the origin. Shifting the image by ``+origin`` centres the particle.
* CTF values follow RELION/CTFFIND: defocus U/V in Angstrom (positive = underfocus), astigmatism angle in
  degrees, voltage in kV, Cs in mm, amplitude contrast as a fraction, phase shift in degrees, B-factor in A^2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from cryoscape.errors import InputError

CTF_COLUMNS = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "astigmatism_angle_deg",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_deg",
    "bfactor_angstrom2",
    "scale",
)


def _as_column(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise InputError(f"CTF field {name} has shape {arr.shape}, expected ({n},)")
    return arr


@dataclass(frozen=True)
class CTFParams:
    """Per-particle CTF parameters; each field is a float64 array of shape ``(N,)``."""

    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    astigmatism_angle_deg: np.ndarray
    voltage_kv: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor_angstrom2: np.ndarray
    scale: np.ndarray

    @classmethod
    def create(
        cls,
        defocus_u_angstrom,
        defocus_v_angstrom,
        astigmatism_angle_deg,
        voltage_kv,
        cs_mm,
        amplitude_contrast,
        phase_shift_deg=0.0,
        bfactor_angstrom2=0.0,
        scale=1.0,
    ) -> CTFParams:
        """Build from arrays or scalars (scalars are broadcast to the length of the defocus array)."""
        n = int(np.asarray(defocus_u_angstrom).size)
        values = locals()
        return cls(**{name: _as_column(values[name], n, name) for name in CTF_COLUMNS})

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def __post_init__(self):
        n = self.defocus_u_angstrom.shape[0]
        for f in fields(self):
            arr = getattr(self, f.name)
            if arr.shape != (n,):
                raise InputError(f"CTF field {f.name} has shape {arr.shape}, expected ({n},)")
            if not np.all(np.isfinite(arr)):
                raise InputError(f"CTF field {f.name} contains NaN or Inf values")
            if n and np.abs(arr).max() > 1e10:  # also keeps the float32 copy used for training finite
                raise InputError(f"CTF field {f.name} has an implausible value {arr[np.argmax(np.abs(arr))]:g}")
        if n and self.voltage_kv.min() <= 0:
            raise InputError(f"CTF voltage must be positive (found {self.voltage_kv.min():g} kV)")
        if n and (self.amplitude_contrast.min() < 0 or self.amplitude_contrast.max() > 1):
            bad = self.amplitude_contrast[(self.amplitude_contrast < 0) | (self.amplitude_contrast > 1)][0]
            raise InputError(f"CTF amplitude contrast must be between 0 and 1 (found {bad:g})")

    def subset(self, indices) -> CTFParams:
        """The parameters of the particles at ``indices``."""
        return CTFParams(**{name: getattr(self, name)[indices] for name in CTF_COLUMNS})

    def to_array(self) -> np.ndarray:
        """``(N, 9)`` float32 array with columns in ``CTF_COLUMNS`` order (for batching on a device)."""
        return np.stack([getattr(self, name) for name in CTF_COLUMNS], axis=1).astype(np.float32)

    @classmethod
    def from_array(cls, array: np.ndarray) -> CTFParams:
        """Inverse of :meth:`to_array`."""
        array = np.asarray(array, dtype=np.float64)
        return cls(**{name: array[:, i].copy() for i, name in enumerate(CTF_COLUMNS)})


@dataclass(frozen=True)
class Poses:
    """Per-particle poses.

    ``rotations``: ``(N, 3, 3)`` float64, RELION matrices (volume -> image frame).
    ``shifts_angstrom``: ``(N, 2)`` float64, RELION origin (x, y) in Angstrom.
    """

    rotations: np.ndarray
    shifts_angstrom: np.ndarray

    def __post_init__(self):
        r, s = np.asarray(self.rotations), np.asarray(self.shifts_angstrom)
        if r.ndim != 3 or r.shape[1:] != (3, 3):
            raise InputError(f"rotations have shape {r.shape}, expected (N, 3, 3)")
        if s.shape != (r.shape[0], 2):
            raise InputError(f"shifts have shape {s.shape}, expected ({r.shape[0]}, 2)")
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(s))):
            raise InputError("poses contain NaN or Inf values")
        if s.size and np.abs(s).max() > 1e8:
            raise InputError(f"an origin shift of {np.abs(s).max():g} A is implausible")

    def __len__(self) -> int:
        return int(self.rotations.shape[0])

    def subset(self, indices) -> Poses:
        """The poses of the particles at ``indices``."""
        return Poses(self.rotations[indices], self.shifts_angstrom[indices])

    def shifts_px(self, pixel_size_angstrom: float) -> np.ndarray:
        """Origins in pixels of an image with the given pixel size."""
        return self.shifts_angstrom / float(pixel_size_angstrom)


# amplitude contrast for files without one: the default of RELION's Import and CTF jobs (Q0 0.1 in its
# pipeline_jobs.cpp; RELION's CTF::read itself would take 0 silently)
DEFAULT_AMPLITUDE_CONTRAST = 0.1


@dataclass(frozen=True)
class CTFOverrides:
    """Optics values given on the command line (``--kv``, ``--cs``, ``--amp-contrast``, ``--ps``).

    Each value, when set, replaces the file's for every particle, and fills in a column the file lacks (RELION 3.0
    files may have no ``rlnAmplitudeContrast``, ``rlnVoltage`` or ``rlnSphericalAberration``).
    """

    voltage_kv: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    phase_shift_deg: float | None = None

    def __post_init__(self):
        for name, option in (("voltage_kv", "--kv"), ("cs_mm", "--cs"), ("amplitude_contrast", "--amp-contrast"),
                             ("phase_shift_deg", "--ps")):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise InputError(f"{option} must be a finite number, got {value}")
        if self.voltage_kv is not None and self.voltage_kv <= 0:
            raise InputError(f"--kv must be positive, got {self.voltage_kv:g}")
        if self.amplitude_contrast is not None and not 0.0 <= self.amplitude_contrast <= 1.0:
            raise InputError(f"--amp-contrast must be between 0 and 1, got {self.amplitude_contrast:g}")

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def apply(self, ctf: CTFParams) -> CTFParams:
        """``ctf`` with every set value replacing the corresponding field."""
        values = {name: getattr(ctf, name) for name in CTF_COLUMNS}
        for f in fields(self):
            if getattr(self, f.name) is not None:
                values[f.name] = np.full(len(ctf), float(getattr(self, f.name)))
        return CTFParams(**values)
