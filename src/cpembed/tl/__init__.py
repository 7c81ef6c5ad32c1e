"""Embeddings written to ``.obsm``: batch-correction baselines, CellPainTR and CWA-MSN."""

from ._combat import combat
from ._harmony import harmony
from ._sphering import sphering

__all__ = ["combat", "harmony", "sphering"]
