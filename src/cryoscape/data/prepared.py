"""Shared helpers of the data providers: normalisation from a sample, and preparing every image once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cryoscape.errors import InputError


def estimate_norm(prepare: Callable[[np.ndarray], torch.Tensor], n_rows: int, source: str,
                  max_rows: int = 1000) -> float:
    """Standard deviation of ``prepare(rows)`` over up to ``max_rows`` evenly spaced rows (the data's scale)."""
    sample = np.unique(np.linspace(0, n_rows - 1, min(n_rows, max_rows)).astype(np.int64))
    values = torch.cat([prepare(c) for c in np.array_split(sample, max(1, len(sample) // 256))])
    std = float(values.std())
    if not np.isfinite(std) or std == 0:
        raise InputError("images have no variance; cannot normalise", source)
    return std


def prepare_all(prepare: Callable[[np.ndarray], torch.Tensor], n_rows: int, row_shape: tuple, norm_std: float,
                progress: bool, desc: str = "preparing images", chunk: int = 512) -> torch.Tensor:
    """``prepare`` every row once, divided by ``norm_std``: float32 ``(n_rows, *row_shape)``, with progress."""
    out = torch.empty((n_rows, *row_shape), dtype=torch.float32)
    with tqdm(total=n_rows, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n_rows, chunk):
            idx = np.arange(start, min(n_rows, start + chunk))
            out[start : start + len(idx)] = prepare(idx) / norm_std
            bar.update(len(idx))
    return out


def ctf_premultiplied_flag(particles, has_ctf: bool, log) -> bool:
    """``particles.ctf_premultiplied`` (False when absent), logged once when set; CTF-premultiplied images without
    CTF parameters are refused (the model could not undo the premultiplication).
    """
    premultiplied = bool(getattr(particles, "ctf_premultiplied", False))
    if premultiplied:
        if not has_ctf:
            raise InputError("the images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1) but have no CTF "
                             "parameters", particles.source_path, "give the CTF (STAR columns or --ctf ctf.pkl)")
        log.info("%s: the images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1): modelled as CTF^2 x slice",
                 particles.source_path)
    return premultiplied
