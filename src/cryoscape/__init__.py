"""cryoscape: structural heterogeneity of macromolecules from cryo-EM and cryo-ET data with neural networks."""

__version__ = "0.1.0"
__all__ = ["__version__"]
