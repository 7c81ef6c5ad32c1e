"""Parse CellProfiler feature names into compartment, measurement and channel(s).

CellProfiler names features ``<Compartment>_<Measurement>_<Feature>[_<Channel>][_<scale>...]``, e.g.
``Cells_Intensity_MeanIntensity_Mito``, ``Nuclei_Correlation_Correlation_DNA_ER``,
``Cytoplasm_Texture_AngularSecondMoment_AGP_10_00``, ``Cells_RadialDistribution_FracAtD_DNA_1of4`` or
``Cells_Granularity_1_Mito``. Where the channel sits depends on the measurement module, so the position is
looked up per module; features of modules without a channel (AreaShape, Neighbors, ...) get an empty channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

# Token index (after splitting on "_") of the channel name, per CellProfiler measurement module.
# Negative indices count from the end. Correlation features carry two channels.
_CHANNEL_POSITIONS: dict[str, tuple[int, ...]] = {
    "Intensity": (-1,),
    "Granularity": (-1,),
    "Texture": (3,),
    "RadialDistribution": (3,),
    "Correlation": (-2, -1),
}
# Location features that carry a channel end with it (``Location_CenterMassIntensity_X_DNA``).
_LOCATION_WITH_CHANNEL = re.compile(r"^Location_(CenterMassIntensity|MaxIntensity)_[XYZ]_")
# Illumination-corrected / original image prefixes used in many pipelines ("CorrDNA", "OrigMito").
_IMAGE_PREFIX = re.compile(r"^(Corr|Orig)(?=[A-Z])")
_NUMERIC = re.compile(r"^\d+(of\d+)?$")
# Compartment, measurement and feature come first: a channel is never among the first three tokens
# (``Cells_Intensity_MeanIntensity`` names no channel).
_FIRST_CHANNEL_TOKEN = 3


def _clean_channel(token: str) -> str:
    return "" if _NUMERIC.match(token) else _IMAGE_PREFIX.sub("", token)


def _parse_one(name: str) -> tuple[str, str, str, str]:
    tokens = name.split("_")
    if len(tokens) < 2:
        return "", "", "", ""
    compartment, measurement = tokens[0], tokens[1]
    positions = _CHANNEL_POSITIONS.get(measurement, ())
    if measurement == "Location" and _LOCATION_WITH_CHANNEL.match("_".join(tokens[1:])):
        positions = (-1,)
    channels = []
    for position in positions:
        index = position if position >= 0 else len(tokens) + position
        if _FIRST_CHANNEL_TOKEN <= index < len(tokens):
            channels.append(_clean_channel(tokens[index]))
    channels += ["", ""]
    return compartment, measurement, channels[0], channels[1]


def parse_feature_names(names: Iterable[str]) -> pd.DataFrame:
    """Split CellProfiler feature names into their parts.

    Parameters
    ----------
    names
        Feature names, e.g. ``adata.var_names``.

    Returns
    -------
    A DataFrame indexed by feature name with string columns ``compartment`` (``Cells``, ``Cytoplasm``,
    ``Nuclei``, ...), ``measurement`` (the CellProfiler module: ``Intensity``, ``Texture``, ...), ``channel``
    (the dye, ``""`` when the feature names none) and ``channel_2`` (the second dye of a Correlation feature,
    else ``""``). ``Corr``/``Orig`` image prefixes are stripped (``CorrActin`` becomes ``Actin``).

    Examples
    --------
    >>> parse_feature_names(["Nuclei_Correlation_Correlation_DNA_ER"]).iloc[0].tolist()
    ['Nuclei', 'Correlation', 'DNA', 'ER']
    """
    names = list(names)
    parsed = [_parse_one(name) for name in names]
    return pd.DataFrame(
        parsed, index=pd.Index(names, name=None), columns=["compartment", "measurement", "channel", "channel_2"]
    )
