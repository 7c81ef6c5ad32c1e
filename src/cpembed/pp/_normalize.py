"""Per-plate normalisation of every well against the negative-control wells of its plate."""

from __future__ import annotations

import warnings
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cpembed._validation import check_groups_present, check_in_memory, get_finite_matrix

from ._utils import column_scale, control_mask, float_dtype, plate_labels, write_transform

if TYPE_CHECKING:
    from anndata import AnnData

NormalizationMethod = Literal["mad_robustize", "standardize"]

MAD_TO_SD = 1.4826
"""Scale making the median absolute deviation a consistent estimator of a normal standard deviation
(1 / Φ⁻¹(3/4)); pycytominer's ``RobustMAD`` uses the same constant."""


def _rows_per_plate(codes: np.ndarray, n_plates: int) -> list[np.ndarray]:
    """Row indices of each plate code 0 … n_plates - 1, found with one sort instead of a scan per plate."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_plates + 1))
    return [order[start:stop] for start, stop in pairwise(bounds)]


def _location_and_spread(block: np.ndarray, method: NormalizationMethod) -> tuple[np.ndarray, np.ndarray]:
    block = block.astype(np.float64)
    if method == "mad_robustize":
        median = np.median(block, axis=0)
        return median, np.median(np.abs(block - median), axis=0)
    scale = column_scale(block)  # so that squares of huge values do not overflow
    scaled = block / scale
    mean, variance = scaled.mean(axis=0), scaled.var(axis=0)
    # scikit-learn's bound on the rounding error of a variance: below it, a feature counts as constant (spread 0).
    eps = np.finfo(np.float64).eps
    n = block.shape[0]
    constant = variance <= n * eps * variance + (n * mean * eps) ** 2
    return mean * scale, np.where(constant, 0.0, np.sqrt(variance) * scale)


def control_statistics(
    matrix: np.ndarray, plates: np.ndarray, controls: np.ndarray, *, method: NormalizationMethod = "mad_robustize"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Location and spread of every feature over each plate's negative-control wells.

    Parameters
    ----------
    matrix
        Wells × features, finite.
    plates
        Plate label of every well.
    controls
        Boolean mask of the negative-control wells.
    method
        ``"mad_robustize"``: median and median absolute deviation (not scaled); ``"standardize"``: mean and
        population standard deviation (``ddof=0``; 0 where scikit-learn's ``StandardScaler`` deems the feature
        constant).

    Returns
    -------
    ``plate_names`` (sorted), ``location`` and ``spread`` (plates × features, float64).
    """
    plates = np.asarray(plates)
    controls = np.asarray(controls, dtype=bool)
    if plates.shape != (matrix.shape[0],) or controls.shape != (matrix.shape[0],):
        raise ValueError(f"`plates` and `controls` need one entry per well ({matrix.shape[0]}).")
    plate_names, codes = np.unique(plates, return_inverse=True)
    check_groups_present(
        plates[controls], plate_names, "plates have no negative-control well to normalise against (drop or fix them)"
    )
    control_rows = np.flatnonzero(controls)
    per_plate = _rows_per_plate(codes[control_rows], plate_names.size)
    location = np.empty((plate_names.size, matrix.shape[1]))
    spread = np.empty_like(location)
    for code, rows in enumerate(per_plate):
        location[code], spread[code] = _location_and_spread(matrix[control_rows[rows]], method)
    return plate_names, location, spread


def normalize_to_controls_array(
    matrix: np.ndarray,
    plates: np.ndarray,
    controls: np.ndarray,
    *,
    method: NormalizationMethod = "mad_robustize",
    epsilon: float = 1e-18,
) -> np.ndarray:
    """Normalise each well against the negative controls of its plate.

    ``"mad_robustize"``: ``(x - median_ctrl) / (1.4826 · MAD_ctrl + epsilon)``; ``"standardize"``:
    ``(x - mean_ctrl) / sd_ctrl`` with a zero deviation replaced by 1, as scikit-learn's ``StandardScaler``.
    Statistics are computed in float64; the result has the input's float dtype.

    Parameters
    ----------
    matrix
        Wells × features, finite.
    plates
        Plate label of every well.
    controls
        Boolean mask of the negative-control wells; every plate needs at least one.
    method
        ``"mad_robustize"`` or ``"standardize"``.
    epsilon
        Added to the scaled MAD before dividing (``"mad_robustize"`` only).

    Returns
    -------
    The normalised matrix.
    """
    if method not in ("mad_robustize", "standardize"):
        raise ValueError(f"method={method!r} is not one of 'mad_robustize', 'standardize'.")
    plates = np.asarray(plates)
    plate_names, location, spread = control_statistics(matrix, plates, controls, method=method)
    if method == "mad_robustize":
        _warn_zero_spread(spread, plate_names)
        scale = MAD_TO_SD * spread + epsilon
    else:
        scale = np.where(spread == 0, 1.0, spread)
    codes = np.searchsorted(plate_names, plates)
    normalized = np.empty(matrix.shape, dtype=float_dtype(matrix))
    with np.errstate(over="ignore"):  # values beyond the dtype's range: write_transform refuses them with a message
        for code, rows in enumerate(_rows_per_plate(codes, plate_names.size)):
            normalized[rows] = (matrix[rows] - location[code]) / scale[code]
    return normalized


def _warn_zero_spread(spread: np.ndarray, plate_names: np.ndarray) -> None:
    zero = spread == 0
    if zero.any():
        plates = plate_names[zero.any(axis=1)]
        warnings.warn(
            f"{int(zero.any(axis=0).sum())} features have zero MAD among the controls of {plates.size} plates "
            f"(e.g. {', '.join(map(str, plates[:5]))}); their values explode. Remove them first with "
            "cpembed.pp.control_variation_filter.",
            RuntimeWarning,
            stacklevel=3,
        )


def normalize_to_controls(
    adata: AnnData,
    plate_key: str,
    control_key: str,
    *,
    control_value: Any = None,
    method: NormalizationMethod = "mad_robustize",
    epsilon: float = 1e-18,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Normalise every well against the negative-control wells of its own plate.

    With ``method="mad_robustize"`` (the default, as in the JUMP Cell Painting pipelines) each feature becomes
    ``(x - median_ctrl) / (1.4826 · MAD_ctrl + epsilon)`` where the median and median absolute deviation are
    those of the plate's negative controls; this equals pycytominer's
    ``normalize(method="mad_robustize", samples=<controls>)`` applied to each plate separately. With
    ``"standardize"`` the controls' mean and population standard deviation are used instead.

    Parameters
    ----------
    adata
        Wells × features, finite (clean with :func:`~cpembed.pp.drop_nonfinite` first).
    plate_key
        ``adata.obs`` column naming the plate of each well.
    control_key
        ``adata.obs`` column marking the negative controls: boolean (``True`` = control, as
        ``Metadata_is_negcon``), or any column together with ``control_value``.
    control_value
        The ``control_key`` value of negative controls, e.g. ``"DMSO"`` for ``control_key="Metadata_Compound"``.
    method
        ``"mad_robustize"`` or ``"standardize"``.
    epsilon
        Added to the scaled MAD before dividing; 1e-18 is pycytominer's ``mad_robustize_epsilon`` default.
    layer
        Normalise ``adata.layers[layer]`` (and write it back there) instead of ``adata.X``.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the normalised AnnData, else ``None``. Overwrites ``adata.X`` (or ``adata.layers[layer]``)
    with the normalised values (float32 input stays float32) and records ``params`` in
    ``adata.uns["cpembed_pp"]["normalize_to_controls"]``.

    Raises
    ------
    ValueError
        A plate has no negative-control well (the message names the plates), or the matrix holds NaN/inf.

    References
    ----------
    Serrano, E. et al. Reproducible image-based profiling with Pycytominer. *Nature Methods* (2025),
    doi:10.1038/s41592-025-02611-8.

    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling.
    *Nature Communications* 15, 6516 (2024).
    """
    check_in_memory(adata, copy=copy)
    matrix = get_finite_matrix(adata, layer=layer)
    normalized = normalize_to_controls_array(
        matrix,
        plate_labels(adata, plate_key),
        control_mask(adata, control_key, control_value),
        method=method,
        epsilon=epsilon,
    )
    params = {
        "plate_key": plate_key,
        "control_key": control_key,
        "control_value": control_value,
        "method": method,
        "epsilon": epsilon,
        "layer": layer,
    }
    return write_transform(adata, normalized, "normalize_to_controls", params, layer=layer, copy=copy)
