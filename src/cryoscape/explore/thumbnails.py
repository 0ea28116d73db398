"""Central-section thumbnails (PNG) of the map a trained run generates at a latent point, made on demand."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

__all__ = ["VolumeThumbnails"]


class VolumeThumbnails:
    """PNG images of ``plot_volume_slices`` (three central sections and the z projection) of generated maps.

    The model is rebuilt with :func:`cryoscape.models.load_run` on the first request and kept; images are cached
    (least recently used first out). Thread-safe: generation runs one at a time.

    Parameters
    ----------
    run_dir : path
        The run folder.
    epoch : int
        Checkpoint epoch (that of the latents shown).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    cache_size : int
        Images kept in memory.
    dpi : int
        Resolution of the PNG (the figure is 9 x 2.6 inches).
    """

    def __init__(self, run_dir, epoch: int, device: str = "auto", cache_size: int = 64, dpi: int = 80):
        self.run_dir = Path(run_dir)
        self.epoch = int(epoch)
        self.device = device
        self.cache_size = int(cache_size)
        self.dpi = int(dpi)
        self._model = None
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def _generator(self):
        if self._model is None:
            from cryoscape.analysis.volume_space import load_generator

            self._model = load_generator(self.run_dir, self.epoch, self.device)
        return self._model

    def png(self, key, z: np.ndarray, title: str = "") -> bytes:
        """PNG bytes of the map at latent ``z`` ``(zdim,)``; ``key`` identifies it in the cache.

        Raises
        ------
        CryoscapeError
            The run's model cannot be loaded (e.g. no checkpoint for the epoch).
        """
        from cryoscape.analysis.plots import figure_to_png, plot_volume_slices

        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            vol = self._generator().generate_volumes(np.asarray(z, dtype=np.float32).reshape(1, -1))[0]
            data = figure_to_png(plot_volume_slices(vol, title), dpi=self.dpi)
            self._cache[key] = data
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return data
