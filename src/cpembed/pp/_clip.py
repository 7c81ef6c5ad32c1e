"""Clip extreme values to quantiles of each feature (or of all values)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cpembed._validation import check_in_memory, get_finite_matrix

from ._utils import column_blocks, float_dtype, write_transform

if TYPE_CHECKING:
    from anndata import AnnData


def check_quantile_levels(lower: float, upper: float) -> None:
    """Raise a ValueError unless ``0 <= lower <= upper <= 1``."""
    if not 0 <= lower <= upper <= 1:
        raise ValueError(f"Quantiles must satisfy 0 <= lower <= upper <= 1, got lower={lower}, upper={upper}.")


def quantile_bounds(
    matrix: np.ndarray, *, lower: float = 0.01, upper: float = 0.99, per_feature: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The ``lower`` and ``upper`` quantiles (linear interpolation, as numpy's and pandas' default).

    Returns
    -------
    Two arrays with one bound per feature, or of shape ``()`` with ``per_feature=False`` (quantiles of all values).
    """
    check_quantile_levels(lower, upper)
    if not per_feature:
        low, high = np.quantile(matrix, [lower, upper])
        return np.asarray(low), np.asarray(high)
    bounds = np.empty((2, matrix.shape[1]))
    for columns in column_blocks(matrix.shape, "quantiles"):
        bounds[:, columns] = np.quantile(np.ascontiguousarray(matrix[:, columns].T), [lower, upper], axis=1)
    return bounds[0], bounds[1]


def clip_quantiles_array(
    matrix: np.ndarray, *, lower: float = 0.01, upper: float = 0.99, per_feature: bool = True
) -> np.ndarray:
    """Return ``matrix`` with values below the ``lower`` / above the ``upper`` quantile set to that quantile.

    Parameters
    ----------
    matrix
        Wells × features, finite.
    lower, upper
        Quantile levels in [0, 1].
    per_feature
        Quantiles of each feature (``True``) or of all values together.

    Returns
    -------
    The clipped matrix, in the input's float dtype (float64 for integer input).
    """
    low, high = quantile_bounds(matrix, lower=lower, upper=upper, per_feature=per_feature)
    dtype = float_dtype(matrix)
    return np.clip(matrix.astype(dtype, copy=False), low.astype(dtype), high.astype(dtype))


def clip_quantiles(
    adata: AnnData,
    *,
    lower: float = 0.01,
    upper: float = 0.99,
    per_feature: bool = True,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Clip every feature to its ``lower`` and ``upper`` quantiles over all wells.

    Bounds outliers that survive normalisation (a feature of a few wells with a near-zero control MAD can reach
    values in the thousands); Arevalo et al. (2024) compare clipping with dropping and imputing such outliers.
    The 1 % / 99 % defaults are a common winsorising choice, not a benchmark setting.

    Parameters
    ----------
    adata
        Wells × features, finite.
    lower, upper
        Quantile levels in [0, 1].
    per_feature
        Quantiles of each feature (``True``) or of all values together.
    layer
        Clip ``adata.layers[layer]`` (and write it back there) instead of ``adata.X``.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the clipped AnnData, else ``None``. Overwrites ``adata.X`` (or ``adata.layers[layer]``) and
    records ``params`` in ``adata.uns["cpembed_pp"]["clip_quantiles"]``.

    References
    ----------
    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling.
    *Nature Communications* 15, 6516 (2024).
    """
    check_in_memory(adata, copy=copy)
    clipped = clip_quantiles_array(
        get_finite_matrix(adata, layer=layer), lower=lower, upper=upper, per_feature=per_feature
    )
    params = {"lower": lower, "upper": upper, "per_feature": per_feature, "layer": layer}
    return write_transform(adata, clipped, "clip_quantiles", params, layer=layer, copy=copy)
