"""The registered model families (``--model``): one :class:`cryoscape.models.family.ModelFamily` per family
module. The contract and its defaults are in ``models.family``; this module only registers.
"""

from __future__ import annotations

from cryoscape.config import RunConfig
from cryoscape.errors import InputError
from cryoscape.models.cryodrgn import CryoDRGNFamily
from cryoscape.models.family import ModelFamily
from cryoscape.models.opus_dsd import OpusDSDFamily
from cryoscape.models.tomodrgn import TomoDRGNFamily

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (CryoDRGNFamily(), OpusDSDFamily(), TomoDRGNFamily())}


def with_family_defaults(config: RunConfig) -> RunConfig:
    """``config`` with the training values it leaves unset (``batch_size``, ``lr``, ``val_frac`` = ``None``) taken
    from its family's defaults (:meth:`ModelFamily.with_defaults`); values that are set are kept.
    """
    return get_family(config.model.family).with_defaults(config)


def get_family(name: str) -> ModelFamily:
    """The family registered under ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(
            f"model family {name!r} is not available in this version (available: {', '.join(FAMILIES)})"
        ) from None
