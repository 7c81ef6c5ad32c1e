"""What every preprocessing step shares: choosing the AnnData to change, writing results, recording parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from cpembed._compat import replace_contents, subset_obs_inplace, subset_var_inplace
from cpembed._validation import (
    check_obs_complete,
    check_obs_keys,
    check_result_finite,
    control_flags,
    matrix_name,
)

if TYPE_CHECKING:
    from anndata import AnnData

UNS_KEY = "cpembed_pp"
"""``adata.uns`` entry holding one record per preprocessing step, keyed by the step's function name."""


def target(adata: AnnData, *, copy: bool) -> AnnData:
    """Return the AnnData a step changes: an in-memory copy, or ``adata`` itself (made actual if it is a view).

    A backed ``adata`` is copied to memory (steps refuse it with ``copy=False`` first, with
    :func:`~cpembed._validation.check_in_memory`).
    """
    if copy:
        return adata.to_memory() if adata.isbacked else adata.copy()
    if adata.is_view:
        replace_contents(adata, adata.copy())
    return adata


def float_dtype(matrix: np.ndarray) -> np.dtype:
    """The dtype a transform writes: the input's float dtype (float32 stays float32), float64 otherwise."""
    return matrix.dtype if np.issubdtype(matrix.dtype, np.floating) else np.dtype(np.float64)


def column_scale(matrix: np.ndarray) -> np.ndarray:
    """Per column, the power of two at or above its largest absolute value (1 for a column of zeros), float64.

    Dividing by it is exact, and brings every value into [-1, 1], where sums of squares cannot overflow even
    for values near float64's limit; scale-free statistics (correlations, z-scores) are unchanged.
    """
    largest = np.maximum(matrix.max(axis=0, initial=0), -matrix.min(axis=0, initial=0)).astype(np.float64)
    return np.exp2(np.ceil(np.log2(np.where(largest > 0, largest, 1.0))))


def write_matrix(adata: AnnData, values: np.ndarray, *, layer: str | None) -> None:
    """Write a transform's result where it was read from: ``adata.X``, or ``adata.layers[layer]``."""
    if layer is None:
        adata.X = values
    else:
        adata.layers[layer] = values


def _take_columns(matrix: Any, index: np.ndarray) -> Any:
    return matrix.take(index, axis=1) if isinstance(matrix, np.ndarray) else matrix[:, index]


def subset_features(adata: AnnData, keep: np.ndarray) -> None:
    """Keep the features flagged in the boolean mask ``keep``, in place.

    Dense ``X`` and layers are subset with ``ndarray.take``, several times faster than anndata's fancy indexing;
    the rest (``var``, ``varm``, ``varp``) is subset by anndata.
    """
    if keep.all():
        return
    index = np.flatnonzero(keep)
    matrix, layers = adata.X, dict(adata.layers)
    adata.X = None
    for key in layers:
        del adata.layers[key]
    subset_var_inplace(adata, index)
    adata.X = None if matrix is None else _take_columns(matrix, index)
    for key, layer in layers.items():
        adata.layers[key] = _take_columns(layer, index)


def subset_wells(adata: AnnData, keep: np.ndarray) -> None:
    """Keep the wells flagged in the boolean mask ``keep``, in place."""
    if not keep.all():
        subset_obs_inplace(adata, np.flatnonzero(keep))


def record(adata: AnnData, step: str, params: dict[str, Any], **results: Any) -> None:
    """Store a step's parameters and results in ``adata.uns["cpembed_pp"][step]``.

    ``None`` values are left out, so the record can be written to ``.h5ad``.
    """
    entry: dict[str, Any] = {"params": {key: value for key, value in params.items() if value is not None}}
    entry.update({key: value for key, value in results.items() if value is not None})
    adata.uns.setdefault(UNS_KEY, {})[step] = entry


def filter_features(
    adata: AnnData, keep: np.ndarray, step: str, params: dict[str, Any], *, copy: bool
) -> AnnData | None:
    """Finish a feature filter: subset (a copy of) ``adata`` to ``keep`` and record ``params`` and the dropped names.

    Returns the filtered copy with ``copy=True``, else ``None`` (``adata`` is subset in place).
    """
    adata = target(adata, copy=copy)
    dropped = adata.var_names[~keep].to_numpy(dtype=str)
    subset_features(adata, keep)
    record(adata, step, params, dropped_features=dropped)
    return adata if copy else None


def write_transform(
    adata: AnnData, values: np.ndarray, step: str, params: dict[str, Any], *, layer: str | None, copy: bool
) -> AnnData | None:
    """Finish a transform: write ``values`` to (a copy of) ``adata`` where they were read from and record ``params``.

    Returns the transformed copy with ``copy=True``, else ``None`` (``adata`` is changed in place). Refuses values
    that overflowed to NaN or infinity, before changing anything.
    """
    check_result_finite(values, f"{step}'s result for {matrix_name(layer=layer)}")
    adata = target(adata, copy=copy)
    write_matrix(adata, values, layer=layer)
    record(adata, step, params)
    return adata if copy else None


def control_mask(adata: AnnData, control_key: str, control_value: Any = None) -> np.ndarray:
    """Boolean mask of the negative-control wells.

    Without ``control_value``, ``adata.obs[control_key]`` must be a boolean column (``True`` = control, as
    ``Metadata_is_negcon``); with it, the wells whose ``control_key`` equals ``control_value`` are controls
    (``control_key="Metadata_Compound", control_value="DMSO"``).
    """
    if control_value is None:
        return control_flags(adata, control_key, " Or name the control label with `control_value=` (e.g. 'DMSO').")
    check_obs_keys(adata, control_key)
    mask = (adata.obs[control_key] == control_value).to_numpy(dtype=bool)
    if not mask.any():
        raise ValueError(f"No well has adata.obs[{control_key!r}] == {control_value!r}: no negative controls.")
    return mask


def column_blocks(shape: tuple[int, int], description: str, *, elements: int = 2**22) -> Iterable[slice]:
    """Slices of about ``elements`` matrix entries each, over the columns, shown with a progress bar when many."""
    n_rows, n_columns = shape
    width = max(1, elements // max(n_rows, 1))
    blocks = [slice(start, min(start + width, n_columns)) for start in range(0, n_columns, width)]
    return tqdm(blocks, desc=description, unit="block", leave=False, disable=len(blocks) < 8)


def plate_labels(adata: AnnData, plate_key: str) -> np.ndarray:
    """The plate of every well, as strings, from ``adata.obs[plate_key]`` (which must have no missing value)."""
    check_obs_keys(adata, plate_key)
    check_obs_complete(adata, plate_key, advice=" Fill them first.")
    return adata.obs[plate_key].astype(str).to_numpy()
