"""Group features by imaging channel and cell compartment (used for channel-wise masking)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cpembed._validation import check_in_memory
from cpembed.io import parse_feature_names

from ._utils import record, target

if TYPE_CHECKING:
    from anndata import AnnData

_PARTS = ["compartment", "channel", "channel_2"]
NO_COMPARTMENT = "Other"
"""Group of features whose name is not a CellProfiler feature name (no compartment can be read from it)."""


def feature_group_labels(parts: pd.DataFrame) -> np.ndarray:
    """Group label of each feature from its compartment and channel(s).

    ``"<Channel>-<Compartment>"`` (``"DNA-Nuclei"``); a feature naming two dyes (Correlation) gets the pair in
    alphabetical order (``"DNA_ER-Nuclei"``, whatever the order in its name); a feature naming no dye (AreaShape,
    Neighbors, ...) gets its compartment alone (``"Cells"``); a feature without a compartment gets ``"Other"``.

    Parameters
    ----------
    parts
        Columns ``compartment``, ``channel`` and ``channel_2``, as from :func:`~cpembed.io.parse_feature_names`.

    Returns
    -------
    One label per row of ``parts``.
    """
    labels = []
    # object first: categorical columns (as .h5ad files store them) accept no new fill value
    for compartment, *channels in parts[_PARTS].astype(object).fillna("").astype(str).itertuples(index=False):
        dyes = "_".join(sorted(channel for channel in channels if channel))
        compartment = compartment or NO_COMPARTMENT
        labels.append(f"{dyes}-{compartment}" if dyes else compartment)
    return np.asarray(labels, dtype=str)


def feature_groups(adata: AnnData, *, key_added: str = "feature_group", copy: bool = False) -> AnnData | None:
    """Label every feature with its channel × compartment group.

    The groups let a model mask or attend to the features of one dye in one compartment at a time, as
    CellPainTR's channel-wise masking does. Compartment and channels are read from ``adata.var`` columns
    ``compartment``, ``channel`` and ``channel_2`` when all three exist, else parsed from the feature names with
    :func:`~cpembed.io.parse_feature_names`. See :func:`feature_group_labels` for the labels.

    Parameters
    ----------
    adata
        Wells × features with CellProfiler feature names.
    key_added
        ``adata.var`` column to write.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the labelled AnnData, else ``None``. Writes ``adata.var[key_added]``: a categorical whose
    categories are the sorted group labels, so category codes are stable ids. Records ``params`` in
    ``adata.uns["cpembed_pp"]["feature_groups"]``.

    Examples
    --------
    >>> import cpembed as cpe
    >>> adata = cpe.datasets.bbbc021()
    >>> cpe.pp.feature_groups(adata)
    >>> adata.var.loc["Nuclei_Intensity_MeanIntensity_CorrDAPI", "feature_group"]
    'DAPI-Nuclei'
    """
    check_in_memory(adata, copy=copy)
    has_parts = all(column in adata.var.columns for column in _PARTS)
    parts = adata.var if has_parts else parse_feature_names(adata.var_names)
    labels = feature_group_labels(parts)
    adata = target(adata, copy=copy)
    adata.var[key_added] = pd.Categorical(labels, categories=np.unique(labels))
    record(adata, "feature_groups", {"key_added": key_added})
    return adata if copy else None
