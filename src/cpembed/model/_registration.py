"""What both models add to scvi-tools' registry handling: quiet registration and a working setup view."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from scvi.model.base import BaseModelClass

if TYPE_CHECKING:
    from anndata import AnnData
    from scvi.data import AnnDataManager


def register_fields(adata_manager: AnnDataManager, adata: AnnData, **kwargs) -> None:
    """Register ``adata`` with ``adata_manager``, without scvi-tools' "fewer than 3 cells" warning.

    That warning is meant for cell types of single-cell data. Here the categories are wells' compounds, wells,
    plates and images; a compound screened in one or two wells is ordinary, and what each model needs of its
    categories it checks itself.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Category .* has fewer than 3 cells", category=UserWarning)
        adata_manager.register_fields(adata, **kwargs)


class RegisteredModel(BaseModelClass):
    """:class:`scvi.model.base.BaseModelClass` with the fixes both cpembed models share."""

    def view_anndata_setup(self, adata: AnnData | None = None, hide_state_registries: bool = False) -> None:
        """Print the registration of ``adata`` (default: the training data)."""
        import rich.pretty  # noqa: F401  scvi-tools 1.4.2 uses rich.pretty without importing it (fails with rich 15)

        super().view_anndata_setup(adata=adata, hide_state_registries=hide_state_registries)
