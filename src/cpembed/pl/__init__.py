"""Plots: UMAP grids, benchmark tables and training curves."""

__all__: list[str] = []
