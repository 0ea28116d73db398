"""Model families (cryoDRGN, tomoDRGN, OPUS-DSD) and loading trained runs."""

from cryoscape.models.loading import TrainedModel, load_run

__all__ = ["TrainedModel", "load_run"]
