"""One training engine for every model family: loop, validation, checkpoints, resume, logging, DDP, AMP."""
