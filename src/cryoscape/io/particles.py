"""One entry point for particle data: images + pixel size + poses + CTF from STAR, cryoSPARC .cs or MRC stacks.

``load_particles`` dispatches on the file suffix (``.star``, ``.cs``, ``.mrcs``/``.mrc``, ``.txt`` listing stacks);
cryoDRGN ``pose.pkl``/``ctf.pkl`` override the poses/CTF of the metadata file. ``write_particle_subset`` writes
selected particles back in the source's format with every original column kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.cs import CSParticles, read_cs, write_cs, write_cs_subset
from cryoscape.io.ctf_flags import star_particles_premultiplied
from cryoscape.io.imagestack import ImageStack
from cryoscape.io.indices import read_indices, validate_indices
from cryoscape.io.mrc import open_stack_for_writing
from cryoscape.io.pkl import read_ctf_pkl, read_pose_pkl
from cryoscape.io.star import StarParticles, format_image_names, read_star_particles, write_star, write_star_subset
from cryoscape.metadata import CTFOverrides, CTFParams, Poses

log = logging.getLogger(__name__)

__all__ = ["ParticleSet", "load_particles", "write_particle_subset"]


@dataclass
class ParticleSet:
    """Particle images with their pixel size, poses and CTF, and where they came from.

    Attributes
    ----------
    images : ImageStack
        ``N`` images of ``D x D`` pixels.
    pixel_size_angstrom : float
    poses : Poses or None
    ctf : CTFParams or None
    source_path : Path
        The file the particles were loaded from.
    source_format : str
        ``'star'``, ``'cs'`` or ``'mrcs'``.
    source : StarParticles, CSParticles or None
        The parsed metadata file (for writing subsets with every original column).
    source_indices : np.ndarray of int64, shape (N,)
        Row of every particle in the source file (0-based); default ``arange(N)``.
    ctf_premultiplied : bool
        The images hold ``CTF x image`` (``rlnCtfDataAreCtfPremultiplied 1``); models then render ``CTF^2 x slice``.
    """

    images: ImageStack
    pixel_size_angstrom: float
    poses: Poses | None
    ctf: CTFParams | None
    source_path: Path
    source_format: str
    source: StarParticles | CSParticles | None = None
    source_indices: np.ndarray | None = None
    ctf_premultiplied: bool = False

    def __post_init__(self):
        if self.source_indices is None:
            self.source_indices = np.arange(len(self.images), dtype=np.int64)
        self.source_indices = np.asarray(self.source_indices, dtype=np.int64)
        for name, obj in (("poses", self.poses), ("CTF", self.ctf)):
            if obj is not None and len(obj) != len(self.images):
                raise InputError(f"{len(obj)} {name} entries for {len(self.images)} images", self.source_path)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def D(self) -> int:
        """Box size in pixels."""
        return self.images.D

    def subset(self, indices) -> ParticleSet:
        """The particles at ``indices`` (positions in this set), in that order."""
        idx = np.atleast_1d(np.arange(len(self))[indices])
        assert self.source_indices is not None  # filled in by __post_init__
        return replace(self, images=self.images.subset(idx),
                       poses=None if self.poses is None else self.poses.subset(idx),
                       ctf=None if self.ctf is None else self.ctf.subset(idx),
                       source_indices=self.source_indices[idx])


def _pixel_size_for_stack(images: ImageStack, apix: float | None, ctf_info: tuple | None, path: Path) -> float:
    if apix is not None:
        return float(apix)
    header = images.header_pixel_size_angstrom
    if ctf_info is not None:
        D0, apix0, ctf_path = ctf_info
        derived = D0 * apix0 / images.D
        if header > 0 and header != 1.0 and abs(header - derived) > 0.01 * derived:
            log.warning("%s: header pixel size %.4f A differs from %.4f A derived from %s; using the latter",
                        path, header, derived, ctf_path)
        return derived
    if header <= 0:
        raise InputError("the MRC header has no pixel size", path, "pass --apix")
    return header


def _without_amplifying_bfactors(ctf: CTFParams, path: Path) -> CTFParams:
    """Zero negative CTF B-factors: Warp/M write ``-4 x`` cumulative exposure there, not a RELION B-factor."""
    negative = ctf.bfactor_angstrom2 < 0
    if not negative.any():
        return ctf
    log.warning("%s: %d particles have a negative CTF B-factor (min %.1f A^2), which would amplify high "
                "frequencies; Warp/M tilt-series files store -4 x the exposure there. They are set to 0. "
                "Tilt series: train with --model tomodrgn, which weights by exposure.", path, int(negative.sum()),
                float(ctf.bfactor_angstrom2.min()))
    return replace(ctf, bfactor_angstrom2=np.where(negative, 0.0, ctf.bfactor_angstrom2))


def _common_pixel_size(source, images: ImageStack, apix: float | None, path: Path):
    """``(images, pixel size)``: one pixel size for a set whose optics groups may have several (see
    :func:`load_particles`).
    """
    own = source.file_pixel_size_angstrom
    if own is None or not len(source) or np.allclose(own, own[0], rtol=1e-4):
        return images, (float(source.pixel_size_angstrom[0]) if len(source) else None)
    from cryoscape.io.rescale import RescaledImageStack, mixed_within_a_stack

    bad = own[~(np.isfinite(own) & (own > 0))]
    if bad.size and apix is None:
        raise InputError(f"some particles have the pixel size {bad[0]:g} A, which is not a positive number", path,
                         "correct the file, or pass --apix with the pixel size of all the images")
    mixed = mixed_within_a_stack(source.stack_paths, own)
    if bad.size and mixed is None:  # --apix: every image is taken at it, nothing resampled from a meaningless size
        assert apix is not None  # bad sizes without --apix raised above
        log.warning("%s: some particles have the pixel size %g A; --apix %.4f A is used for every image", path,
                    bad[0], apix)
        return images, float(apix)
    if mixed is not None:  # the file's pixel sizes cannot all be right; the reader has applied --apix to every image
        assert apix is not None  # the reader accepts such a file only with --apix
        log.warning("%s: particles of %s claim pixel sizes %s A; --apix %.4f A is used for every image, nothing is "
                    "resampled", path, mixed[0], mixed[1], apix)
        return images, float(apix)
    target = float(apix) if apix is not None else float(own.min())
    if not (np.isfinite(target) and target > 0):
        raise InputError(f"pixel size {target:g} A is not a positive number", path, "pass --apix")
    source.pixel_size_angstrom = np.asarray(own, dtype=np.float64)  # 3.0 pixel origins: each particle's own size
    sizes, counts = np.unique(own.round(6), return_counts=True)
    log.info("%s: the particles have %d pixel sizes (%s); each image is resampled on reading to %.4f A (%s), "
             "keeping the %d px box", path, len(sizes),
             ", ".join(f"{s:g} A: {c} particles" for s, c in zip(sizes, counts, strict=True)), target,
             "--apix" if apix is not None else "the finest", images.D)
    return RescaledImageStack.wrap(images, own, target), target


def _optional(optional: bool, path: Path, what: str, read, *args):
    """``read(*args)``; when ``optional``, an InputError leaves the value out with an info line."""
    if not optional:
        return read(*args)
    try:
        return read(*args)
    except InputError as exc:
        log.info("%s: %s not read (%s); this command does not use them", path, what, exc.problem)
        return None


def load_particles(path: str | Path, poses: str | Path | None = None, ctf: str | Path | None = None,
                   datadir: str | Path | None = None, apix: float | None = None, lazy: bool = True,
                   indices=None, ctf_overrides: CTFOverrides | None = None, cs_alignments: str | None = None,
                   metadata_optional: bool = False) -> ParticleSet:
    """Load particles from a ``.star``, ``.cs``, ``.mrcs``/``.mrc`` or ``.txt`` (list of stacks) file.

    Parameters
    ----------
    path : path
        The particle file.
    poses, ctf : path, optional
        cryoDRGN ``pose.pkl`` / ``ctf.pkl`` for all particles of ``path``; they replace the file's own.
    datadir : path, optional
        Folder holding the stacks referenced by a STAR/.cs/.txt file.
    apix : float, optional
        Pixel size in Angstrom overriding the files.
    lazy : bool
        Read the images from disk per batch instead of loading them.
    indices : array of int or path, optional
        0-based particles to keep (an index file is read with :func:`read_indices`), in that order.
    ctf_overrides : CTFOverrides, optional
        ``--kv``/``--cs``/``--amp-contrast``/``--ps``: replace the CTF values of the file (or ``ctf.pkl``) and fill
        in missing columns.
    cs_alignments : str, optional
        Alignment set of a ``.cs`` file to read poses from (default ``alignments3D``; ``alignments_class_N``).
    metadata_optional : bool
        For commands that use neither poses nor CTF (``downsample``, ``filter``): poses or CTF that cannot be read
        (e.g. a RELION 3.0 file without voltage) are left out with an info line instead of an error.

    Several pixel sizes in one STAR/.cs file (optics groups) are brought to one: the finest, or ``apix`` when given;
    every image is resampled on reading to it, keeping the box (:mod:`cryoscape.io.rescale`).

    Raises
    ------
    InputError
        Unknown suffix, and every problem the readers report; pose/CTF counts that differ from the image count
        (naming both files and both counts).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("particle file not found", path)
    suffix = path.suffix.lower()
    source: StarParticles | CSParticles | None = None
    if cs_alignments is not None and suffix != ".cs":
        raise InputError(f"--cs-alignments {cs_alignments} applies to cryoSPARC .cs files only", path)
    if suffix == ".star":
        source = read_star_particles(path, datadir=datadir, apix=apix, allow_mixed_pixel_sizes=True,
                                     one_size_per_stack=True)
        fmt = "star"
    elif suffix == ".cs":
        source = read_cs(path, datadir=datadir, apix=apix, alignments=cs_alignments or "alignments3D",
                         allow_mixed_pixel_sizes=True, one_size_per_stack=True)
        fmt = "cs"
    elif suffix in (".mrcs", ".mrc", ".txt"):
        fmt = "mrcs"
    else:
        raise InputError(f"unknown particle file type {suffix!r}", path, "use .star, .cs, .mrcs or .txt")

    if source is not None:
        images = ImageStack.from_paths_and_indices(source.stack_paths, source.stack_indices, lazy=True)
        images, pixel_size = _common_pixel_size(source, images, apix, path)
        file_poses = _optional(metadata_optional, path, "poses", source.poses) \
            if source.has_poses() and poses is None else None
        file_ctf = _optional(metadata_optional, path, "CTF", source.ctf, ctf_overrides) \
            if source.has_ctf() and ctf is None else None
        if file_ctf is not None:
            file_ctf = _without_amplifying_bfactors(file_ctf, path)
    else:
        images = ImageStack.from_txt(path, datadir=datadir) if suffix == ".txt" else ImageStack.from_mrcs(path)
        pixel_size, file_poses, file_ctf = None, None, None
    n = len(images)

    ctf_info = None
    if ctf is not None:
        file_ctf, D0, apix0 = read_ctf_pkl(ctf)
        if ctf_overrides:
            file_ctf = ctf_overrides.apply(file_ctf)
        if len(file_ctf) != n:
            raise InputError(f"has CTF parameters for {len(file_ctf)} particles but {path} has {n}", ctf)
        ctf_info = (D0, apix0, ctf)
        if pixel_size is not None and abs(D0 * apix0 / images.D - pixel_size) > 0.01 * pixel_size:
            log.warning("%s: pixel size %.4f A (at D=%d) differs from %.4f A of %s", ctf, D0 * apix0 / images.D,
                        images.D, pixel_size, path)
    if pixel_size is None:
        pixel_size = _pixel_size_for_stack(images, apix, ctf_info, path)
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(f"pixel size {pixel_size:g} A is not a positive number", path, "pass --apix")
    images._pixel_size = float(pixel_size)
    if poses is not None:
        file_poses = read_pose_pkl(poses, images.D, pixel_size)
        if len(file_poses) != n:
            raise InputError(f"has {len(file_poses)} poses but {path} has {n} particles", poses)

    premultiplied = star_particles_premultiplied(source) if isinstance(source, StarParticles) else False
    particles = ParticleSet(images, float(pixel_size), file_poses, file_ctf, path, fmt, source,
                            ctf_premultiplied=premultiplied)
    if indices is not None:
        if isinstance(indices, (str, os.PathLike)):
            idx = read_indices(indices, n=n)
        else:
            idx = validate_indices(indices, n=n, path=path)
        particles = particles.subset(idx)
    if not lazy:
        particles.images = particles.images.load()
    return particles


def write_particle_subset(particles: ParticleSet, indices, out_path: str | Path) -> Path:
    """Write the particles ``indices`` (positions in ``particles``) to ``out_path``.

    A ``.star`` output from a STAR source (``.cs`` from a ``.cs`` source) keeps every original column, block and
    field, and the original poses/CTF (not those of a ``pose.pkl``/``ctf.pkl``). Any other combination writes new
    metadata from the set's poses and CTF, with image paths relative to the output folder; ``.mrcs`` writes the
    selected images themselves.
    """
    out_path = Path(out_path)
    idx = np.atleast_1d(np.arange(len(particles))[indices])
    assert particles.source_indices is not None  # filled in by ParticleSet.__post_init__
    rows = particles.source_indices[idx]
    suffix = out_path.suffix.lower()
    if suffix == ".star" and isinstance(particles.source, StarParticles):
        return write_star_subset(particles.source, rows, out_path)
    if suffix == ".cs" and isinstance(particles.source, CSParticles):
        return write_cs_subset(particles.source, rows, out_path)
    sub = particles.subset(idx)
    if suffix in (".mrcs", ".mrc"):
        with open_stack_for_writing(out_path, len(sub), sub.D, sub.pixel_size_angstrom) as data:
            for bidx, block in sub.images.iter_batches(1024):
                data[bidx] = block
        return out_path
    if hasattr(sub.images, "source_pixel_sizes") and suffix in (".star", ".cs"):  # resampled on reading
        raise InputError("the particles' stacks have several pixel sizes, which one new metadata file for the same "
                         "stacks cannot record", out_path, f"write the subset in the input's own format "
                         f"({particles.source_path.suffix}), or write the resampled images as .mrcs")
    files = [os.path.relpath(Path(f).resolve(), out_path.parent.resolve()) for f in sub.images.files]
    stacks = [files[f] for f in sub.images.file_ids]
    if suffix == ".star":
        return write_star(out_path, format_image_names(stacks, sub.images.local_indices), sub.pixel_size_angstrom,
                          sub.D, sub.poses, sub.ctf, ctf_premultiplied=sub.ctf_premultiplied)
    if suffix == ".cs":
        if sub.ctf_premultiplied:
            raise InputError("the particles are CTF-premultiplied, which a cryoSPARC .cs file cannot record", out_path,
                             "write a .star file instead")
        return write_cs(out_path, stacks, sub.images.local_indices, sub.pixel_size_angstrom, sub.D, sub.poses,
                        sub.ctf)
    raise InputError(f"cannot write particles as {suffix!r}", out_path, "use .star, .cs or .mrcs")
