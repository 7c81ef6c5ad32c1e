"""CellProfiler-style feature names of a Cell Painting assay: 5 dyes × 3 compartments × the usual modules.

The names follow the CellProfiler conventions used by the JUMP Cell Painting pipelines (Chandrasekaran et al. 2023,
*Nature Methods* 20, 1002): ``<Compartment>_<Module>_<Feature>[_<Channel>][_<scale>]``, so that
:func:`cpembed.io.parse_feature_names` recovers compartment, module and channel(s).
"""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")

_AREA_SHAPE = (
    "Area",
    "BoundingBoxArea",
    "Compactness",
    "Eccentricity",
    "EquivalentDiameter",
    "Extent",
    "FormFactor",
    "MajorAxisLength",
    "MinorAxisLength",
    "MaxFeretDiameter",
    "MinFeretDiameter",
    "MaximumRadius",
    "MeanRadius",
    "MedianRadius",
    "Perimeter",
    "Solidity",
    *(f"Zernike_{n}_{m}" for n in range(10) for m in range(n % 2, n + 1, 2)),
)
_INTENSITY = (
    "IntegratedIntensity",
    "IntegratedIntensityEdge",
    "LowerQuartileIntensity",
    "MADIntensity",
    "MassDisplacement",
    "MaxIntensity",
    "MaxIntensityEdge",
    "MeanIntensity",
    "MeanIntensityEdge",
    "MedianIntensity",
    "MinIntensity",
    "MinIntensityEdge",
    "StdIntensity",
    "StdIntensityEdge",
    "UpperQuartileIntensity",
)
_HARALICK = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "DifferenceEntropy",
    "DifferenceVariance",
    "Entropy",
    "InfoMeas1",
    "InfoMeas2",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumEntropy",
    "SumVariance",
    "Variance",
)
_TEXTURE_SCALES = (3, 5, 10)
_TEXTURE_DIRECTIONS = ("00", "01", "02", "03")
_GRANULARITY_SCALES = range(1, 17)
_RADIAL = ("FracAtD", "MeanFrac", "RadialCV")
_RADIAL_BINS = 4
_SYMMETRIC_CORRELATION = ("Correlation", "Overlap")
_ORDERED_CORRELATION = ("Costes", "K", "Manders", "RWC")


def _compartment_features(compartment: str) -> list[str]:
    names = [f"{compartment}_AreaShape_{feature}" for feature in _AREA_SHAPE]
    for channel in CHANNELS:
        names += [f"{compartment}_Intensity_{feature}_{channel}" for feature in _INTENSITY]
        names += [
            f"{compartment}_Texture_{feature}_{channel}_{scale}_{direction}"
            for feature in _HARALICK
            for scale in _TEXTURE_SCALES
            for direction in _TEXTURE_DIRECTIONS
        ]
        names += [f"{compartment}_Granularity_{scale}_{channel}" for scale in _GRANULARITY_SCALES]
        names += [
            f"{compartment}_RadialDistribution_{feature}_{channel}_{ring}of{_RADIAL_BINS}"
            for feature in _RADIAL
            for ring in range(1, _RADIAL_BINS + 1)
        ]
    names += [
        f"{compartment}_Correlation_{feature}_{first}_{second}"
        for feature in _SYMMETRIC_CORRELATION
        for first, second in combinations(CHANNELS, 2)
    ]
    names += [
        f"{compartment}_Correlation_{feature}_{first}_{second}"
        for feature in _ORDERED_CORRELATION
        for first, second in permutations(CHANNELS, 2)
    ]
    return names


def cellprofiler_feature_names() -> list[str]:
    """All 3,423 feature names of the catalogue, ordered by compartment, then module, then channel."""
    return [name for compartment in COMPARTMENTS for name in _compartment_features(compartment)]


def select_feature_names(n_features: int) -> list[str]:
    """Pick ``n_features`` names spread evenly over the catalogue, so every module and compartment is represented.

    The pick keeps the catalogue's order and is the same for every call with the same ``n_features``.
    """
    catalogue = cellprofiler_feature_names()
    if not 1 <= n_features <= len(catalogue):
        raise ValueError(
            f"n_features must be between 1 and {len(catalogue)} (the size of the CellProfiler feature catalogue), "
            f"got {n_features}. Pass `feature_names=` to use names of your own."
        )
    positions = np.linspace(0, len(catalogue) - 1, n_features).round().astype(int)
    return [catalogue[position] for position in positions]
