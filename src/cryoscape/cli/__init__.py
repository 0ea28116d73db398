"""Command-line interface: thin wrappers that parse arguments and call library functions."""
