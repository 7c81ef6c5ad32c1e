"""Parse CellProfiler feature names into compartment, measurement and channel(s).

CellProfiler names features ``<Compartment>_<Measurement>_<Feature>[_<Channel>][_<scale>...]``, e.g.
``Cells_Intensity_MeanIntensity_Mito``, ``Nuclei_Correlation_Correlation_DNA_ER``,
``Cytoplasm_Texture_AngularSecondMoment_AGP_10_00``, ``Cells_RadialDistribution_FracAtD_DNA_1of4`` or
``Cells_Granularity_1_Mito``. Where the channel sits depends on the measurement module, so the position is
looked up per module; features of modules without a channel (AreaShape, Neighbors, ...) get an empty channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

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


#: Dye names of other pipelines and the Cell Painting channel each is read as by :func:`feature_identities` (matched
#: without regard to case). Cell Painting images DNA (Hoechst), ER (concanavalin A), RNA (SYTO 14), AGP (phalloidin,
#: which stains F-actin, plus wheat-germ agglutinin) and Mito (MitoTracker); a pipeline imaging a dye alone, such as
#: BBBC021's DAPI and phalloidin ("Actin"), is read as the channel that dye belongs to.
CHANNEL_ALIASES: dict[str, str] = {
    "DAPI": "DNA",
    "Hoechst": "DNA",
    "Actin": "AGP",
    "Phalloidin": "AGP",
    "WGA": "AGP",
    "ConA": "ER",
    "SYTO14": "RNA",
    "MitoTracker": "Mito",
}


def _clean_channel(token: str) -> str:
    return "" if _NUMERIC.match(token) else _IMAGE_PREFIX.sub("", token)


def _channel_indices(tokens: list[str]) -> list[int]:
    """Positions in ``tokens`` (a name split on ``"_"``) that hold a channel name, in the name's order."""
    measurement = tokens[1]
    positions = _CHANNEL_POSITIONS.get(measurement, ())
    if measurement == "Location" and _LOCATION_WITH_CHANNEL.match("_".join(tokens[1:])):
        positions = (-1,)
    indices = (position if position >= 0 else len(tokens) + position for position in positions)
    return [index for index in indices if _FIRST_CHANNEL_TOKEN <= index < len(tokens)]


def _parse_one(name: str) -> tuple[str, str, str, str]:
    tokens = name.split("_")
    if len(tokens) < 2:
        return "", "", "", ""
    channels = [_clean_channel(tokens[index]) for index in _channel_indices(tokens)] + ["", ""]
    return tokens[0], tokens[1], channels[0], channels[1]


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


def feature_identities(names: Iterable[str], channel_aliases: Mapping[str, str] | None = None) -> pd.Index:
    """What each CellProfiler feature measures, written the same way whatever pipeline named it.

    Two studies name the same measurement differently when their pipelines call the images differently
    (``Cells_Intensity_MeanIntensity_CorrDNA`` and ``Cells_Intensity_MeanIntensity_DNA``), imaged the dye under another
    name (``DAPI``) or wrote numbers differently (``Texture_Contrast_DNA_10_00`` and ``..._10_0``). The identity is the
    name with its channel tokens (found as in :func:`parse_feature_names`) stripped of ``Corr``/``Orig`` and mapped
    through ``channel_aliases``, and every number written without leading zeros. Names that do not parse keep
    themselves.

    Parameters
    ----------
    names
        Feature names.
    channel_aliases
        Channel name -> the channel it is read as, matched without regard to case; default
        :data:`CHANNEL_ALIASES`. ``{}`` keeps every channel's own name.

    Returns
    -------
    The identities, one per name, in order.

    Examples
    --------
    >>> feature_identities(["Nuclei_Texture_Contrast_CorrDAPI_10_00"]).tolist()
    ['Nuclei_Texture_Contrast_DNA_10_0']
    """
    aliases = {
        key.lower(): value for key, value in (CHANNEL_ALIASES if channel_aliases is None else channel_aliases).items()
    }
    identities = []
    for name in names:
        tokens = str(name).split("_")
        if len(tokens) >= 2:
            for index in _channel_indices(tokens):
                channel = _clean_channel(tokens[index]) or tokens[index]
                tokens[index] = aliases.get(channel.lower(), channel)
            tokens = [str(int(token)) if token.isdigit() else token for token in tokens]
        identities.append("_".join(tokens))
    return pd.Index(identities)
