"""Contrast transfer function (RELION / CTFFIND convention), batched torch.

``docs/conventions.md``::

    lambda = 12.2643 / sqrt(V * (1 + 0.978466e-6 * V))            # Angstrom, V in volts
    df(theta) = (dfU + dfV)/2 + (dfU - dfV)/2 * cos(2 * (theta - theta_ast)),  theta = atan2(ky, kx)
    chi(s) = pi * lambda * df * s^2 - pi/2 * Cs * lambda^3 * s^4 + phase_shift   # Cs in Angstrom
    CTF(s) = scale * (sqrt(1 - w^2) * sin(chi) + w * cos(chi)) * exp(-B s^2 / 4)

The CTF is positive (``= w``) at ``s = 0``. Parameters travel as :class:`CTFTensors` (named tensors of any
leading shape, e.g. ``(B,)`` particles or ``(B, T)`` tilt images); a ``(..., 9)`` tensor in
``cryoscape.metadata.CTF_COLUMNS`` order (``CTFParams.to_array()``) is accepted wherever they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoscape.imaging.fft import freq_grid_2d

__all__ = ["CTFTensors", "CTF_FIELDS", "PREMULTIPLIED_EPS", "electron_wavelength_angstrom", "compute_ctf", "ctf_image",
           "phase_flip", "premultiplied_weights"]

# the parameters in cryoscape.metadata.CTF_COLUMNS order, by their CTFTensors names
CTF_FIELDS = ("defocus_u", "defocus_v", "angle", "voltage", "cs", "w", "phase_shift", "bfactor", "scale")

# floor of CTF^2 in premultiplied_weights: CTF^2 at zero frequency for amplitude contrast 0.07 (half of it for 0.1)
PREMULTIPLIED_EPS = 0.005


def _field(i: int, doc: str):
    return property(lambda self: self.values[..., i], doc=doc)


@dataclass(frozen=True)
class CTFTensors:
    """CTF parameters of a batch as named tensors of one leading shape (``shape``: ``(B,)``, ``(B, T)``, ...).

    ``defocus_u``, ``defocus_v`` (Angstrom, positive underfocus), ``angle`` (astigmatism, degrees), ``voltage``
    (kV), ``cs`` (mm), ``w`` (amplitude contrast), ``phase_shift`` (degrees), ``bfactor`` (A^2), ``scale``.
    Indexing, :meth:`to`, :meth:`reshape` and :meth:`gather` act on the leading dimensions. The parameters are
    kept packed in ``values`` ``(*shape, 9)`` (one gather per batch), in ``metadata.CTF_COLUMNS`` order.
    """

    values: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.values, torch.Tensor) or self.values.ndim < 1 or self.values.shape[-1] != 9:
            shape = tuple(getattr(self.values, "shape", ()))
            raise ValueError(f"CTF parameters must be a (..., 9) tensor, got shape {shape}")

    defocus_u = _field(0, "defocus U (Angstrom)")
    defocus_v = _field(1, "defocus V (Angstrom)")
    angle = _field(2, "astigmatism angle (degrees)")
    voltage = _field(3, "accelerating voltage (kV)")
    cs = _field(4, "spherical aberration (mm)")
    w = _field(5, "amplitude contrast (fraction)")
    phase_shift = _field(6, "phase shift (degrees)")
    bfactor = _field(7, "B-factor (A^2)")
    scale = _field(8, "scale factor")

    @classmethod
    def of(cls, ctf) -> CTFTensors:
        """``ctf`` itself, or a ``(..., 9)`` tensor/array in ``CTF_COLUMNS`` order as :class:`CTFTensors`."""
        if isinstance(ctf, cls):
            return ctf
        values = torch.as_tensor(np.asarray(ctf) if not isinstance(ctf, torch.Tensor) else ctf)
        return cls(values if values.is_floating_point() else values.float())

    @classmethod
    def from_params(cls, params, dtype: torch.dtype = torch.float32) -> CTFTensors:
        """From :class:`cryoscape.metadata.CTFParams` (one row per particle or image): shape ``(N,)``."""
        return cls(torch.as_tensor(params.to_array(), dtype=dtype))

    @classmethod
    def create(cls, **fields) -> CTFTensors:
        """From named values (tensors or numbers broadcast to one shape); ``phase_shift``, ``bfactor`` default to
        0 and ``scale`` to 1.
        """
        fields = {"phase_shift": 0.0, "bfactor": 0.0, "scale": 1.0, **fields}
        missing = [n for n in CTF_FIELDS if n not in fields]
        if missing:
            raise ValueError(f"CTFTensors.create: missing {', '.join(missing)}")
        parts = torch.broadcast_tensors(*[torch.as_tensor(fields[n], dtype=torch.float32) for n in CTF_FIELDS])
        return cls(torch.stack(parts, dim=-1))

    @property
    def shape(self) -> torch.Size:
        return self.values.shape[:-1]

    @property
    def ndim(self) -> int:
        return self.values.ndim - 1

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, index) -> CTFTensors:
        if isinstance(index, tuple) and any(i is Ellipsis for i in index):
            raise IndexError("CTFTensors: index the leading dimensions without '...'")
        return CTFTensors(self.values[index])

    def to(self, *args, **kwargs) -> CTFTensors:
        """As ``Tensor.to`` (device and/or dtype)."""
        return CTFTensors(self.values.to(*args, **kwargs))

    def float(self) -> CTFTensors:
        """As ``Tensor.float`` (float32 values)."""
        return CTFTensors(self.values.float())

    def reshape(self, *shape) -> CTFTensors:
        """New leading shape (``-1`` allowed)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return CTFTensors(self.values.reshape(*shape, 9))

    def gather(self, dim: int, index: torch.Tensor) -> CTFTensors:
        """``torch.gather`` along leading dimension ``dim`` with ``index`` of the leading shape's rank."""
        if dim < 0:
            dim += self.ndim
        return CTFTensors(torch.gather(self.values, dim, index[..., None].expand(*index.shape, 9)))


def electron_wavelength_angstrom(voltage_kv):
    """Relativistic electron wavelength in Angstrom for an accelerating voltage in kV (float or tensor)."""
    volts = voltage_kv * 1000.0
    if isinstance(volts, torch.Tensor):
        return 12.2643 / torch.sqrt(volts * (1.0 + 0.978466e-6 * volts))
    return 12.2643 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def compute_ctf(freqs_per_angstrom: torch.Tensor, ctf) -> torch.Tensor:
    """Evaluate the CTF at given spatial frequencies, broadcasting over leading dimensions.

    Parameters
    ----------
    freqs_per_angstrom : tensor ``(..., P, 2)``, ``(sx, sy)`` in 1/Angstrom (e.g. ``(P, 2)`` for every image).
    ctf : :class:`CTFTensors` of leading shape ``L`` (e.g. ``(B,)`` or ``(B, T)``), or a ``(..., 9)`` tensor in
        ``CTF_COLUMNS`` order (a single ``(9,)`` row counts as ``(1, 9)``).

    Returns
    -------
    tensor ``L x P`` broadcast with the frequencies' leading dimensions (``(B, P)`` for ``(P, 2)`` frequencies and
    ``(B,)`` parameters; dtype and device of ``freqs_per_angstrom``).
    """
    freqs = freqs_per_angstrom
    if not isinstance(ctf, CTFTensors):
        ctf = torch.as_tensor(ctf)
        ctf = CTFTensors.of(ctf[None] if ctf.ndim == 1 else ctf)
    c = ctf.to(device=freqs.device, dtype=freqs.dtype)
    dfu, dfv, angle_deg, kv, cs_mm, w, phase_deg, bfactor, scale = (
        getattr(c, name)[..., None] for name in CTF_FIELDS)  # each (*L, 1)
    sx, sy = freqs[..., 0], freqs[..., 1]  # (..., P)
    s2 = sx * sx + sy * sy
    theta = torch.atan2(sy, sx)
    lam = electron_wavelength_angstrom(kv)
    cs = cs_mm * 1e7
    df = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * torch.cos(2.0 * (theta - torch.deg2rad(angle_deg)))
    chi = math.pi * lam * df * s2 - 0.5 * math.pi * cs * lam**3 * s2 * s2 + torch.deg2rad(phase_deg)
    values = torch.sqrt(1.0 - w * w) * torch.sin(chi) + w * torch.cos(chi)
    return scale * values * torch.exp(-0.25 * bfactor * s2)


def ctf_image(D: int, pixel_size_angstrom: float, ctf: torch.Tensor | CTFTensors) -> torch.Tensor:
    """CTF on the centred ``D x D`` Fourier grid (DC at ``D // 2``).

    Parameters
    ----------
    D : int, box size in pixels.
    pixel_size_angstrom : float.
    ctf : :class:`CTFTensors` of leading shape ``L``, or a ``(..., 9)`` tensor in ``CTF_COLUMNS`` order (a single
        ``(9,)`` row counts as ``(1, 9)``).

    Returns
    -------
    tensor ``L x (D, D)`` (device and float dtype of ``ctf``).
    """
    if not isinstance(ctf, CTFTensors):
        rows = torch.as_tensor(ctf)
        ctf = CTFTensors.of(rows[None] if rows.ndim == 1 else rows)
    dtype = ctf.dtype if ctf.dtype.is_floating_point else torch.float32
    freqs = freq_grid_2d(D, device=ctf.device, dtype=dtype).reshape(-1, 2) / pixel_size_angstrom
    return compute_ctf(freqs, ctf.to(dtype)).reshape(*ctf.shape, D, D)


def phase_flip(images_ft: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply centred image spectra by the sign of the CTF.

    Parameters
    ----------
    images_ft : complex (or Hartley) tensor ``(B, D, D)``.
    ctf : tensor ``(B, D, D)`` of CTF values on the same grid (e.g. from :func:`ctf_image`).

    Returns
    -------
    tensor ``(B, D, D)``; frequencies where the CTF is negative are negated (zeros count as positive).
    """
    sign = torch.where(ctf < 0, -1.0, 1.0).to(ctf.dtype)
    return images_ft * sign


def premultiplied_weights(ctf_values: torch.Tensor, eps: float = PREMULTIPLIED_EPS) -> torch.Tensor:
    """Per-pixel likelihood weights ``1 / (CTF^2 + eps)`` of the squared error of CTF-premultiplied images.

    A premultiplied image is ``y = CTF^2 x slice + CTF x noise`` (noise variance ``CTF^2 sigma^2`` per pixel), so
    ``(y - CTF^2 x slice)^2 / CTF^2 = (y / CTF - CTF x slice)^2`` is the plain data's squared error: weighted thus,
    the premultiplied loss is the plain-data loss times ``CTF^2 / (CTF^2 + eps) <= 1`` per pixel, on the same
    scale (the weights are not normalised). ``eps`` bounds the weight by ``1 / eps`` where the CTF is near zero.

    Parameters
    ----------
    ctf_values : tensor ``(..., P)`` of CTF values (dimensionless; e.g. ``(B, P)`` or ``(B, T, P)``, or a centred
        ``(B, D, D)`` grid).
    eps : float > 0, the floor added to ``CTF^2`` (dimensionless; default :data:`PREMULTIPLIED_EPS`).

    Returns
    -------
    tensor of ``ctf_values``' shape, dtype and device, in ``(0, 1 / eps]``.
    """
    if not eps > 0:
        raise ValueError(f"the CTF^2 floor eps must be positive, got {eps}")
    return 1.0 / (ctf_values * ctf_values + eps)
