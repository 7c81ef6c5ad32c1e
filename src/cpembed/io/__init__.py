"""Reading and writing Cell Painting profiles and images."""

from ._feature_names import parse_feature_names
from ._profiles import read_profiles, write_profiles

__all__ = ["parse_feature_names", "read_profiles", "write_profiles"]
