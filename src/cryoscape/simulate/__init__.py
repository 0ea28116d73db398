"""Synthetic cryo-EM datasets: ground-truth maps (presets, MRC maps, atomic models) and particle images."""

from cryoscape.simulate.atomic import atomic_volume, read_atoms, states_from_atomic
from cryoscape.simulate.particles import draw_metadata, form_images, simulate_dataset, simulate_stack
from cryoscape.simulate.volumes import (
    PRESETS,
    StateSet,
    get_preset,
    preset_volumes,
    render_gaussians,
    states_from_maps,
    states_from_preset,
)

__all__ = [
    "PRESETS",
    "StateSet",
    "atomic_volume",
    "draw_metadata",
    "form_images",
    "get_preset",
    "preset_volumes",
    "read_atoms",
    "render_gaussians",
    "simulate_dataset",
    "simulate_stack",
    "states_from_atomic",
    "states_from_maps",
    "states_from_preset",
]
