"""Small validators shared by every public function, so bad input fails early with a message naming the fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData


def check_obs_keys(adata: AnnData, *keys: str | None) -> None:
    """Raise a KeyError naming each requested ``.obs`` column that does not exist.

    ``None`` entries are skipped, so optional keys can be passed as they are.
    """
    missing = [key for key in keys if key is not None and key not in adata.obs.columns]
    if missing:
        available = ", ".join(map(repr, adata.obs.columns[:30]))
        raise KeyError(f"{', '.join(map(repr, missing))} not found in adata.obs. Available columns: {available}.")


def check_obs_complete(adata: AnnData, *keys: str | None, advice: str = "") -> None:
    """Raise a ValueError naming the first ``.obs`` column among ``keys`` with missing values, and how many.

    ``None`` entries are skipped, as in :func:`check_obs_keys`; ``advice`` is appended to the message.
    """
    for key in keys:
        n_missing = 0 if key is None else int(adata.obs[key].isna().sum())
        if n_missing:
            raise ValueError(f"adata.obs[{key!r}] has {n_missing} missing values.{advice}")


def check_obsm_keys(adata: AnnData, *keys: str) -> None:
    """Raise a KeyError naming each requested ``.obsm`` key that does not exist ("X" means ``adata.X``)."""
    missing = [key for key in keys if key != "X" and key not in adata.obsm]
    if missing:
        raise KeyError(
            f"{', '.join(map(repr, missing))} not found in adata.obsm (available: {list(adata.obsm)}). "
            "Compute the embedding first, e.g. with the matching cpembed.tl function."
        )


def check_layer(adata: AnnData, layer: str | None) -> None:
    """Raise a KeyError naming ``layer`` and the available layers when it does not exist (``None`` is skipped)."""
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}).")


def control_flags(adata: AnnData, control_key: str, advice: str = "") -> np.ndarray:
    """``adata.obs[control_key]`` as a boolean array (``True`` = negative control, as ``Metadata_is_negcon``).

    Raises a KeyError when the column does not exist and a TypeError when it is not boolean; ``advice`` is appended
    to the TypeError's message.
    """
    check_obs_keys(adata, control_key)
    column = adata.obs[control_key]
    if column.dtype != bool:
        raise TypeError(
            f"adata.obs[{control_key!r}] must be boolean (True for negative controls), got {column.dtype}.{advice}"
        )
    return column.to_numpy(dtype=bool)


def get_matrix(adata: AnnData, *, layer: str | None = None, obsm_key: str | None = None) -> np.ndarray:
    """Return the dense matrix a function works on: ``adata.X``, a layer, or an ``.obsm`` entry.

    This is the one place that decides between X, layers and obsm.
    """
    if layer is not None and obsm_key is not None:
        raise ValueError("Pass either `layer` or `obsm_key`, not both.")
    if layer is not None:
        check_layer(adata, layer)
        matrix = adata.layers[layer]
    elif obsm_key is not None and obsm_key != "X":
        check_obsm_keys(adata, obsm_key)
        matrix = adata.obsm[obsm_key]
    else:
        matrix = adata.X
    if matrix is None:
        raise ValueError("adata.X is empty; pass `layer=` or `obsm_key=` to choose the data to use.")
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    matrix = np.asarray(matrix)
    if not np.issubdtype(matrix.dtype, np.number):
        raise TypeError(f"Expected a numeric matrix, got dtype {matrix.dtype}.")
    return matrix


def check_finite(matrix: np.ndarray, what: str = "adata.X") -> None:
    """Raise a ValueError when ``matrix`` holds NaN or infinite values, saying how many and where to clean them."""
    finite = np.isfinite(matrix)
    if not finite.all():
        n_bad = int(finite.size - finite.sum())
        bad_columns = np.flatnonzero(~finite.all(axis=0)) if matrix.ndim == 2 else np.array([], dtype=int)
        raise ValueError(
            f"{what} contains {n_bad} NaN or infinite values (in {bad_columns.size} columns). "
            "Clean them first with cpembed.pp.drop_nonfinite."
        )


def check_groups_present(labels: Iterable, groups: Iterable, what: str) -> None:
    """Raise a ValueError when some ``groups`` (e.g. plates) have no row flagged in ``labels`` (e.g. controls)."""
    present = set(labels)
    lacking = [group for group in groups if group not in present]
    if lacking:
        shown = ", ".join(map(str, lacking[:10])) + (" ..." if len(lacking) > 10 else "")
        raise ValueError(f"{len(lacking)} {what}: {shown}.")
