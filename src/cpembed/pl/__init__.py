"""Plots: UMAP grids, benchmark tables and training curves."""

from ._benchmark_table import benchmark_table
from ._training_history import training_history
from ._umap import umap

__all__ = ["benchmark_table", "training_history", "umap"]
