"""``analyze_run``: the standard analysis of a trained run, from latents to an HTML report.

Writes into ``out_dir`` (default ``RUN/analysis/epoch_NNN``):

* ``z_pca.png``, ``z_pca_hexbin.png``, ``explained_variance.png`` (zdim > 1), ``z_hist.png`` (zdim 1),
  ``umap.npy``, ``umap.png``, ``umap_hexbin.png`` (unless skipped), ``loss.png``;
* ``kmeansK/``: ``labels.npy`` (cluster of every particle, RUN order), ``centers.txt`` (on-data centres),
  ``centers_ind.txt`` (their particle positions in the run and indices in the original input),
  ``sizes.txt``, ``vol_001.mrc`` ... (one map per centre);
* ``pcN/`` (``zN/`` for zdim 1): ``z_values.txt`` and ten maps from the 5th to the 95th percentile;
* with ``reconstruct``: ``reconstruct/`` inside ``kmeansK/`` and each traversal folder, latent-neighbour maps
  ``vol_001.mrc`` ... with ``vol_001_half_a.mrc``, ``vol_001_half_b.mrc`` and ``vol_001_fsc.txt``, and
  ``variable_region.mrc`` (the region whose neighbourhoods are chosen apart from the rest) when one is found;
* ``evaluation.json`` when a simulation truth is given;
* ``poses_moved_far.txt`` for a run that refined poses (``train --refine-poses``): the input indices of the
  particles whose pose moved more than 10 degrees or 3 pixels (``filter --ind ... --invert`` drops them); the
  report's "Refined poses" section shows the distribution of the changes and of the viewing directions; an ab
  initio run (``cryoscape abinit``) gets an "Ab initio poses" section instead (viewing directions, the switch to
  local refinement, the search per epoch) and no ``poses_moved_far.txt`` (its poses have no consensus);
* ``chimerax.cxc``: a ChimeraX script that opens the k-means maps (coloured as in the plots) and each traversal
  as a volume series, at the maps' voxel size (``chimerax OUT/chimerax.cxc``);
* ``index.html``: everything above, self-contained.

A run without a latent space (zdim 0: ``cryoscape abinit`` by default, ``train --zdim 0``) has no latents:
``analyze_run`` hands it to :func:`analyze_homogeneous`, which writes the epoch's map ``map.mrc``, ``loss.png``,
``chimerax.cxc`` and ``index.html`` (run summary, loss, the map's central sections, the pose section that applies)
and skips every latent output.

The maps can be mirrored (``flip``: handedness), contrast-inverted (``invert``) and resampled to a box of
``downsample`` voxels (Fourier crop, voxel size scaled by ``D / downsample``), as cryoDRGN's ``analyze
--flip/--invert/-d`` do. ``RUN/analyses.txt`` records where the analysis went, so that ``filter --clusters``
finds its k-means labels whatever ``out_dir`` was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cryoscape.analysis.latent import kmeans_on_data, load_latents, pc_traversal_points, run_pca, run_umap
from cryoscape.analysis.plots import (
    plot_explained_variance,
    plot_hexbin,
    plot_latent_histogram,
    plot_loss_curves,
    plot_scatter,
    save_figure,
)
from cryoscape.analysis.report import build_report
from cryoscape.analysis.traversal import write_traversal
from cryoscape.errors import InputError
from cryoscape.utils.atomic import atomic_path, atomic_write_text, check_writable_dir

log = logging.getLogger("cryoscape")


def percentile_points(z1: np.ndarray, n: int = 10, lo: float = 5.0, hi: float = 95.0) -> np.ndarray:
    """``(n, 1)`` evenly spaced values of a 1-D latent between two percentiles."""
    a, b = np.percentile(z1, [lo, hi])
    return np.linspace(a, b, n, dtype=np.float32)[:, None]


def _maps(generator, out_dir: Path, points: np.ndarray, progress: bool, flip: bool = False, invert: bool = False,
          downsample: int | None = None) -> tuple[np.ndarray, float]:
    """Generate the maps at ``points``; write ``z_values.txt`` and ``vol_001.mrc``, ... into ``out_dir``.

    Returns the maps as written ``(n, D', D', D')`` (after flip, invert and resampling) and their voxel size.
    """
    from cryoscape.inference import postprocess_map
    from cryoscape.io.mrc import write_mrc

    write_traversal(out_dir, points)
    vols = generator.generate_volumes(points, progress=progress)
    voxel = float(generator.pixel_size_angstrom)
    if flip or invert or downsample:
        done = [postprocess_map(v, generator.pixel_size_angstrom, downsample, flip, invert) for v in vols]
        vols, voxel = np.stack([v for v, _ in done]), float(done[0][1])
    for i, vol in enumerate(vols):
        write_mrc(out_dir / f"vol_{i + 1:03d}.mrc", vol, voxel_size_angstrom=voxel)
    return vols, voxel


def _neighbour_maps(run_dir, epoch, out: Path, kdir: Path, centers: np.ndarray, z: np.ndarray, pca, n_pcs: int,
                    max_neighbours: int, device: str):
    """Latent-neighbour maps at the k-means centres and traversal points; returns a report section."""
    from cryoscape.analysis.neighbour_recon import (
        reconstructor_from_run,
        write_neighbour_map,
        write_variable_region,
    )
    from cryoscape.analysis.report import Section, Table

    rec = reconstructor_from_run(run_dir, epoch, max_neighbours=max_neighbours,
                                 device=None if device == "auto" else device)
    write_variable_region(out / "variable_region.mrc", rec, log.info)
    region_mask = rec.variable_region()
    zdim = z.shape[1]
    groups = {kdir.name: (kdir / "reconstruct", centers)}
    for pc in range(1, (min(n_pcs, zdim) if zdim > 1 else 1) + 1):
        name = f"pc{pc}" if zdim > 1 else "z1"
        points = pc_traversal_points(z, pc, pca=pca) if zdim > 1 else percentile_points(z[:, 0])
        groups[name] = (out / name / "reconstruct", points)
    rows = []
    for name, (folder, points) in groups.items():
        log.info(f"latent-neighbour reconstructions: {len(points)} maps for {name}")
        folder.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(points):
            m = rec.reconstruct(p)
            write_neighbour_map(folder / f"vol_{i + 1:03d}.mrc", m, rec.pixel_size_angstrom)
            rows.append([f"{name}/reconstruct/vol_{i + 1:03d}.mrc", f"{m.resolution_angstrom:.2f}",
                         f"{min(m.k_per_shell)}-{max(m.k_per_shell)}"])
        with atomic_path(folder / "z_values.txt") as tmp:
            np.savetxt(tmp, points)
    sec = Section("Latent-neighbour reconstructions")
    sec.paragraphs.append(
        "Maps re-estimated at the k-means centres and traversal points from the particles nearest each point "
        f"(at most {max_neighbours}), back-projected with their poses and CTFs, with Gaussian kernel weights by "
        "latent distance and the neighbourhood size chosen per Fourier shell by half-set cross-validation, "
        + ("separately inside and outside the region that varies over the latent space (variable_region.mrc, "
           f"{100 * float(np.mean(region_mask > 0.5)):.1f} % of the box); " if region_mask is not None else
           "one choice for the whole box (no region was found to vary); ")
        + "each map has its half maps and their FSC next to it (docs/metrics.md).")
    sec.tables.append(Table(["map", "half-map resolution at FSC 0.143 (Å)", "particles per shell"], rows))
    return sec


ALIGNED_DIR = "aligned"


def align_class_maps(vols: np.ndarray, voxel: float, sizes: np.ndarray, out_dir: Path):
    """Bring the k-means maps ``vols`` ``(k, D, D, D)`` (voxel size ``voxel``, A) of one run into one frame: each
    is aligned (:func:`cryoscape.analysis.align.align_maps`, rotation and translation, the hand kept) to the map of
    the largest cluster (``sizes``: particles per cluster). Writes ``out_dir/vol_NNN.mrc`` and
    ``out_dir/alignment.json``; returns ``(aligned maps, report section)``.

    Use: maps of different states superposed (rotation and translation, by the correlation of the whole map) for
    a side-by-side view or a difference map. The maps in ``kmeansK/`` stay in the frame of the run's poses
    (``write-poses``). The frame of each state is not fixed by the images (a state's map turned, with its
    particles' poses turned back, explains the same images); in the heterogeneous ab initio runs measured so far the
    class maps came out superposed to within about 3 degrees (``bench/RESULTS.md`` section 14b).
    """
    from cryoscape.analysis.align import align_maps
    from cryoscape.analysis.maps import map_correlation
    from cryoscape.analysis.report import Section, Table
    from cryoscape.io.mrc import write_mrc

    out_dir.mkdir(parents=True, exist_ok=True)
    ref = int(np.argmax(sizes))
    aligned, records, rows = [], [], []
    for c, vol in enumerate(vols):
        record: dict[str, Any]
        if c == ref:
            moved, record = np.asarray(vol, np.float32), {"cluster": c, "reference": True}
        else:
            alignment = align_maps(vol, vols[ref], voxel, flip=False)
            moved = alignment.apply(vol)
            record = {"cluster": c, "reference": False, **alignment.to_dict()}
        record["correlation_with_reference_as_written"] = float(map_correlation(vol, vols[ref]))
        record["correlation_with_reference_aligned"] = float(map_correlation(moved, vols[ref]))
        write_mrc(out_dir / f"vol_{c + 1:03d}.mrc", moved, voxel_size_angstrom=voxel)
        aligned.append(moved)
        records.append(record)
        rows.append([str(c), str(int(sizes[c])),
                     "reference" if c == ref else f"{record['rotation_angle_deg']:.1f}",
                     "-" if c == ref else ", ".join(f"{v:.1f}" for v in record["translation_angstrom"]),
                     f"{record['correlation_with_reference_as_written']:.3f}",
                     f"{record['correlation_with_reference_aligned']:.3f}"])
        log.info(f"class map {c + 1}/{len(vols)}: " + ("the reference (largest cluster)" if c == ref else
                 f"turned {record['rotation_angle_deg']:.1f} deg onto the reference, correlation "
                 f"{record['correlation_with_reference_as_written']:.3f} -> "
                 f"{record['correlation_with_reference_aligned']:.3f}"))
    atomic_write_text(out_dir / "alignment.json", json.dumps(
        {"reference_cluster": ref, "voxel_size_angstrom": voxel, "hand": "kept", "maps": records}, indent=2))
    sec = Section("Class maps in one frame", paragraphs=[
        f"The k-means maps aligned (rotation and translation by the correlation of the whole map, the hand kept) to "
        f"the map of the largest cluster ({ref}), written to {out_dir.parent.name}/{out_dir.name}/ (--align-maps; "
        f"the maps in {out_dir.parent.name}/ stay in the frame of the run's poses, which `cryoscape write-poses` "
        f"writes)."])
    sec.tables.append(Table(["cluster", "particles", "rotation onto the reference (deg)", "translation (Å)",
                             "correlation as written", "correlation aligned"], rows))
    return np.stack(aligned), sec


def chimerax_script(out_dir: Path, kmeans_maps: list[Path], traversals: dict[str, list[Path]],
                    voxel_size: float, title: str) -> str:
    """A ChimeraX ``.cxc`` script (to be saved in ``out_dir``) that opens the analysis maps.

    The k-means maps become models ``#1`` ... ``#k`` (coloured like the clusters in the plots, tiled side by
    side), each traversal one volume series model after them (hidden, with a slider); every model gets
    ``voxel_size``. Paths are relative to ``out_dir``: ChimeraX runs a script from the script's own folder.
    """
    from cryoscape.analysis.tomogram import cluster_colors

    def rel(path: Path) -> str:
        name = Path(path).relative_to(out_dir).as_posix()
        return f'"{name}"' if " " in name else name

    k = len(kmeans_maps)
    lines = [f"# {title}",
             "# ChimeraX script written by `cryoscape analyze`: run `chimerax chimerax.cxc`, or `open chimerax.cxc`",
             "# in ChimeraX. It closes the open models first, so that the model numbers below hold.",
             f"# maps at {voxel_size:.4g} A per voxel",
             "close"]
    if k:
        colors = cluster_colors(k)
        folder = Path(kmeans_maps[0]).parent.relative_to(out_dir).as_posix()
        lines.append(f"# k-means maps: model #c+1 is cluster c ({folder}/vol_NNN.mrc)")
        for c, path in enumerate(kmeans_maps):
            hex_color = "#" + "".join(f"{int(round(255 * v)):02x}" for v in colors[c][:3])
            lines += [f"open {rel(path)}", f"rename #{c + 1} cluster_{c}", f"color #{c + 1} {hex_color}"]
        lines += [f"volume #1-{k} voxelSize {voxel_size:.6g}", f"tile #1-{k}"]
    model = k
    for name, paths in traversals.items():
        if not paths:
            continue
        model += 1
        lines += [f"# {name}: {len(paths)} maps along the trajectory, one volume series (model #{model})",
                  "open " + " ".join(rel(p) for p in paths) + " vseries true",
                  f"rename #{model} {name}", f"volume #{model} voxelSize {voxel_size:.6g}",
                  f"hide #{model} models" if k else f"view #{model}", f"vseries slider #{model}"]
    return "\n".join(lines) + "\n"


def is_homogeneous(run_dir) -> bool:
    """Whether the run has no latent space (``model.zdim`` 0 in its ``config.yaml``: ``abinit`` by default,
    ``train --zdim 0``); such a run has no ``latents/`` and is analysed by :func:`analyze_homogeneous`.
    """
    from cryoscape.config import load_config

    path = Path(run_dir) / "config.yaml"
    return path.is_file() and int(load_config(path).model.zdim) == 0


def analysis_epoch(run_dir, epoch: int | None = None) -> int:
    """The epoch ``analyze`` analyses: ``epoch`` if it was saved, else ``RUN/best_epoch``, else the last; of the
    latents (``latents/epoch_NNN.npy``), or of the checkpoints for a run without a latent space.
    """
    from cryoscape.rundir import RunDir

    return RunDir(run_dir).resolve_epoch(epoch, of="checkpoints" if is_homogeneous(run_dir) else "latents")


def _is_abinit(run_dir: Path) -> bool:
    """Whether the run is a ``cryoscape abinit`` run (``train.abinit`` in its ``config.yaml``)."""
    from cryoscape.config import load_config

    path = Path(run_dir) / "config.yaml"
    return path.is_file() and bool(load_config(path).train.abinit)


def _pose_search_state(run_dir: Path, epoch: int) -> dict | None:
    """The pose-search state (``state["poses"]``: history, ``local_from``) of the checkpoint of ``epoch``;
    ``None`` when the checkpoint is gone or holds none.
    """
    from cryoscape.rundir import RunDir

    run = RunDir(run_dir)
    if not run.checkpoint_path(epoch).is_file():
        return None
    state = run.load_checkpoint(epoch).get("poses")
    return state if isinstance(state, dict) and "history" in state else None


def _pose_sections(run_dir: Path, epoch: int, out: Path) -> list:
    """The report's pose section of a run with learned poses at ``epoch``: "Ab initio poses" for a ``cryoscape
    abinit`` run, "Refined poses" (and ``out/poses_moved_far.txt``) for ``train --refine-poses``; none otherwise.
    """
    from cryoscape.models.poses import load_learned_poses
    from cryoscape.rundir import RunDir

    if not RunDir(run_dir).learned_poses_path(epoch).is_file():
        return []
    arrays = load_learned_poses(run_dir, epoch)[1]
    if _is_abinit(run_dir):  # absolute searched poses
        from cryoscape.analysis.report import abinit_pose_section

        return [abinit_pose_section(arrays, _pose_search_state(run_dir, epoch), epoch)]
    # train --refine-poses: how far the poses moved
    from cryoscape.analysis.report import POSE_FAR_DEG, POSE_FAR_PX, pose_changes, pose_section

    ids = RunDir(run_dir).read_indices()
    refined, angle, shift = pose_changes(arrays)
    far = refined & ((angle > POSE_FAR_DEG) | (shift > POSE_FAR_PX))
    far_ids = (np.arange(len(angle)) if ids is None else ids)[far]
    atomic_write_text(out / "poses_moved_far.txt", "".join(f"{int(i)}\n" for i in far_ids))
    return [pose_section(arrays, ids, epoch)]


HOMOGENEOUS_MAP = "map.mrc"


def analyze_homogeneous(run_dir, out_dir=None, epoch: int | None = None, skip_volumes: bool = False,
                        device: str = "auto", progress: bool = True, flip: bool = False, invert: bool = False,
                        downsample: int | None = None) -> Path:
    """Analyse a run without a latent space (zdim 0) at ``epoch`` (default: ``RUN/best_epoch``, else the last
    checkpoint); returns the report.

    Writes into ``out_dir`` (default ``RUN/analysis/epoch_NNN``) the decoder's map ``map.mrc`` (after ``flip``,
    ``invert``, ``downsample`` as in :func:`analyze_run`; unless ``skip_volumes``), ``chimerax.cxc`` that opens
    it, ``loss.png`` and ``index.html`` with the run's configuration, the loss curves, central sections of the map
    and the pose section of a run that learned its poses (:func:`_pose_sections`).
    """
    from cryoscape.analysis.report import epoch_choice, map_section, run_selection_metric
    from cryoscape.rundir import RunDir

    run_dir = Path(run_dir)
    requested = epoch
    epoch = RunDir(run_dir).resolve_epoch(epoch)
    epoch_reason = epoch_choice(run_dir, requested, epoch)
    out = check_writable_dir(out_dir or run_dir / "analysis" / f"epoch_{epoch:03d}")
    log.info(f"analysing the homogeneous map (zdim 0) of epoch {epoch} ({epoch_reason}) -> {out}")

    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        save_figure(plot_loss_curves(metrics, mark_epoch=epoch), out / "loss.png")

    sections = []
    if not skip_volumes:
        from cryoscape.analysis.volume_space import load_generator
        from cryoscape.inference import postprocess_map
        from cryoscape.io.mrc import write_mrc

        generator = load_generator(run_dir, epoch, device)
        vol = generator.generate_volumes(None, progress=progress)[0]
        voxel = float(generator.pixel_size_angstrom)
        if flip or invert or downsample:
            vol, voxel = postprocess_map(vol, voxel, downsample, flip, invert)
            voxel = float(voxel)
        write_mrc(out / HOMOGENEOUS_MAP, vol, voxel_size_angstrom=voxel)
        done = [w for w, on in (("mirrored", flip), ("contrast-inverted", invert),
                                (f"resampled from box {generator.D}", downsample and downsample != generator.D)) if on]
        sections.append(map_section(vol, voxel, HOMOGENEOUS_MAP, epoch, done))
        atomic_write_text(out / "chimerax.cxc", chimerax_script(
            out, [], {}, voxel, f"cryoscape analysis of {run_dir.name}, epoch {epoch}").replace(
            "close\n", f"close\nopen {HOMOGENEOUS_MAP}\nvolume #1 voxelSize {voxel:.6g}\n", 1))
    sections += _pose_sections(run_dir, epoch, out)

    config = run_dir / "config.yaml"
    report = build_report(out, sections, title=f"cryoscape analysis: {run_dir.name}, epoch {epoch} ({epoch_reason})",
                          config=config if config.is_file() else None,
                          metrics=metrics if metrics.is_file() else None, epoch=epoch,
                          epoch_reason=epoch_reason, selection_metric=run_selection_metric(run_dir))
    log.info(f"report: {report}")
    return report


def analyze_run(run_dir, out_dir=None, epoch: int | None = None, ksample: int = 20, n_pcs: int = 2,
                skip_umap: bool = False, skip_volumes: bool = False, truth=None, device: str = "auto",
                seed: int = 0, progress: bool = True, flip: bool = False, invert: bool = False,
                downsample: int | None = None, truth_labels: str = "state", truth_k: int | None = None,
                reconstruct: bool = False, max_neighbours: int = 2000, align_maps: bool = False) -> Path:
    """Analyse the latents of ``run_dir`` at ``epoch`` (default: ``RUN/best_epoch``, else the last) and write
    plots, maps and ``index.html``; returns the report.

    With ``truth`` (a simulation folder) the report scores k-means of the latents against the simulation's
    ``truth_labels`` (default ``state``; e.g. ``subunit``) with ``truth_k`` clusters (default: the number of
    labels; the k-means section's clusters are reused when ``truth_k`` equals ``ksample``).

    ``flip`` mirrors the generated maps (handedness), ``invert`` inverts their contrast, ``downsample`` resamples
    them to that (even) box size; the evaluation against a ``truth`` always uses the model's own maps.

    ``reconstruct`` also writes latent-neighbour reconstructions (:mod:`cryoscape.analysis.neighbour_recon`, at
    most ``max_neighbours`` particles each) at the k-means centres and traversal points, into ``reconstruct/``
    inside ``kmeansK/`` and each traversal folder, each map with its half maps and FSC; the report lists their
    half-map resolutions.

    ``align_maps`` also writes the k-means maps aligned to the largest cluster's map into ``kmeansK/aligned/``
    (:func:`align_class_maps`), and the ChimeraX script opens those.
    """
    from cryoscape.analysis.analysis_index import record_analysis
    from cryoscape.analysis.volume_space import load_generator

    run_dir = Path(run_dir)
    if downsample is not None and (int(downsample) <= 0 or int(downsample) % 2):
        raise InputError(f"the box size to downsample the maps to must be a positive even number, got {downsample}")
    if is_homogeneous(run_dir):
        if truth is not None:
            raise InputError("--truth scores a latent space, and this run has none (zdim 0); compare its map "
                             f"({HOMOGENEOUS_MAP} of the analysis) with the simulation's gt/ map with `cryoscape fsc "
                             "MAP REFERENCE --align`", run_dir)
        if reconstruct:
            raise InputError("--reconstruct back-projects latent neighbours, and this run has no latent space "
                             "(zdim 0); `cryoscape backproject --run RUN` reconstructs from its poses", run_dir)
        return analyze_homogeneous(run_dir, out_dir, epoch=epoch, skip_volumes=skip_volumes, device=device,
                                   progress=progress, flip=flip, invert=invert, downsample=downsample)
    from cryoscape.analysis.report import epoch_choice, run_selection_metric

    latents = load_latents(run_dir, epoch)
    requested = epoch
    z, epoch = latents.z, latents.epoch
    assert epoch is not None  # the latents of a run folder name their epoch
    epoch_reason = epoch_choice(run_dir, requested, epoch)
    n, zdim = z.shape
    if n < 2:
        raise InputError("need at least two particles to analyse", run_dir)
    out = check_writable_dir(out_dir or run_dir / "analysis" / f"epoch_{epoch:03d}")
    generator = None if skip_volumes else load_generator(run_dir, epoch, device)
    indices = latents.indices if latents.indices is not None else np.arange(n)
    log.info(f"analysing {n} particles, zdim {zdim}, epoch {epoch} ({epoch_reason}) -> {out}")

    pca = run_pca(z) if zdim > 1 else None
    if pca is not None:
        save_figure(plot_explained_variance(pca.explained_variance_ratio), out / "explained_variance.png")
    else:
        save_figure(plot_latent_histogram(z[:, 0]), out / "z_hist.png")

    umap = None
    if not skip_umap and zdim > 2:
        umap = run_umap(z, seed=seed)
        if umap is not None:
            with atomic_path(out / "umap.npy") as tmp:
                np.save(tmp, umap.astype(np.float32))

    k = int(min(ksample, n))
    km = kmeans_on_data(z, k, seed=seed)
    kdir = out / f"kmeans{k}"
    kdir.mkdir(exist_ok=True)
    with atomic_path(kdir / "labels.npy") as tmp:
        np.save(tmp, km.labels.astype(np.int64))
    with atomic_path(kdir / "centers.txt") as tmp:
        np.savetxt(tmp, z[km.center_indices], fmt="%.6g")
    atomic_write_text(kdir / "centers_ind.txt", "# position_in_run index_in_input\n" + "".join(
        f"{i} {indices[i]}\n" for i in km.center_indices))
    sizes = np.bincount(km.labels, minlength=k)
    atomic_write_text(kdir / "sizes.txt", "".join(f"{c} {s}\n" for c, s in enumerate(sizes)))

    if pca is not None:
        emb = pca.projected[:, :2]
        axes = ("PC1", "PC2")
        save_figure(plot_scatter(emb, km.labels, emb[km.center_indices], axes, "latent PCA, k-means clusters"),
                    out / "z_pca.png")
        save_figure(plot_hexbin(emb, axes, "latent PCA density"), out / "z_pca_hexbin.png")
    if umap is not None:
        save_figure(plot_scatter(umap, km.labels, umap[km.center_indices], ("UMAP1", "UMAP2"), "UMAP"),
                    out / "umap.png")
        save_figure(plot_hexbin(umap, ("UMAP1", "UMAP2"), "UMAP density"), out / "umap_hexbin.png")

    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        save_figure(plot_loss_curves(metrics, mark_epoch=epoch), out / "loss.png")

    center_volumes = None
    traversals: dict[str, np.ndarray] = {}
    sections = []
    if generator is not None:
        post: dict[str, Any] = dict(flip=flip, invert=invert, downsample=downsample)
        log.info(f"generating {k} k-means centre maps")
        center_volumes, voxel = _maps(generator, kdir, z[km.center_indices], progress, **post)
        class_maps = [kdir / f"vol_{i + 1:03d}.mrc" for i in range(k)]
        if align_maps and k > 1:
            log.info(f"aligning the {k} k-means maps to the largest cluster's (--align-maps)")
            _, aligned_section = align_class_maps(center_volumes, voxel, sizes, kdir / ALIGNED_DIR)
            sections.append(aligned_section)
            class_maps = [kdir / ALIGNED_DIR / f"vol_{i + 1:03d}.mrc" for i in range(k)]
        for pc in range(1, (min(n_pcs, zdim) if zdim > 1 else 1) + 1):
            name = f"pc{pc}" if zdim > 1 else "z1"
            points = pc_traversal_points(z, pc, pca=pca) if zdim > 1 else percentile_points(z[:, 0])
            log.info(f"generating {len(points)} maps along {name}")
            traversals[name], _ = _maps(generator, out / name, points, progress, **post)
        atomic_write_text(out / "chimerax.cxc", chimerax_script(
            out, class_maps,
            {name: [out / name / f"vol_{i + 1:03d}.mrc" for i in range(len(v))] for name, v in traversals.items()},
            voxel, f"cryoscape analysis of {run_dir.name}, epoch {epoch}"))

    if reconstruct:
        sections.append(_neighbour_maps(run_dir, epoch, out, kdir, z[km.center_indices], z, pca, n_pcs,
                                        max_neighbours, device))

    sections += _pose_sections(run_dir, epoch, out)

    evaluation = None
    if truth is not None:
        from cryoscape.analysis.evaluate import evaluate_run, read_gt_maps

        truth = Path(truth)
        gt_maps, gt_apix = read_gt_maps(truth) if (truth / "gt").is_dir() else (None, None)
        evaluation = evaluate_run(run_dir, truth / "labels.npz", gt_maps=gt_maps, generator=generator,
                                  epoch=epoch, gt_pixel_size_angstrom=gt_apix, label_set=truth_labels,
                                  k=truth_k, seed=seed, kmeans=km if truth_k == k else None)
        atomic_write_text(out / "evaluation.json", json.dumps(evaluation, indent=2))

    config = run_dir / "config.yaml"
    report = build_report(out, sections, title=f"cryoscape analysis: {run_dir.name}, epoch {epoch} ({epoch_reason})",
                          config=config if config.is_file() else None,
                          metrics=metrics if metrics.is_file() else None,
                          z=z, pca=pca, umap=umap, kmeans=km, center_volumes=center_volumes,
                          traversals=traversals or None, evaluation=evaluation, epoch=epoch,
                          epoch_reason=epoch_reason, selection_metric=run_selection_metric(run_dir))
    record_analysis(run_dir, epoch, out)
    log.info(f"report: {report}")
    return report
