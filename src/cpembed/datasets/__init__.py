"""Bundled real Cell Painting data sets and simulators with ground truth."""

from ._bundled import bbbc021, lincs_plate

__all__ = ["bbbc021", "lincs_plate"]
