"""PyTorch building blocks of the models. Importable with torch alone (no anndata, no scvi-tools)."""

__all__: list[str] = []
