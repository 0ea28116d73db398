"""The ``rlnCtfDataAreCtfPremultiplied`` flag of RELION / WarpTools STAR files.

Images written with ``rlnCtfDataAreCtfPremultiplied 1`` hold ``CTF x image`` (the recorded image multiplied by its
CTF once more, as RELION 5 and WarpTools extract 2-D sub-tomogram stacks by default). RELION 3.1+ single-particle
files and RELION 5 / WarpTools particle files carry the flag per optics group in ``data_optics``; a RELION 3.0 table
may carry it as a particle column. Readers turn it into one bool per particle set
(``ParticleSet.ctf_premultiplied``, ``TiltSeriesSet.ctf_premultiplied``); see ``docs/conventions.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoscape.errors import InputError

__all__ = ["PREMULTIPLIED_COLUMN", "ctf_premultiplied_from_values", "star_particles_premultiplied"]

PREMULTIPLIED_COLUMN = "rlnCtfDataAreCtfPremultiplied"


def ctf_premultiplied_from_values(values, path: Path | str | None, where: str = "") -> bool:
    """One bool from the per-particle (or per-optics-group) values of ``rlnCtfDataAreCtfPremultiplied``.

    Raises
    ------
    InputError
        A value other than 0/1, or a set that mixes premultiplied and plain images (the model needs one kind).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return False
    if not np.all(np.isin(v, (0.0, 1.0))):
        bad = v[~np.isin(v, (0.0, 1.0))][0]
        raise InputError(f"{PREMULTIPLIED_COLUMN}{where} is {bad:g}; expected 0 or 1", path)
    if v.min() != v.max():
        raise InputError(f"{PREMULTIPLIED_COLUMN}{where} mixes CTF-premultiplied (1) and plain (0) images", path,
                         "select one kind of particles (e.g. by optics group) and train on each separately")
    return bool(v[0] == 1.0)


def star_particles_premultiplied(sp) -> bool:
    """The flag of a :class:`cryoscape.io.star.StarParticles` (particle column, else its optics groups; default 0)."""
    if not sp.has(PREMULTIPLIED_COLUMN):
        return False
    return ctf_premultiplied_from_values(sp.values(PREMULTIPLIED_COLUMN), sp.path)
