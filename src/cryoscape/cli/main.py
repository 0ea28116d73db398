"""The ``cryoscape`` command: a registry of subcommands, each a module with ``add_args`` and ``run``.

Each command module's docstring is its help text: the first line is the one-line purpose, the rest
(which must include an example) is shown by ``cryoscape COMMAND --help``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from cryoscape import __version__
from cryoscape.errors import CryoscapeError
from cryoscape.utils.malloc import keep_freed_memory

# command name -> module under cryoscape.cli (import is deferred so `--help` stays fast)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "train": "train",
    "abinit": "abinit",
    "eval-images": "eval_images",
    "eval-vol": "eval_vol",
    "analyze": "analyze",
    "analyze-volumes": "analyze_volumes",
    "filter": "filter",
    "write-poses": "write_poses",
    "explore": "explore",
    "simulate": "simulate",
    "simulate-tilt": "simulate_tilt",
    "chimerax-placement": "chimerax_placement",
    "backproject": "backproject",
    "downsample": "downsample",
    "fsc": "fsc",
    "evaluate": "evaluate",
    "pc-traversal": "pc_traversal",
    "graph-traversal": "graph_traversal",
    "direct-traversal": "direct_traversal",
}


def _load(name: str):
    return importlib.import_module(f"cryoscape.cli.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="cryoscape",
        description="Learn the structural heterogeneity of macromolecules from cryo-EM/ET particle images.",
        epilog="Run `cryoscape COMMAND --help` for the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"cryoscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        doc = (module.__doc__ or "").strip()
        purpose, _, rest = doc.partition("\n")
        p = sub.add_parser(
            name,
            help=purpose,
            description=purpose,
            epilog=rest.strip() or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-v", "--verbose", action="store_true", help="show debug output and full tracebacks")
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cryoscape`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    keep_freed_memory()
    try:
        result = args._module.run(args)
    except CryoscapeError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"cryoscape {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryoscape {args.command}: interrupted", file=sys.stderr)
        return 130
    code = int(result or 0)
    distributed = sys.modules.get("cryoscape.train.distributed")  # loaded only by commands that may run under torchrun
    if distributed is not None and distributed.left_together():  # a worker after a finished run: see exit_worker
        distributed.exit_worker(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
