"""Benchmark metrics of Cell Painting batch correction (CellPainTR Table 1, JUMP benchmark, CWA-MSN probes)."""

from ._aggregate import CELLPAINTR_SCORES, JUMP_SCORES, ScoreTable
from ._benchmark import METRIC_COLUMNS, SCORE_COLUMNS, benchmark
from ._classifier import batch_classifier, bio_information, classifier_f1
from ._graph_connectivity import graph_connectivity
from ._kbet import kbet, kbet_per_label
from ._leiden import LeidenScores, leiden_nmi_ari
from ._lisi import clisi, ilisi, lisi
from ._map import (
    MAPResult,
    UndefinedMAPError,
    average_precision,
    benjamini_hochberg,
    map_control,
    map_no_rep,
    null_average_precision,
)
from ._moa import MoAAccuracy, moa_accuracy
from ._neighbors import NeighborsResult, nearest_neighbors
from ._probes import KnownRelationshipRecall, known_relationship_recall, plate_prediction_probe
from ._silhouette import silhouette_batch, silhouette_label, silhouette_samples
from ._split import LeakFreeSplit, leak_free_split

__all__ = [
    "CELLPAINTR_SCORES",
    "JUMP_SCORES",
    "METRIC_COLUMNS",
    "SCORE_COLUMNS",
    "KnownRelationshipRecall",
    "LeakFreeSplit",
    "LeidenScores",
    "MAPResult",
    "MoAAccuracy",
    "NeighborsResult",
    "ScoreTable",
    "UndefinedMAPError",
    "average_precision",
    "batch_classifier",
    "benchmark",
    "benjamini_hochberg",
    "bio_information",
    "classifier_f1",
    "clisi",
    "graph_connectivity",
    "ilisi",
    "kbet",
    "kbet_per_label",
    "known_relationship_recall",
    "leak_free_split",
    "leiden_nmi_ari",
    "lisi",
    "map_control",
    "map_no_rep",
    "moa_accuracy",
    "nearest_neighbors",
    "null_average_precision",
    "plate_prediction_probe",
    "silhouette_batch",
    "silhouette_label",
    "silhouette_samples",
]
