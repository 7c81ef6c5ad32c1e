"""Bundled real Cell Painting data sets and simulators with ground truth."""

from ._bundled import bbbc021, lincs_plate
from ._simulate_profiles import simulate_profiles

__all__ = ["bbbc021", "lincs_plate", "simulate_profiles"]
