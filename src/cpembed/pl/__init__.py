"""Plots: UMAP grids, benchmark tables and training curves."""

from ._benchmark_table import benchmark_table
from ._umap import umap

__all__ = ["benchmark_table", "umap"]
