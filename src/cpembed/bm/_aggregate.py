"""Aggregate scores: which metrics make up the batch and bio scores of each published benchmark, and their weights.

Two tables are offered:

- :data:`CELLPAINTR_SCORES` (CellPainTR paper, Table 1 and appendix C.2.5): batch = mean of graph connectivity,
  batch silhouette and the two batch classifiers; bio = mean of Leiden NMI and ARI, label silhouette, the two mAPs
  and the two bio-information classifiers; overall = (batch + bio) / 2.
- :data:`JUMP_SCORES` (Arevalo et al. 2024, repository ``carpenter-singh-lab/2023_Arevalo_NatComm_BatchCorrection``):
  batch = mean of graph connectivity, batch silhouette, kBET and iLISI; bio = mean of Leiden NMI and ARI, label
  silhouette, cLISI and the two mean mAPs; total = 0.4 batch + 0.6 bio (the scIB weighting, ``plot/data.py``
  ``pivot_scores``). The set is the one their results tables average (``metrics/__init__.py`` ``DIMENSION_MAP``
  minus the ``metrics_redlist`` of ``rules/plots.smk``): PCR and isolated-label scores and the mAP *fractions
  retrieved* are left out of the average there, so the fractions are reported beside it but not averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ScoreTable:
    """Weighted mean of a batch-metric group and a bio-metric group.

    Attributes
    ----------
    batch_metrics
        Columns averaged into the batch score.
    bio_metrics
        Columns averaged into the bio score.
    batch_weight
        Weight of the batch score in the total (the bio score gets ``1 - batch_weight``).
    total_column
        Column the total is written to.
    batch_column, bio_column
        Columns the group means are written to; ``None`` leaves them out.
    """

    batch_metrics: tuple[str, ...]
    bio_metrics: tuple[str, ...]
    batch_weight: float
    total_column: str
    batch_column: str | None = None
    bio_column: str | None = None

    def score(self, results: pd.DataFrame) -> pd.DataFrame:
        """Return the aggregate columns for each row of ``results``; NaN where a constituent metric is missing."""
        batch = _group_mean(results, self.batch_metrics)
        bio = _group_mean(results, self.bio_metrics)
        columns = {self.batch_column: batch, self.bio_column: bio}
        columns = {name: values for name, values in columns.items() if name is not None}
        columns[self.total_column] = self.batch_weight * batch + (1 - self.batch_weight) * bio
        return pd.DataFrame(columns, index=results.index)


def _group_mean(results: pd.DataFrame, metrics: tuple[str, ...]) -> pd.Series:
    """Row means of ``metrics``; NaN where one is absent or NaN, so a partial group is never passed off as whole."""
    present = results.reindex(columns=list(metrics)).astype(np.float64)
    return present.mean(axis=1, skipna=False)


#: The CellPainTR paper's Table 1 aggregates: Batch and Bio are plain means, Overall = (Batch + Bio) / 2.
CELLPAINTR_SCORES = ScoreTable(
    batch_metrics=("graph_connectivity", "silhouette_batch", "batch_classifier_control", "batch_classifier_no_control"),
    bio_metrics=(
        "leiden_nmi",
        "leiden_ari",
        "silhouette_label",
        "map_control",
        "map_no_rep",
        "bio_info_control",
        "bio_info_no_control",
    ),
    batch_weight=0.5,
    total_column="overall_score",
    batch_column="batch_score",
    bio_column="bio_score",
)

#: The JUMP batch-correction benchmark's aggregates (Arevalo et al. 2024): Total = 0.4 Batch + 0.6 Bio.
JUMP_SCORES = ScoreTable(
    batch_metrics=("graph_connectivity", "silhouette_batch", "kbet", "ilisi"),
    bio_metrics=("leiden_nmi", "leiden_ari", "silhouette_label", "clisi", "map_control", "map_no_rep"),
    batch_weight=0.4,
    total_column="total_score",
)
