"""Map the features of a study onto a reference feature set (a trained model's), by name and then by identity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._feature_names import feature_identities


@dataclass(frozen=True)
class FeatureMatch:
    """Where each reference feature is found among a study's features.

    Attributes
    ----------
    reference
        The reference feature names (a model's), in order.
    names
        The study's feature names, in order.
    columns
        For every reference feature, the position of its match in ``names``, ``-1`` where the study lacks it.
    by_identity
        How many of the matches differ in name and agree in :func:`~cpembed.io.feature_identities`.
    """

    reference: pd.Index
    names: pd.Index
    columns: np.ndarray
    by_identity: int

    @property
    def n_matched(self) -> int:
        """Reference features the study has."""
        return int((self.columns >= 0).sum())

    @property
    def shared(self) -> pd.Index:
        """Reference features the study has, under the reference's names.

        ``reference_adata[:, match.shared]`` reads a reference study through the features the two studies share.
        """
        return self.reference[self.columns >= 0]

    @property
    def missing(self) -> pd.Index:
        """Reference features the study lacks."""
        return self.reference[self.columns < 0]

    @property
    def unknown(self) -> pd.Index:
        """Study features that match no reference feature."""
        used = np.zeros(len(self.names), dtype=bool)
        used[self.columns[self.columns >= 0]] = True
        return self.names[~used]

    @property
    def is_identity(self) -> bool:
        """The study has exactly the reference features, in the reference's order."""
        return len(self.names) == len(self.reference) and bool((self.columns == np.arange(len(self.names))).all())

    def counts(self) -> dict[str, int]:
        """``{"matched", "by_identity", "missing", "unknown"}`` counts, as recorded in ``.uns``."""
        return {
            "matched": self.n_matched,
            "by_identity": self.by_identity,
            "missing": len(self.missing),
            "unknown": len(self.unknown),
        }

    def describe(self) -> str:
        """One line stating the counts."""
        return (
            f"{self.n_matched} of the {len(self.reference)} features matched ({self.by_identity} of them by identity), "
            f"{len(self.missing)} missing and masked, {len(self.unknown)} unknown and ignored"
        )


def match_features(
    reference: Iterable[str], names: Iterable[str], channel_aliases: Mapping[str, str] | None = None
) -> FeatureMatch:
    """Find the reference features (say, those a model was trained on) among a study's features.

    A study's feature is the match of a reference feature when the names are equal, else when the two have the same
    :func:`~cpembed.io.feature_identities` (the same measurement written by another pipeline), provided no other
    feature on either side has that identity: an ambiguous identity matches nothing, rather than something at random.

    Parameters
    ----------
    reference
        Reference feature names (unique), e.g. ``model.adata.var_names``.
    names
        The study's feature names (unique), e.g. ``adata.var_names``.
    channel_aliases
        Passed to :func:`~cpembed.io.feature_identities`.

    Returns
    -------
    The match: positions, counts, and the missing and unknown features.

    Examples
    --------
    >>> match = match_features(["Cells_Intensity_MeanIntensity_DNA"], ["Cells_Intensity_MeanIntensity_CorrDAPI"])
    >>> match.columns.tolist(), match.by_identity
    ([0], 1)
    """
    reference, names = pd.Index(list(reference), dtype=object), pd.Index(list(names), dtype=object)
    for index, what in ((reference, "reference"), (names, "study")):
        if not index.is_unique:
            raise ValueError(f"The {what} features repeat names, e.g. {list(index[index.duplicated()][:3])}.")
    columns = names.get_indexer(reference)
    unmatched_reference = np.flatnonzero(columns < 0)
    unmatched_names = np.setdiff1d(np.arange(len(names)), columns[columns >= 0])
    reference_ids = pd.Series(feature_identities(reference[unmatched_reference], channel_aliases), unmatched_reference)
    name_ids = pd.Series(feature_identities(names[unmatched_names], channel_aliases), unmatched_names)
    reference_ids = reference_ids[~reference_ids.duplicated(keep=False)]
    name_ids = name_ids[~name_ids.duplicated(keep=False)]
    position_of_id = pd.Series(name_ids.index, index=name_ids.to_numpy())
    found = reference_ids[reference_ids.isin(position_of_id.index)]
    columns[found.index.to_numpy()] = position_of_id.loc[found.to_numpy()].to_numpy()
    return FeatureMatch(reference, names, columns.astype(np.int64), by_identity=len(found))
