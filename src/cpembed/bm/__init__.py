"""Benchmark metrics of Cell Painting batch correction (CellPainTR Table 1, JUMP benchmark, CWA-MSN probes)."""

from ._map import MAPResult, average_precision, benjamini_hochberg, map_control, map_no_rep, null_average_precision
from ._moa import MoAAccuracy, moa_accuracy
from ._probes import KnownRelationshipRecall, known_relationship_recall, plate_prediction_probe

__all__: list[str] = [
    "KnownRelationshipRecall",
    "MAPResult",
    "MoAAccuracy",
    "average_precision",
    "benjamini_hochberg",
    "known_relationship_recall",
    "map_control",
    "map_no_rep",
    "moa_accuracy",
    "null_average_precision",
    "plate_prediction_probe",
]
