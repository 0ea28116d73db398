"""Volume-space analysis (tomoDRGN paper): maps for many particles, PCA of the maps, UMAP and k-means there.

Generates the map of a k-means sketch of the latent space (or of every particle with --all), optionally correlates
each with a reference map, then runs PCA on the (masked) maps as voxel vectors, UMAP of the principal components
and k-means. Writes OUT/vol_pcs.npy, OUT/explained_variance.png, OUT/vol_pca.png, OUT/labels.npy (per sampled map),
OUT/sample_indices.npy (latent rows sampled), OUT/mean.mrc, OUT/pc_001.mrc ..., and OUT/reference_cc.npy with
--reference.
Per-cluster maps of the k-means clusters in volume space go to OUT/kmeansK/: vol_001.mrc ... (the generated map
nearest each cluster centre), mean_001.mrc ... (the voxel-wise mean of the cluster's maps), sizes.txt and
centers_ind.txt (latent rows of the centre maps); OUT/chimerax.cxc opens the centre maps in ChimeraX.
OUT must be new or empty unless --overwrite is given (which replaces these files there, nothing else).

Example:
  cryoscape analyze-volumes runs/vae8 --sample 500 --mask auto -k 10 -o runs/vae8/volume_space
  cryoscape analyze-volumes runs/vae8 --sample 200 --reference consensus.mrc -o vs/
"""

from __future__ import annotations

import argparse
from typing import Any

# everything `analyze-volumes` writes into OUT (--overwrite replaces these, stale ones included)
OUTPUTS = ("vol_pcs.npy", "labels.npy", "sample_indices.npy", "mean.mrc", "pc_[0-9]*.mrc", "explained_variance.png",
           "vol_pca.png", "reference_cc.npy", "kmeans[0-9]*", "chimerax.cxc")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("-o", "--outdir", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: replace the files analyze-volumes writes there, keep others")
    p.add_argument("--epoch", type=int, help="epoch (default: best_epoch, else the last)")
    p.add_argument("--sample", type=int, default=500, help="maps to generate: k-means sketch size (default 500)")
    p.add_argument("--all", action="store_true", help="generate the map of every particle instead of a sketch")
    p.add_argument("--mask", default="auto", help="'auto', 'none' or a mask MRC (default auto)")
    p.add_argument("--pcs", type=int, default=10, help="principal components (default 10)")
    p.add_argument("-k", type=int, default=10, help="k-means clusters on the principal components (default 10)")
    p.add_argument("--reference", help="MRC map: correlation of every generated map with it")
    p.add_argument("--skip-umap", action="store_true")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="maps generated per batch (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import numpy as np

    from cryoscape.analysis.latent import kmeans_on_data, load_latents
    from cryoscape.analysis.volume_space import load_generator
    from cryoscape.errors import InputError
    from cryoscape.io.mrc import read_mrc
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.outdir, "analyze-volumes", args.overwrite, own=OUTPUTS)
    latents = load_latents(args.run, args.epoch)
    z = latents.z
    if args.all or args.sample >= len(z):
        rows = np.arange(len(z))
    else:
        rows = np.sort(kmeans_on_data(z, args.sample, seed=args.seed, n_init=1).center_indices)
    generator = load_generator(args.run, latents.epoch, args.device)
    mask = None if args.mask == "none" else args.mask
    if mask not in (None, "auto"):
        mask, _ = read_mrc(mask)
    ref = None
    if args.reference:
        ref, _ = read_mrc(args.reference)
        if ref.shape != (generator.D,) * 3:
            raise InputError(f"reference is {ref.shape} but the model makes {generator.D}^3 maps", args.reference)
    with out_dir as out:
        _write(args, generator, z, rows, mask, ref, out)
    print(f"volume-space analysis of {len(rows)} maps -> {out}")
    return 0


def _write(args, generator, z, rows, mask, ref, out) -> None:
    import numpy as np

    from cryoscape.analysis.plots import plot_explained_variance, plot_scatter, save_figure
    from cryoscape.analysis.volume_space import analyze_volume_space, correlation_to_reference
    from cryoscape.io.mrc import write_mrc
    from cryoscape.utils.atomic import atomic_path

    if ref is not None:
        cc = correlation_to_reference(generator, z[rows], ref, batch_size=args.batch_size)
        with atomic_path(out / "reference_cc.npy") as tmp:
            np.save(tmp, cc)
        print(f"correlation with the reference: median {np.median(cc):.3f}, min {cc.min():.3f}, max {cc.max():.3f}")
    result = analyze_volume_space(generator, z[rows], mask=mask, n_components=args.pcs,
                                  k=min(args.k, len(rows)), umap=not args.skip_umap, seed=args.seed,
                                  batch_size=args.batch_size)
    arrays: tuple[tuple[str, Any], ...] = (("sample_indices.npy", rows), ("vol_pcs.npy", result.pcs),
                                         ("labels.npy", result.labels))
    for name, arr in arrays:
        with atomic_path(out / name) as tmp:
            np.save(tmp, arr)
    apix = generator.pixel_size_angstrom
    write_mrc(out / "mean.mrc", result.mean_volume, voxel_size_angstrom=apix)
    for i, comp in enumerate(result.components[:5]):
        write_mrc(out / f"pc_{i + 1:03d}.mrc", comp, voxel_size_angstrom=apix)
    save_figure(plot_explained_variance(result.explained_variance_ratio), out / "explained_variance.png")
    _write_cluster_maps(result, rows, apix, out)
    emb = result.umap if result.umap is not None else result.pcs[:, :2]
    axes = ("UMAP1", "UMAP2") if result.umap is not None else ("volume PC1", "volume PC2")
    save_figure(plot_scatter(emb, result.labels, None, axes, "volume space"), out / "vol_pca.png")


def _write_cluster_maps(result, rows, apix: float, out) -> None:
    """OUT/kmeansK/: the centre map and the mean map of every volume-space cluster, sizes, centre rows, and
    OUT/chimerax.cxc.
    """
    import numpy as np

    from cryoscape.analysis.analyze import chimerax_script
    from cryoscape.io.mrc import write_mrc
    from cryoscape.utils.atomic import atomic_write_text

    k = len(result.center_indices)
    kdir = out / f"kmeans{k}"
    kdir.mkdir(exist_ok=True)
    sizes = np.bincount(result.labels, minlength=k)
    atomic_write_text(kdir / "sizes.txt", "# cluster maps\n" + "".join(f"{c} {n}\n" for c, n in enumerate(sizes)))
    atomic_write_text(kdir / "centers_ind.txt", "# map_in_sample latent_row\n" + "".join(
        f"{i} {rows[i]}\n" for i in result.center_indices))
    centre_maps = []
    for c in range(k):
        centre_maps.append(write_mrc(kdir / f"vol_{c + 1:03d}.mrc", result.center_volumes[c],
                                     voxel_size_angstrom=apix))
        write_mrc(kdir / f"mean_{c + 1:03d}.mrc", result.cluster_means[c], voxel_size_angstrom=apix)
    atomic_write_text(out / "chimerax.cxc", chimerax_script(out, centre_maps, {}, apix,
                                                             f"cryoscape analyze-volumes: {k} volume-space clusters"))
