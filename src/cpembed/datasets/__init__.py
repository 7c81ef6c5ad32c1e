"""Bundled real Cell Painting data sets and simulators with ground truth."""

__all__: list[str] = []
