"""Where `cryoscape analyze` wrote its results for a run, so that later commands find them whatever ``-o`` was.

``analyze`` appends one line ``epoch<TAB>folder`` to ``RUN/analyses.txt`` for every analysis it writes (the folder
relative to the run folder when it lies inside it, else absolute). ``filter --clusters``, the explorer and
``chimerax-placement`` look for k-means labels in the recorded folders of the epoch (newest first) and then in
the default ``RUN/analysis/epoch_NNN``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["INDEX_NAME", "default_analysis_dir", "record_analysis", "recorded_analyses", "analysis_dirs"]

INDEX_NAME = "analyses.txt"


def default_analysis_dir(run_dir: str | Path, epoch: int) -> Path:
    """``RUN/analysis/epoch_NNN``: where ``analyze`` writes without ``-o``."""
    return Path(run_dir) / "analysis" / f"epoch_{int(epoch):03d}"


def _entries(run_dir: Path) -> list[tuple[int, str]]:
    index = run_dir / INDEX_NAME
    if not index.is_file():
        return []
    entries = []
    for line in index.read_text(errors="replace").splitlines():
        epoch, sep, folder = line.partition("\t")
        if sep and epoch.strip().isdigit() and folder.strip():
            entries.append((int(epoch), folder.strip()))
    return entries  # unreadable lines are skipped: the index only helps to find files, it decides nothing


def record_analysis(run_dir: str | Path, epoch: int, out_dir: str | Path) -> Path | None:
    """Note in ``RUN/analyses.txt`` that the analysis of ``epoch`` is in ``out_dir`` (moved to the end if present).

    Best effort: a run folder that cannot be written (e.g. another user's) only costs a warning, since the
    analysis itself is complete; later commands then need ``--analysis``. Returns the index, or None.
    """
    import logging

    from cryoscape.errors import OutputError
    from cryoscape.utils.atomic import atomic_write_text

    run_dir = Path(run_dir)
    out = Path(out_dir).resolve()
    try:
        folder = os.path.relpath(out, run_dir.resolve())
        if folder.startswith(".."):
            folder = str(out)
    except ValueError:  # another drive (Windows)
        folder = str(out)
    entries = [e for e in _entries(run_dir) if e != (int(epoch), folder)] + [(int(epoch), folder)]
    index = run_dir / INDEX_NAME
    try:
        atomic_write_text(index, "".join(f"{e}\t{f}\n" for e, f in entries))
    except (OSError, OutputError) as exc:
        logging.getLogger("cryoscape").warning(
            f"could not record where this analysis is in {index} ({exc}); give `filter --analysis {out}` to "
            "use its k-means labels")
        return None
    return index


def recorded_analyses(run_dir: str | Path, epoch: int) -> list[Path]:
    """The existing folders recorded for ``epoch``, newest first."""
    run_dir = Path(run_dir)
    found = []
    for e, folder in reversed(_entries(run_dir)):
        path = Path(folder) if Path(folder).is_absolute() else run_dir / folder
        if e == int(epoch) and path.is_dir() and path not in found:
            found.append(path)
    return found


def analysis_dirs(run_dir: str | Path, epoch: int) -> list[Path]:
    """Where to look for the analysis of ``epoch``: the recorded folders (newest first), then the default one."""
    dirs = recorded_analyses(run_dir, epoch)
    default = default_analysis_dir(run_dir, epoch)
    if all(d.resolve() != default.resolve() for d in dirs):
        dirs.append(default)
    return dirs
