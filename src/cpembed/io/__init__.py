"""Reading and writing Cell Painting profiles and images."""

from ._feature_names import parse_feature_names

__all__ = ["parse_feature_names"]
