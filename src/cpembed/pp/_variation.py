"""Drop features that barely vary: over all wells (repeated values) or among any plate's negative controls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cpembed._validation import check_filter_loss, check_in_memory, get_finite_matrix

from ._normalize import control_statistics
from ._utils import column_blocks, control_mask, filter_features, plate_labels

if TYPE_CHECKING:
    from anndata import AnnData


def _frequency_statistics(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the number of distinct values and (count of 2nd most common value) / (count of the most common).

    Each column is sorted once; its runs of equal values are the value counts.
    """
    columns = np.sort(np.ascontiguousarray(block.T), axis=1)
    n_rows = columns.shape[1]
    run_starts = np.ones(columns.shape, dtype=bool)
    run_starts[:, 1:] = columns[:, 1:] != columns[:, :-1]
    n_unique = run_starts.sum(axis=1)
    start_positions = np.flatnonzero(run_starts)
    counts = np.diff(np.append(start_positions, columns.size))
    column_of_run = start_positions // n_rows
    first_run = np.concatenate([[0], np.cumsum(n_unique)[:-1]])
    most = np.maximum.reduceat(counts, first_run)
    is_most = counts == most[column_of_run]
    n_most = np.add.reduceat(is_most.astype(np.int64), first_run)
    second = np.where(n_most > 1, most, np.maximum.reduceat(np.where(is_most, 0, counts), first_run))
    ratio = np.where(n_unique > 1, second / most, 0.0)
    return n_unique, ratio


def check_variation_cuts(freq_cut: float, unique_cut: float) -> None:
    """Raise a ValueError unless both thresholds of :func:`variation_mask` lie in [0, 1]."""
    for name, value in (("freq_cut", freq_cut), ("unique_cut", unique_cut)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value} must lie in [0, 1].")


def variation_failures(matrix: np.ndarray, *, freq_cut: float = 0.05, unique_cut: float = 0.01) -> np.ndarray:
    """Which features fail each of pycytominer's two frequency rules: 2 × features, the ``freq_cut`` rule first.

    See :func:`variation_mask` for the rules and parameters.
    """
    check_variation_cuts(freq_cut, unique_cut)
    failing = np.empty((2, matrix.shape[1]), dtype=bool)
    for columns in column_blocks(matrix.shape, "variation filter"):
        n_unique, ratio = _frequency_statistics(matrix[:, columns])
        failing[:, columns] = ratio < freq_cut, n_unique / matrix.shape[0] < unique_cut
    return failing


def variation_mask(matrix: np.ndarray, *, freq_cut: float = 0.05, unique_cut: float = 0.01) -> np.ndarray:
    """Boolean mask of the features that pass pycytominer's frequency rule.

    A feature fails when (count of its second most common value) / (count of its most common value) is below
    ``freq_cut`` (0 for a constant feature), or when (number of distinct values) / (number of wells) is below
    ``unique_cut``.

    Parameters
    ----------
    matrix
        Wells × features, finite.
    freq_cut, unique_cut
        Thresholds, both in [0, 1].

    Returns
    -------
    ``True`` for the features to keep.
    """
    return ~variation_failures(matrix, freq_cut=freq_cut, unique_cut=unique_cut).any(axis=0)


def variation_filter(
    adata: AnnData, *, freq_cut: float = 0.05, unique_cut: float = 0.01, copy: bool = False
) -> AnnData | None:
    """Drop features with few distinct values or one dominating value.

    The rule and defaults are pycytominer's: ``frequency_threshold`` in pycytominer 1.7 (called
    ``variance_threshold`` in the releases the JUMP batch-correction benchmark used). A feature is dropped when
    (count of its 2nd most common value) / (count of its most common value) < ``freq_cut`` or when (number of
    distinct values) / (number of wells) < ``unique_cut``.

    Parameters
    ----------
    adata
        Wells × features; ``adata.X`` is read and must be finite.
    freq_cut
        Lowest accepted ratio of the two largest value counts (pycytominer default 0.05).
    unique_cut
        Lowest accepted fraction of distinct values (pycytominer default 0.01).
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the filtered AnnData, else ``None``: ``adata`` is subset to the kept features in place.
    Records ``params`` and ``dropped_features`` in ``adata.uns["cpembed_pp"]["variation_filter"]``.

    Raises
    ------
    ValueError
        When no feature would be kept, or one rule alone would drop more features than are kept.

    References
    ----------
    Serrano, E. et al. Reproducible image-based profiling with Pycytominer. *Nature Methods* (2025),
    doi:10.1038/s41592-025-02611-8.
    """
    check_in_memory(adata, copy=copy)
    failing = variation_failures(get_finite_matrix(adata), freq_cut=freq_cut, unique_cut=unique_cut)
    check_variation_loss(failing, freq_cut, unique_cut)
    keep = ~failing.any(axis=0)
    return filter_features(adata, keep, "variation_filter", {"freq_cut": freq_cut, "unique_cut": unique_cut}, copy=copy)


def check_variation_loss(failing: np.ndarray, freq_cut: float, unique_cut: float) -> None:
    """Refuse what :func:`variation_filter` refuses; ``failing`` is rules × features, the ``freq_cut`` rule first."""
    check_filter_loss(
        failing,
        [f"freq_cut={freq_cut}", f"unique_cut={unique_cut}"],
        group="rule",
        items="features",
        step="variation_filter",
        advice="Lower that threshold, or check that adata.X holds varying values in enough wells.",
    )


def check_min_coef_var(min_coef_var: float) -> None:
    """Raise a ValueError unless the threshold of :func:`control_variation_mask` is a finite number >= 0."""
    if not 0 <= min_coef_var < np.inf:
        raise ValueError(f"min_coef_var={min_coef_var} must be a finite number >= 0.")


def control_variation_failures(
    matrix: np.ndarray, plates: np.ndarray, controls: np.ndarray, *, min_coef_var: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """The plates (sorted) and, plates × features, where a plate's controls vary too little for the feature.

    See :func:`control_variation_mask` for the rule and parameters.
    """
    check_min_coef_var(min_coef_var)
    plate_names, median, mad = control_statistics(matrix, plates, controls, method="mad_robustize")
    with np.errstate(divide="ignore", invalid="ignore"):
        coef_var = np.abs(mad / median)
    coef_var[~np.isfinite(coef_var)] = 0
    return plate_names, (mad == 0) | (coef_var <= min_coef_var)


def control_variation_mask(
    matrix: np.ndarray, plates: np.ndarray, controls: np.ndarray, *, min_coef_var: float = 1e-3
) -> np.ndarray:
    """Boolean mask of the features that vary among the negative controls of every plate.

    A feature fails when, on any plate, the median absolute deviation (MAD, not scaled) of its control values is
    0 or ``|MAD / median|`` is at most ``min_coef_var`` (a zero median counts as failing).

    Parameters
    ----------
    matrix
        Wells × features, finite.
    plates
        Plate label of every well.
    controls
        Boolean mask of the negative-control wells; every plate needs at least one.
    min_coef_var
        Threshold on ``|MAD / median|``, >= 0.

    Returns
    -------
    ``True`` for the features to keep.
    """
    _, failing = control_variation_failures(matrix, plates, controls, min_coef_var=min_coef_var)
    return ~failing.any(axis=0)


def control_variation_filter(
    adata: AnnData,
    plate_key: str,
    control_key: str,
    *,
    control_value: Any = None,
    min_coef_var: float = 1e-3,
    copy: bool = False,
) -> AnnData | None:
    """Drop features that do not vary among the negative controls of some plate.

    The JUMP batch-correction benchmark (Arevalo et al. 2024) keeps a feature only when, on every plate, its
    negative controls have a non-zero median absolute deviation (MAD) and ``|MAD / median| > 1e-3``; otherwise
    :func:`~cpembed.pp.normalize_to_controls` would divide by (nearly) zero. The MAD here is not scaled by
    1.4826, as in the benchmark.

    Parameters
    ----------
    adata
        Wells × features; ``adata.X`` is read and must be finite.
    plate_key
        ``adata.obs`` column naming the plate of each well.
    control_key
        ``adata.obs`` column marking the negative controls (boolean, or with ``control_value``).
    control_value
        The ``control_key`` value of negative controls, e.g. ``"DMSO"``.
    min_coef_var
        Threshold on the controls' ``|MAD / median|`` (benchmark default 1e-3).
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the filtered AnnData, else ``None``: ``adata`` is subset to the kept features in place.
    Records ``params`` and ``dropped_features`` in ``adata.uns["cpembed_pp"]["control_variation_filter"]``.

    Raises
    ------
    ValueError
        When a plate has no negative-control well, when no feature would be kept, or when one plate alone would drop
        more features than are kept (a plate with a single control well, or with identical controls): the message
        names the plates and their number of control wells.

    References
    ----------
    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling.
    *Nature Communications* 15, 6516 (2024).
    """
    check_in_memory(adata, copy=copy)
    plates, controls = plate_labels(adata, plate_key), control_mask(adata, control_key, control_value)
    plate_names, failing = control_variation_failures(
        get_finite_matrix(adata), plates, controls, min_coef_var=min_coef_var
    )
    check_control_variation_loss(failing, plate_names, plates[controls], min_coef_var)
    keep = ~failing.any(axis=0)
    params = {"plate_key": plate_key, "control_key": control_key, "control_value": control_value}
    return filter_features(adata, keep, "control_variation_filter", {**params, "min_coef_var": min_coef_var}, copy=copy)


def check_control_variation_loss(
    failing: np.ndarray, plate_names: np.ndarray, control_plates: np.ndarray, min_coef_var: float
) -> None:
    """Refuse what :func:`control_variation_filter` refuses.

    ``failing`` is plates × features, the plates named by ``plate_names``; ``control_plates`` holds the plate of
    every control well.
    """
    n_controls = np.unique(control_plates, return_counts=True)[1]  # every plate has one, as checked before
    check_filter_loss(
        failing,
        plate_names,
        group="plate",
        items="features",
        step="control_variation_filter",
        advice="Every plate needs at least 2 negative-control wells whose values differ: fix that plate's controls, "
        f"drop the plate, name coarser groups with `plate_key` (e.g. the batch), or lower min_coef_var={min_coef_var}.",
        notes=[f" ({count} control well{'s' if count > 1 else ''})" for count in n_controls],
    )
