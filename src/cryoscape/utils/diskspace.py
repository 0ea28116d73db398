"""Check, before hours of work, that an output folder can be written and has room for what a run will write.

Nothing is created by these checks: a folder that does not exist yet is judged by its nearest existing parent
(the one it would be created in).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from cryoscape.errors import OutputError

__all__ = ["nearest_existing_dir", "check_writable_location", "check_run_folder", "check_output_location",
           "RUN_ENTRIES", "free_bytes", "format_bytes",
           "checkpoint_count", "estimate_checkpoint_bytes", "estimate_training_bytes", "check_free_space",
           "check_training_space", "remove_partial_files"]

_PER_TENSOR_BYTES = 1024  # zip entry + pickle record of one tensor in a torch.save file
_CHECKPOINT_BASE_BYTES = 64 * 1024  # RNG state, history, build info, zip directory
_SMALL_FILES_BYTES = 1024 * 1024  # config, log, metrics, indices, split


def nearest_existing_dir(path: str | Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor.

    Raises
    ------
    OutputError
        When ``path`` or one of its ancestors exists but is not a folder.
    """
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise OutputError(f"{path}: cannot create this output folder: {candidate} is a file, not a folder")
            return candidate
    return Path(path.anchor)


def check_writable_location(path: str | Path) -> Path:
    """Check that the folder ``path`` exists and is writable, or could be created; create nothing.

    Returns
    -------
    Path
        The existing folder that was tested (``path`` or its nearest existing ancestor).

    Raises
    ------
    OutputError
        One line naming ``path`` when it is a file, or when the folder it would be written to is not writable
        (permissions, read-only file system).
    """
    base = nearest_existing_dir(path)
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".cryoscape-write-test-"):
            pass
    except OSError as exc:
        where = "" if base == Path(path).absolute() else f" (tested {base}, where it would be created)"
        raise OutputError(f"{path}: cannot write to this output folder{where}: {exc.strerror or exc}") from exc
    return base


# what `cryoscape train` and the commands run on its output write into a run folder (docs/run-directory.md);
# config.yaml is recognised by its content (another program's config.yaml does not make a folder a run)
RUN_ENTRIES = frozenset({"log.txt", "train.log", "metrics.csv", "indices.npy", "split.npz",
                         "best_epoch", "checkpoints", "latents", "analysis", "explore_selections", "focus"})


def check_run_folder(path: str | Path) -> None:
    """Refuse a non-empty folder that is not a cryoscape run folder; create nothing.

    A run folder must be new, empty (names starting with ``.`` do not count) or hold a run (a ``config.yaml``
    written by cryoscape, or only the entries a run has); a folder of data, another program's output (cryoDRGN's
    also has a ``config.yaml``) or anything else is refused so that a run is never written among other files.
    Whether an existing run may be continued (``--resume``) is decided by ``train``.
    """
    path = Path(path)
    if not path.is_dir():
        return
    entries = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    if not entries or _is_cryoscape_config(path / "config.yaml") or set(entries) <= RUN_ENTRIES:
        return
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    raise OutputError(f"{path}: this folder is not empty and is not a cryoscape run (it holds {shown}); a run "
                      f"folder must be new or empty, or an earlier run to continue with --resume (choose another -o)")


def _is_cryoscape_config(path: Path) -> bool:
    """Whether ``path`` is a ``config.yaml`` written by ``cryoscape train`` (it starts with ``cryoscape_version``)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return any(line.startswith("cryoscape_version:") for line in head.splitlines())


def check_output_location(path: str | Path) -> Path:
    """Check the run folder ``path`` of ``cryoscape train``: writable (or creatable), and new, empty or a run.

    Creates nothing (see :func:`check_writable_location` and :func:`check_run_folder`).

    Returns
    -------
    Path
        The existing folder that was tested (``path`` or its nearest existing ancestor).

    Raises
    ------
    OutputError
        One line naming ``path`` when it is a file, a non-empty folder that is not a run, or when the folder it
        would be written to is not writable (permissions, read-only file system).
    """
    base = check_writable_location(path)
    check_run_folder(path)
    return base


def free_bytes(path: str | Path) -> int:
    """Free bytes available to this user on the file system holding ``path`` (or its nearest existing parent)."""
    return int(shutil.disk_usage(nearest_existing_dir(path)).free)


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def checkpoint_count(start_epoch: int, epochs: int, checkpoint_every: int) -> int:
    """Number of epoch checkpoints written by epochs ``start_epoch + 1 .. epochs`` (every N-th and the last)."""
    every = max(1, int(checkpoint_every))
    return sum(1 for e in range(int(start_epoch) + 1, int(epochs) + 1) if e % every == 0 or e == epochs)


def estimate_checkpoint_bytes(model, optimizer_slots: int = 2) -> int:
    """Upper estimate of the size of one checkpoint file of ``model`` (bytes).

    Parameters
    ----------
    model : torch.nn.Module
    optimizer_slots : int
        Optimizer tensors kept per parameter (2 for Adam: first and second moments).

    Returns
    -------
    int
        ``(1 + slots) * parameter bytes + buffer bytes + 1 KiB per tensor + 64 KiB``.
    """
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    buffers = list(model.buffers())
    buffer_bytes = sum(b.numel() * b.element_size() for b in buffers)
    n_tensors = (1 + optimizer_slots) * len(params) + len(buffers)
    return int((1 + optimizer_slots) * param_bytes + buffer_bytes + _PER_TENSOR_BYTES * n_tensors
               + _CHECKPOINT_BASE_BYTES)


def estimate_training_bytes(checkpoint_bytes: int, n_checkpoints: int, n_particles: int, zdim: int) -> int:
    """Bytes a training run will write: its epoch checkpoints, the latents saved with each, ``interrupted.pt``
    and the small files (config, log, metrics).
    """
    latent_bytes = 4 * int(n_particles) * int(zdim) + 128 if zdim else 0
    return int(n_checkpoints * (checkpoint_bytes + latent_bytes) + checkpoint_bytes + _SMALL_FILES_BYTES)


def check_free_space(path: str | Path, required_bytes: int, what: str, hint: str | None = None) -> None:
    """Raise a one-line :class:`OutputError` when ``path``'s file system has fewer than ``required_bytes`` free.

    Parameters
    ----------
    path : path
        The output folder (need not exist yet).
    required_bytes : int
        Estimated bytes that will be written.
    what : str
        What will be written, for the message (e.g. ``"20 checkpoints of ~1.2 MiB and their latents"``).
    hint : str, optional
        What to do, appended in parentheses.
    """
    free = free_bytes(path)
    if free < required_bytes:
        text = (f"{path}: not enough free disk space: {what} need about {format_bytes(required_bytes)}, "
                f"only {format_bytes(free)} free")
        if hint:
            text += f" ({hint})"
        raise OutputError(text)


def check_training_space(run_dir: str | Path, model, n_particles: int, zdim: int, start_epoch: int, epochs: int,
                         checkpoint_every: int) -> int:
    """Check that ``run_dir`` has room for the checkpoints and latents of epochs ``start_epoch + 1 .. epochs``.

    Returns
    -------
    int
        The estimated bytes (also when there is enough room).

    Raises
    ------
    OutputError
        Not enough free space, with the estimate, what is free and what to do.
    """
    n_ckpt = checkpoint_count(start_epoch, epochs, checkpoint_every)
    per_ckpt = estimate_checkpoint_bytes(model)
    required = estimate_training_bytes(per_ckpt, n_ckpt, n_particles, zdim)
    check_free_space(run_dir, required, f"{n_ckpt} checkpoint(s) of ~{format_bytes(per_ckpt)} and their latents",
                     "free some space, write the run elsewhere with -o, or keep fewer checkpoints with "
                     "--checkpoint-every")
    return required


_PARTIAL_RE = re.compile(r"^\..+\.tmp(\.[^.]+)?$")  # the temporary names of cryoscape.utils.atomic.atomic_path


def remove_partial_files(folders) -> list[Path]:
    """Delete the temporary files that a killed process left behind in ``folders`` (not recursive).

    Files being written by :func:`cryoscape.utils.atomic.atomic_path` are named ``.STEM.XXXXXXXX.tmp.SUFFIX``
    until they are complete; a process killed mid-write (SIGKILL, power loss) leaves one. They never replace a
    complete file, so removing them only frees space. Call only when no other process writes to ``folders``.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and _PARTIAL_RE.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
