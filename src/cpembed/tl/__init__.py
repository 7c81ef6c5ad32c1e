"""Embeddings written to ``.obsm``: batch-correction baselines, CellPainTR and CWA-MSN."""

__all__: list[str] = []
