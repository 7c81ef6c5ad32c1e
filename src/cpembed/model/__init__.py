"""User-facing model classes following scvi-tools conventions (``setup_anndata``, ``train``, ``save``/``load``)."""

from ._cwamsn import CWAMSN

__all__ = ["CWAMSN"]
