"""Explore a run's latent space in the browser: PCA/UMAP scatter, colours, lasso export, the map at a point.

Serves a page on http://127.0.0.1:PORT (a free port unless --port) showing every particle's latent as a point
(PCA or UMAP), coloured by k-means cluster (that of `cryoscape analyze`, else computed), by a latent dimension or
by a STAR/.cs column such as rlnDefocusU; hovering shows the particle index and cluster. A lasso or box selection
is exported into RUN/explore_selections/NAME/ (indices.npy, indices.txt and particles.star or .cs: the files of
`cryoscape filter`); clicking a point shows central sections of the map at its latent. The server answers only
the page's own requests, reads nothing by path and writes nothing else. Ctrl-C stops it.
With --write-html FILE a static page is written instead (a selection downloads as an index list for
`cryoscape filter RUN --ind FILE`); an existing FILE is replaced only with --overwrite.

Example:
  cryoscape explore runs/vae8
  cryoscape explore runs/vae8 --epoch 20 --port 8050 --no-browser
  cryoscape explore runs/vae8 --write-html runs/vae8/explore.html
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("--epoch", type=int, help="epoch of the latents (default: best_epoch, else the last)")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default: a free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; use SSH port forwarding to reach "
                        "a remote workstation rather than a public address)")
    p.add_argument("--write-html", metavar="FILE", help="write a self-contained static page and exit")
    p.add_argument("--overwrite", action="store_true", help="with --write-html: replace FILE if it exists")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.add_argument("--k", type=int, help="k-means result of the analysis to use (kmeansK), or clusters to compute")
    p.add_argument("--skip-umap", action="store_true", help="do not compute a UMAP when the analysis has none")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (for generating maps)")
    p.add_argument("--seed", type=int, default=0, help="seed of a computed k-means/UMAP (default 0)")


def run(args) -> int:
    from cryoscape.errors import InputError
    from cryoscape.explore.data import load_explorer_data

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number (0-65535; 0 = any free port)")
    if args.write_html:
        from cryoscape.utils.outputs import check_output_file

        check_output_file(args.write_html, "explore", args.overwrite, option="--write-html")
    data = load_explorer_data(args.run, args.epoch, k=args.k, umap=not args.skip_umap, seed=args.seed)
    if args.write_html:
        from cryoscape.explore.page import build_page
        from cryoscape.utils.atomic import atomic_write_text

        atomic_write_text(args.write_html, build_page(data, server=False))
        print(f"wrote {args.write_html}")
        return 0
    return _serve(args, data)


def _serve(args, data) -> int:
    import logging
    import webbrowser

    from cryoscape.errors import InputError
    from cryoscape.explore.server import make_server

    try:
        server = make_server(data, host=args.host, port=args.port, device=args.device)
    except OSError as exc:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})",
                         hint="choose another --port, or 0 for a free one") from None
    if not server.loopback:
        logging.getLogger("cryoscape").warning(
            f"serving on {args.host}: anyone who can reach this address can view the run and export selections")
    print(f"cryoscape explore: {server.url}  (selections go to {data.run_dir / 'explore_selections'}; "
          "Ctrl-C stops)", flush=True)
    if server.loopback:
        print(f"on a remote machine, forward the port first: ssh -L {server.port}:127.0.0.1:{server.port} HOST",
              flush=True)
    if not args.no_browser and _has_display():
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def _has_display() -> bool:
    """Whether a graphical browser can open (on Linux without a display, `webbrowser` would start a text one)."""
    import os
    import sys

    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
