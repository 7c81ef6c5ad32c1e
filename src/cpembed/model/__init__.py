"""User-facing model classes following scvi-tools conventions (``setup_anndata``, ``train``, ``save``/``load``)."""

__all__: list[str] = []
