"""``python -m cryoscape``: the same as the ``cryoscape`` command."""

from cryoscape.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
