"""Bundled real Cell Painting data sets and simulators with ground truth."""

from ._bundled import bbbc021, lincs_plate
from ._example_images import EXAMPLE_CHANNELS, example_images
from ._simulate_images import simulate_images
from ._simulate_populations import simulate_cell_populations
from ._simulate_profiles import simulate_profiles

__all__ = [
    "EXAMPLE_CHANNELS",
    "bbbc021",
    "example_images",
    "lincs_plate",
    "simulate_cell_populations",
    "simulate_images",
    "simulate_profiles",
]
