"""What the data providers share: :class:`PreparedData`.

A data provider holds the images of a particle set prepared for a model (centred, windowed, transformed as the
model needs), either all at once in memory, divided by ``norm_std`` (default), or read and prepared per batch
(``lazy``), and the per-image metadata (rotations, CTF parameters, ...) as tensors that :meth:`~PreparedData.to`
keeps on the training device. Subclasses (:class:`~cryoscape.data.particle_data.SliceParticleData`,
:class:`~cryoscape.data.image_data.ImageParticleData`, :class:`~cryoscape.data.tilt_data.TiltSeriesData`) say
how one row of images is prepared and what a batch holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoscape.data.prepared import estimate_norm, prepare_all
from cryoscape.data.preprocess import make_window
from cryoscape.errors import InputError

if TYPE_CHECKING:
    from cryoscape.data.fourier_pixels import FourierPixels

__all__ = ["PreparedData", "require_poses"]


def require_poses(particles) -> None:
    """Refuse a particle set without poses (the models need a pose per image), naming its file."""
    if particles.poses is None:
        raise InputError(
            "no poses for these particles", particles.source_path,
            hint="give --poses pose.pkl, or a STAR/.cs file with angles from a consensus refinement",
        )


class PreparedData:
    """Base class of the data providers: prepared image rows in memory or per batch, metadata on a device.

    A subclass calls :meth:`_init_common` first, sets its metadata (what :meth:`_prepare` needs), then calls
    :meth:`_init_values`; it defines :meth:`_prepare` (image rows -> unnormalised prepared values), ``__len__``
    and ``batch``, and may change :attr:`device_fields`, :meth:`_n_rows` and :meth:`_row_shape`.

    Attributes
    ----------
    D, pixel_size_angstrom : box size (pixels) and pixel size (A) of the images.
    invert, window, lazy, source : image preparation, read per batch or not, the input file (for messages).
    norm_std : the scale prepared values are divided by.
    values : ``(n_rows, *row_shape)`` float32 prepared values divided by ``norm_std`` (``None`` when lazy).
    device : where :meth:`to` put the metadata and ``values``.
    """

    # tensor (or CTFTensors) attributes that :meth:`to` moves; ``None`` values are skipped
    device_fields: tuple[str, ...] = ("rotations", "ctf")
    prepare_desc = "preparing images"  # progress-bar text of :meth:`_prepare_all`
    prepare_chunk = 512  # rows prepared at a time by :meth:`_prepare_all`
    pixels: FourierPixels  # the model's Fourier pixel table (providers of Hartley pixels)

    def _init_common(self, source, D: int, pixel_size_angstrom: float, invert: bool, window: bool,
                     window_inner: float, lazy: bool) -> None:
        """Set the attributes every provider has (before the subclass's metadata)."""
        self.D = int(D)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.invert = invert
        self.window = make_window(self.D, window, window_inner)
        self.lazy = lazy
        self.source = str(source)
        self.device = torch.device("cpu")
        self.values: torch.Tensor | None = None

    def _init_values(self, norm_std: float | None, progress: bool) -> None:
        """Set ``norm_std`` (estimated from the data when ``None``) and, unless lazy, prepare every row once."""
        self.norm_std = float(norm_std) if norm_std is not None else self._estimate_norm()
        if not self.lazy:
            self.values = self._prepare_all(progress)

    # -- what a subclass defines ---------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _prepare(self, rows: np.ndarray) -> torch.Tensor:
        """Prepared values ``(len(rows), *row_shape)`` (not normalised) of the image rows ``rows``."""
        raise NotImplementedError

    def _n_rows(self) -> int:
        """Number of image rows (default: ``len(self)``, one image per particle)."""
        return len(self)

    def _row_shape(self) -> tuple[int, ...]:
        """Shape of one prepared row (default: the model's Fourier pixels, ``(pixels.n_pixels,)``)."""
        return (self.pixels.n_pixels,)

    # -- shared ----------------------------------------------------------------------------------------------
    def _estimate_norm(self) -> float:
        return estimate_norm(self._prepare, self._n_rows(), self.source)

    def _prepare_all(self, progress: bool) -> torch.Tensor:
        return prepare_all(self._prepare, self._n_rows(), self._row_shape(), self.norm_std, progress,
                           desc=self.prepare_desc, chunk=self.prepare_chunk)

    def to(self, device: torch.device):
        """Keep the prepared values (in-memory mode) and the metadata (:attr:`device_fields`) on ``device``."""
        self.device = torch.device(device)
        for name in self.device_fields:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(self.device))
        if self.values is not None:
            self.values = self.values.to(self.device)
        return self

    def prepared_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Normalised prepared values ``(*rows.shape, *row_shape)`` of the image rows ``rows`` (a tensor of any
        shape on :attr:`device`): indexed in memory, or read and prepared now when lazy (each distinct row once).
        """
        if self.values is not None:
            return self.values[rows]
        if rows.dim() == 1:
            return (self._prepare(rows.cpu().numpy()) / self.norm_std).to(self.device)
        uniq, inverse = np.unique(rows.reshape(-1).cpu().numpy(), return_inverse=True)
        prepared = (self._prepare(uniq) / self.norm_std).to(self.device)
        return prepared[torch.as_tensor(inverse.reshape(tuple(rows.shape)), device=self.device)]
