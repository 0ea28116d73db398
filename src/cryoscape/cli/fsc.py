"""Fourier shell correlation between two maps, optionally masked with noise-substitution correction.

Writes OUT/fsc.txt (per shell: frequency in 1/A, resolution in A, unmasked FSC and, with a mask, the masked,
phase-randomised and corrected FSC), OUT/fsc.png and, with --mask auto, OUT/mask.mrc; prints the resolution
at FSC 0.5 and 0.143 and the real-space map correlation. --mask auto builds a soft mask from the average of the
two maps (threshold at half its 99th-percentile voxel, 3 px dilation, 10 px cosine edge; tomoDRGN's recipe).
With a mask, phases beyond --phase-randomize (default: where the unmasked FSC drops below 0.8) are randomised
to remove the mask's own correlation (Chen et al. 2013). With --align, MAP1 is first brought onto MAP2 by a rotation,
a translation and, if it fits better, a hand flip (mirror), found by a search over SO(3) with FFT translations
(`cryoscape.analysis.align`; ~8 s of CPU at 64^3); the rotation (matrix and RELION Euler angles), translation (A)
and hand are printed and written to OUT/align.json, the aligned map to OUT/aligned.mrc, and the FSC is that of the
aligned map (the plot's legend names the transform). OUT must be new or empty unless --overwrite is given (which
replaces fsc.txt, fsc.png, mask.mrc, align.json and aligned.mrc there, nothing else).

Example:
  cryoscape fsc half1.mrc half2.mrc --mask auto -o fsc_out/
  cryoscape fsc map.mrc gt/state_000.mrc --mask mask.mrc --phase-randomize 12 --apix 3.0 -o fsc_out/
  cryoscape fsc abinit_map.mrc gt/state_000.mrc --align -o fsc_aligned/
"""

from __future__ import annotations

import argparse
import math

from cryoscape.errors import InputError


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape fsc``."""
    p.add_argument("map_a", help="first map (.mrc)")
    p.add_argument("map_b", help="second map (.mrc), same box and voxel size")
    p.add_argument("-o", "--output", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: replace fsc.txt, fsc.png, mask.mrc, align.json and "
                        "aligned.mrc there, keep others")
    p.add_argument("--mask", help="'auto' or a mask .mrc (values in [0, 1]) applied to both maps")
    p.add_argument("--phase-randomize", metavar="RES",
                   help="with a mask: resolution (A) beyond which phases are randomised, 'auto' (default: where "
                        "the unmasked FSC drops below 0.8) or 'none' (no correction)")
    p.add_argument("--apix", type=float, help="voxel size in A (default: from the header of the first map)")
    p.add_argument("--align", action="store_true",
                   help="first align MAP1 onto MAP2 (rotation search over SO(3), FFT translations, and a hand flip "
                        "if it fits better); report the rotation, translation and hand, write align.json and "
                        "aligned.mrc, and compare the aligned map")
    p.add_argument("--no-flip", action="store_true", help="with --align: keep the hand (search rotations only)")


def _randomize_arg(value: str | None):
    if value is None or value == "auto":
        return "auto"
    if value == "none":
        return None
    try:
        res = float(value)
    except ValueError:
        raise InputError(f"--phase-randomize must be a resolution in A, 'auto' or 'none', got {value!r}") from None
    if res <= 0:
        raise InputError(f"--phase-randomize must be positive, got {res}")
    return res


def _describe_resolution(result, threshold: float) -> str:
    import numpy as np

    res = result.resolution(threshold)
    if not math.isfinite(res):
        return f"not reached (the FSC starts below {threshold})"
    if np.all(result.final >= threshold):
        return f"<= {res:.2f} A (the FSC stays above {threshold} up to the last shell)"
    return f"{res:.2f} A"


def run(args) -> int:
    """Run ``cryoscape fsc``."""
    import numpy as np

    from cryoscape.analysis.maps import auto_mask, check_same_box, map_correlation, masked_fsc
    from cryoscape.analysis.plots import plot_fsc_curves, save_figure
    from cryoscape.io.mrc import read_mrc, write_mrc
    from cryoscape.utils.atomic import atomic_path
    from cryoscape.utils.outputs import prepare_output_dir

    if args.no_flip and not args.align:
        raise InputError("--no-flip only applies with --align")
    out_dir = prepare_output_dir(args.output, "fsc", args.overwrite,
                                 own=("fsc.txt", "fsc.png", "mask.mrc", "align.json", "aligned.mrc"))
    a, info_a = read_mrc(args.map_a)
    b, info_b = read_mrc(args.map_b)
    for vol, path in ((a, args.map_a), (b, args.map_b)):
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(f"expected a cubic volume, got shape {vol.shape}", path)
    check_same_box(a, b, args.map_a, args.map_b)
    apix = args.apix or info_a.voxel_size_angstrom
    if not apix or apix <= 0:
        raise InputError("the header has no voxel size", args.map_a, "give --apix")
    if args.apix is None and info_b.voxel_size_angstrom > 0 and \
            abs(info_b.voxel_size_angstrom - apix) > 1e-3 * apix:
        raise InputError(f"voxel sizes differ: {apix:.4f} A vs {info_b.voxel_size_angstrom:.4f} A", args.map_b,
                         "resample one map, or give --apix to override")
    alignment = None
    if args.align:
        from cryoscape.analysis.align import align_maps

        alignment = align_maps(a, b, apix, flip=not args.no_flip)
        a = alignment.apply(a)
    mask = None
    if args.mask == "auto":
        mask = auto_mask(0.5 * (a + b), apix)
    elif args.mask:
        mask, _ = read_mrc(args.mask)
        check_same_box(a, mask, args.map_a, args.mask)
    result = masked_fsc(a, b, apix, mask, _randomize_arg(args.phase_randomize))
    curves_or_none = {"fsc_unmasked": result.unmasked, "fsc_masked": result.masked,
                      "fsc_phase_randomized": result.randomized, "fsc_corrected": result.corrected}
    cols: dict[str, np.ndarray] = {k: v for k, v in curves_or_none.items() if v is not None}
    freq = result.freqs_per_angstrom
    with np.errstate(divide="ignore"):
        res = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-30), np.inf)
    table = np.column_stack([freq, res] + list(cols.values()))
    curves = {name.replace("fsc_", "").replace("_", " "): (result.freqs, c) for name, c in cols.items()}
    with out_dir as out:
        if args.mask == "auto":
            assert mask is not None  # made above
            write_mrc(out / "mask.mrc", mask, voxel_size_angstrom=apix)
        with atomic_path(out / "fsc.txt") as tmp:
            np.savetxt(tmp, table, fmt="%.6g", header=" ".join(["freq_per_angstrom", "resolution_angstrom", *cols]))
        legend_title = None
        if alignment is not None:
            import json

            from cryoscape.utils.atomic import atomic_write_text

            rot, tilt, psi = alignment.euler_deg
            legend_title = (f"MAP1 aligned: rot/tilt/psi {rot:.0f}/{tilt:.0f}/{psi:.0f} deg"
                            + (", hand flipped" if alignment.hand_flipped else ""))
            write_mrc(out / "aligned.mrc", a, voxel_size_angstrom=apix)
            info = {"moving": str(args.map_a), "reference": str(args.map_b), **alignment.to_dict(),
                    "convention": "aligned(r) = MAP1(F^h R^T (r - t)), r = (x, y, z) in A from the box centre, "
                                  "F = diag(1, 1, -1) when hand_flipped (docs/metrics.md)"}
            atomic_write_text(out / "align.json", json.dumps(info, indent=1, allow_nan=False) + "\n")
        save_figure(plot_fsc_curves(curves, apix, legend_title=legend_title), out / "fsc.png")
    which = "corrected" if result.corrected is not None else "masked" if result.masked is not None else "unmasked"
    if alignment is not None:
        print(alignment.describe())
    print(f"FSC ({which}{', after alignment' if alignment is not None else ''}), voxel size {apix:.4g} A")
    print(f"  resolution at FSC 0.5:   {_describe_resolution(result, 0.5)}")
    print(f"  resolution at FSC 0.143: {_describe_resolution(result, 0.143)}")
    if result.randomize_from_angstrom is not None:
        last_shell = len(result.freqs) - 1
        none = a.shape[0] * apix / result.randomize_from_angstrom >= last_shell
        print(f"  phases randomised beyond {result.randomize_from_angstrom:.2f} A"
              + (" (no shell of the curve is affected)" if none else ""))
    print(f"  map correlation: {map_correlation(a, b):.4f}"
          + (f" (within the mask: {map_correlation(a, b, mask):.4f})" if mask is not None else ""))
    if alignment is not None:
        print(f"wrote {out / 'align.json'} and {out / 'aligned.mrc'}")
    print(f"wrote {out / 'fsc.txt'} and {out / 'fsc.png'}")
    return 0
