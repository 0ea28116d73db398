"""Export an explorer selection into ``RUN/explore_selections/NAME/``, with the code of ``cryoscape filter``.

The particles are chosen with :func:`cryoscape.analysis.selection.select_particles` (``ind=``) and written with
:func:`cryoscape.io.indices.write_indices` and :func:`cryoscape.io.particles.write_particle_subset`, exactly as
``cryoscape filter RUN --ind FILE -o DIR`` writes them: ``indices.npy``, ``indices.txt`` (0-based indices into the
original input) and ``particles.star`` (``particles.cs`` for a cryoSPARC input) with every original column; for a run
that learned its poses (``train --refine-poses``) with the poses learned by the epoch shown, as ``filter`` writes
them by default.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from cryoscape.errors import InputError

__all__ = ["SELECTION_DIR", "SelectionExists", "check_selection_name", "validate_selection_indices",
           "next_selection_name", "export_selection"]

SELECTION_DIR = "explore_selections"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SelectionExists(InputError):
    """A selection of that name was exported before (it is never overwritten)."""


def check_selection_name(name) -> str:
    """``name`` if it is 1-64 letters, digits, ``_`` or ``-`` (so it can only name a folder inside the run)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"selection name {str(name)[:80]!r} is not allowed",
                         hint="use 1-64 letters, digits, '_' or '-'")
    return name


def validate_selection_indices(values, run_input_indices: np.ndarray, n_input: int) -> np.ndarray:
    """Sorted unique int64 input indices from a JSON list, checked against the run's particles.

    Parameters
    ----------
    values : list
        JSON integers: 0-based indices into the original input.
    run_input_indices : np.ndarray
        int64 ``(N,)`` input indices of the run's particles (``RUN/indices.npy``).
    n_input : int
        Number of particles in the original input.

    Raises
    ------
    InputError
        Not a list, not integers, out of ``0..n_input-1``, not particles of the run, more than ``N`` values, or
        empty.
    """
    if not isinstance(values, list):
        raise InputError("'indices' must be a JSON list of integers")
    if len(values) > len(run_input_indices):
        raise InputError(f"{len(values)} indices given but the run has only {len(run_input_indices)} particles")
    bad = [v for v in values if type(v) is not int]  # noqa: E721  (bool and float are refused)
    if bad:
        raise InputError(f"indices must be integers; got {json.dumps(bad[:3])[:80]}")
    if not values:
        raise InputError("the selection is empty; nothing written")
    idx = np.unique(np.asarray(values, dtype=np.int64))
    if idx[0] < 0 or idx[-1] >= n_input:
        raise InputError(f"indices must lie in 0..{n_input - 1}; got {idx[0] if idx[0] < 0 else idx[-1]}")
    foreign = idx[~np.isin(idx, run_input_indices)]
    if foreign.size:
        raise InputError(f"{foreign.size} indices are not particles of this run (e.g. {foreign[0]})")
    return idx


def next_selection_name(run_dir) -> str:
    """``selection_001``, ``selection_002``, ...: the first name not yet used in ``RUN/explore_selections``."""
    root = Path(run_dir) / SELECTION_DIR
    i = 1
    while (root / f"selection_{i:03d}").exists():
        i += 1
    return f"selection_{i:03d}"


def export_selection(data, input_indices, name: str | None = None) -> dict:
    """Write the particles ``input_indices`` of the explorer's run into ``RUN/explore_selections/NAME/``.

    Parameters
    ----------
    data : ExplorerData
        The explorer's data (run folder, latents, input particles).
    input_indices : array of int
        0-based indices into the original input, all particles of the run.
    name : str, optional
        Folder name (default: the next free ``selection_NNN``).

    Returns
    -------
    dict
        ``name``, ``folder`` (path), ``n_selected``, ``n_input`` and ``files`` (names written).

    Raises
    ------
    SelectionExists
        ``NAME`` exists already.
    InputError
        Bad name or indices (nothing is written).
    """
    from cryoscape.analysis.selection import learned_poses_of, select_particles, write_selection
    from cryoscape.io.indices import write_indices

    name = check_selection_name(name) if name else next_selection_name(data.run_dir)
    n_input = data.n_input
    chosen = select_particles(data.z, data.input_indices, n_input, ind=np.asarray(input_indices, dtype=np.int64))
    learned = None
    if data.refine_poses and data.particles is not None:
        learned = learned_poses_of(data.run_dir, data.family, data.particles, chosen, data.epoch)
    root = data.run_dir / SELECTION_DIR
    root.mkdir(exist_ok=True)
    out = root / name
    try:
        out.mkdir()
    except FileExistsError:
        raise SelectionExists(f"a selection named {name!r} exists already", out, "choose another name") from None
    try:
        files = [p.name for p in write_selection(data.particles, data.family, chosen, out, learned=learned)] \
            if data.particles is not None else \
            [write_indices(out / "indices.npy", chosen).name, write_indices(out / "indices.txt", chosen).name]
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return {"name": name, "folder": str(out.resolve()), "n_selected": int(chosen.size), "n_input": int(n_input),
            "files": files}
