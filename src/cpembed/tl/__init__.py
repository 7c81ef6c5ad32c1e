"""Embeddings written to ``.obsm``: batch-correction baselines, CellPainTR and CWA-MSN."""

from ._cellpaintr import cellpaintr, train_cellpaintr
from ._combat import combat
from ._cwamsn import cwamsn
from ._handcrafted import handcrafted_features
from ._harmony import harmony
from ._segmentation import segment_cells
from ._sphering import sphering

__all__ = [
    "cellpaintr",
    "combat",
    "cwamsn",
    "handcrafted_features",
    "harmony",
    "segment_cells",
    "sphering",
    "train_cellpaintr",
]
