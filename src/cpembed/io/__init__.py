"""Reading and writing Cell Painting profiles and images."""

from ._feature_match import FeatureMatch, match_features
from ._feature_names import CHANNEL_ALIASES, feature_identities, parse_feature_names
from ._image_store import read_store_images, to_uint8
from ._images import FILENAME_PATTERNS, build_image_store, read_images
from ._profiles import read_profiles, write_profiles

__all__ = [
    "CHANNEL_ALIASES",
    "FILENAME_PATTERNS",
    "FeatureMatch",
    "build_image_store",
    "feature_identities",
    "match_features",
    "parse_feature_names",
    "read_images",
    "read_profiles",
    "read_store_images",
    "to_uint8",
    "write_profiles",
]
