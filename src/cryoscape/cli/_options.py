"""Command-line options shared by the commands that read particle metadata.

``--kv``, ``--cs``, ``--amp-contrast`` and ``--ps`` replace (or supply, when the file lacks them) the optics values
of the CTF, as RELION's defaults and cryoDRGN's ``parse_ctf_star --kv --cs -w --ps`` do; ``--cs-alignments``
chooses the alignment set of a cryoSPARC ``.cs`` file that poses are read from.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["add_ctf_override_args", "ctf_overrides_from_args", "add_cs_alignments_arg", "cs_alignments_name"]

_ALIGNMENTS = re.compile(r"^alignments(3D|_class_\d+)$")


def add_ctf_override_args(parser: argparse.ArgumentParser, what: str = "the particle file (or --ctf pkl)") -> None:
    """Add ``--kv``, ``--cs``, ``--amp-contrast`` and ``--ps`` (in a group of their own)."""
    g = parser.add_argument_group(
        "CTF optics overrides",
        f"replace the values of {what} for every particle, or supply them where it has none (RELION 3.0 files "
        "may lack them); without --amp-contrast a missing amplitude contrast is 0.1")
    g.add_argument("--kv", type=float, metavar="KV", help="accelerating voltage in kV (e.g. 300)")
    g.add_argument("--cs", type=float, metavar="MM", help="spherical aberration in mm (e.g. 2.7)")
    g.add_argument("--amp-contrast", type=float, metavar="W", help="amplitude contrast, a fraction (e.g. 0.1)")
    g.add_argument("--ps", type=float, metavar="DEG", help="phase shift in degrees (e.g. 0, or 90 with a phase plate)")


def ctf_overrides_from_args(args: argparse.Namespace):
    """The :class:`cryoscape.metadata.CTFOverrides` of the command line (all None when none was given)."""
    from cryoscape.metadata import CTFOverrides

    return CTFOverrides(getattr(args, "kv", None), getattr(args, "cs", None), getattr(args, "amp_contrast", None),
                        getattr(args, "ps", None))


def cs_alignments_name(value: str) -> str:
    """argparse type of ``--cs-alignments``: ``alignments3D`` or ``alignments_class_N``."""
    if not _ALIGNMENTS.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not alignments3D or alignments_class_N (N = 0, 1, ...)")
    return value


def add_cs_alignments_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--cs-alignments``."""
    parser.add_argument("--cs-alignments", type=cs_alignments_name, metavar="SET",
                        help="cryoSPARC .cs input: the alignment set to read poses from, alignments3D (default) or "
                             "alignments_class_N (ab-initio / heterogeneous refinement, class N)")
