"""User-facing model classes following scvi-tools conventions (``setup_anndata``, ``train``, ``save``/``load``)."""

from ._cellpaintr import CellPainTR
from ._cwamsn import CWAMSN
from ._training_plan import ANCHORED_STAGES, CONTRASTIVE_STAGES, PAPER_STAGES, PRESET_STAGES, StageConfig

__all__ = [
    "ANCHORED_STAGES",
    "CONTRASTIVE_STAGES",
    "CWAMSN",
    "PAPER_STAGES",
    "PRESET_STAGES",
    "CellPainTR",
    "StageConfig",
]
