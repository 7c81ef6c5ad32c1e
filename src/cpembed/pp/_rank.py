"""Rank-based inverse normal transformation (INT) of every feature, ties sharing their average rank."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtri

from cpembed._validation import check_in_memory, get_finite_matrix

from ._utils import column_blocks, float_dtype, write_transform

if TYPE_CHECKING:
    from anndata import AnnData


def _sorted_rank_codes(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of ``columns`` (features × wells); return the order and ``2 · (average rank - 1)`` per position.

    A tie run covering sorted positions ``first … last`` has average rank ``(first + last) / 2 + 1``, so the code
    ``first + last`` is an exact integer, usable as an index into a table of precomputed values.
    """
    order = np.argsort(columns, axis=1)
    ordered = np.take_along_axis(columns, order, axis=1)
    n_wells = ordered.shape[1]
    positions = np.broadcast_to(np.arange(n_wells), ordered.shape)
    run_starts = np.ones(ordered.shape, dtype=bool)
    run_starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    if run_starts.all():
        return order, 2 * positions
    run_ends = np.ones_like(run_starts)
    run_ends[:, :-1] = run_starts[:, 1:]
    first = np.maximum.accumulate(np.where(run_starts, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(run_ends, positions, n_wells)[:, ::-1], axis=1)[:, ::-1]
    return order, first + last


def _unsort(order: np.ndarray, ordered_values: np.ndarray) -> np.ndarray:
    values = np.empty(ordered_values.shape, dtype=ordered_values.dtype)
    np.put_along_axis(values, order, ordered_values, axis=1)
    return values


def average_ranks(matrix: np.ndarray) -> np.ndarray:
    """Rank every column of ``matrix`` from 1, ties getting their average rank (``scipy.stats.rankdata``'s default)."""
    ranks = np.empty(matrix.shape)
    for columns in column_blocks(matrix.shape, "ranking"):
        order, codes = _sorted_rank_codes(np.ascontiguousarray(matrix[:, columns].T))
        ranks[:, columns] = _unsort(order, codes / 2 + 1).T
    return ranks


def blom_scores(n: int, c: float = 3 / 8) -> np.ndarray:
    """Normal scores ``Φ⁻¹((r - c) / (n - 2c + 1))`` for the ranks ``r = 1, 1.5, 2, …, n`` (index ``2r - 2``)."""
    ranks = np.arange(2 * n - 1) / 2 + 1
    return ndtri((ranks - c) / (n - 2 * c + 1))


def rank_inverse_normal_array(matrix: np.ndarray, *, c: float = 3 / 8) -> np.ndarray:
    """Rank-based inverse normal transformation of every column.

    Each value becomes ``Φ⁻¹((r - c) / (n - 2c + 1))`` with ``r`` its rank within its column (ties get their average
    rank) and ``n`` the number of rows. The scores of all possible (half-integer) ranks are computed once, so each
    column costs one sort.

    Parameters
    ----------
    matrix
        Wells × features, finite.
    c
        Offset of the plotting positions: 3/8 is Blom's (1958), 1/2 Rankit's, 0 Van der Waerden's.

    Returns
    -------
    The transformed matrix, in the input's float dtype (float64 for integer input).
    """
    if not 0 <= c < 1:
        raise ValueError(f"c={c} must lie in [0, 1).")
    scores = blom_scores(matrix.shape[0], c)
    transformed = np.empty(matrix.shape, dtype=float_dtype(matrix))
    for columns in column_blocks(matrix.shape, "inverse normal transform"):
        order, codes = _sorted_rank_codes(np.ascontiguousarray(matrix[:, columns].T))
        transformed[:, columns] = _unsort(order, scores[codes]).T
    return transformed


def rank_inverse_normal(
    adata: AnnData, *, c: float = 3 / 8, layer: str | None = None, copy: bool = False
) -> AnnData | None:
    """Rank-based inverse normal transformation (INT) of every feature over all wells.

    Each value becomes ``Φ⁻¹((rank - c) / (n - 2c + 1))``: Blom's (1958) normal scores for the default
    ``c = 3/8``, the transformation the JUMP batch-correction benchmark (Arevalo et al. 2024) applies after
    per-plate MAD normalisation. Tied values get their average rank (``scipy.stats.rankdata(method="average")``),
    so they keep one shared value; the benchmark instead breaks ties at random (seed 0). Both agree wherever a
    feature has no ties.

    Parameters
    ----------
    adata
        Wells × features, finite (clean with :func:`~cpembed.pp.drop_nonfinite` first).
    c
        Offset of the plotting positions (3/8: Blom's, as the benchmark).
    layer
        Transform ``adata.layers[layer]`` (and write it back there) instead of ``adata.X``.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the transformed AnnData, else ``None``. Overwrites ``adata.X`` (or
    ``adata.layers[layer]``) and records ``params`` in ``adata.uns["cpembed_pp"]["rank_inverse_normal"]``.

    References
    ----------
    Blom, G. *Statistical Estimates and Transformed Beta-Variables*. Wiley (1958).

    Beasley, T. M., Erickson, S. & Allison, D. B. Rank-based inverse normal transformations are increasingly used,
    but are they merited? *Behavior Genetics* 39, 580–595 (2009).

    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling.
    *Nature Communications* 15, 6516 (2024).
    """
    check_in_memory(adata, copy=copy)
    transformed = rank_inverse_normal_array(get_finite_matrix(adata, layer=layer), c=c)
    return write_transform(adata, transformed, "rank_inverse_normal", {"c": c, "layer": layer}, layer=layer, copy=copy)
