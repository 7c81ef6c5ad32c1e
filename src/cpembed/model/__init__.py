"""User-facing model classes following scvi-tools conventions (``setup_anndata``, ``train``, ``save``/``load``)."""

from ._cellpaintr import CellPainTR
from ._cwamsn import CWAMSN
from ._training_plan import DEFAULT_STAGES, StageConfig

__all__ = ["CWAMSN", "DEFAULT_STAGES", "CellPainTR", "StageConfig"]
