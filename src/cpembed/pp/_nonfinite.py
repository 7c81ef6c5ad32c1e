"""Remove or fill NaN and infinite values, which every later step refuses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from cpembed._validation import check_filter_loss, check_in_memory, get_matrix

from ._utils import float_dtype, record, subset_features, subset_wells, target

if TYPE_CHECKING:
    from anndata import AnnData

NonfiniteHandling = Literal["features", "wells", "impute_median", "impute_zero"]

_DROP_ADVICE = {
    "features": "Drop those wells first (how='wells' drops every well with a NaN or infinite value) or impute their "
    "values (how='impute_median').",
    "wells": "Drop those features first (how='features') or impute their values (how='impute_median').",
}
"""What to do when dropping by feature (by well) would empty the data because of a few wells (features)."""


def impute_nonfinite(matrix: np.ndarray, *, fill: Literal["median", "zero"] = "median") -> np.ndarray:
    """Return a float copy of ``matrix`` whose NaN and infinite values are replaced per feature.

    Parameters
    ----------
    matrix
        Wells × features.
    fill
        ``"median"``: the median of the feature's finite values; ``"zero"``: 0.

    Returns
    -------
    The filled matrix, in the input's float dtype (float64 for integer input).
    """
    filled = matrix.astype(float_dtype(matrix), copy=True)
    nonfinite = ~np.isfinite(filled)
    if not nonfinite.any():
        return filled
    if fill == "zero":
        filled[nonfinite] = 0
        return filled
    empty = nonfinite.all(axis=0)
    if empty.any():
        raise ValueError(
            f"{int(empty.sum())} features have no finite value, so no median to impute; drop them with how='features'."
        )
    filled[nonfinite] = np.nan
    medians = np.nanmedian(filled, axis=0)
    rows, columns = np.nonzero(nonfinite)
    filled[rows, columns] = medians[columns]
    return filled


def drop_nonfinite(adata: AnnData, *, how: NonfiniteHandling = "features", copy: bool = False) -> AnnData | None:
    """Drop the features or wells holding NaN or infinite values, or impute those values.

    The JUMP batch-correction benchmark (Arevalo et al. 2024) drops every feature with a NaN or infinite value
    before anything else; this is the default.

    Parameters
    ----------
    adata
        Wells × features; ``adata.X`` is read.
    how
        ``"features"``: drop every feature with a non-finite value; ``"wells"``: drop every well with one;
        ``"impute_median"``: replace each by its feature's median over the finite values; ``"impute_zero"``:
        replace each by 0.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the cleaned AnnData, else ``None``. Dropping subsets ``adata`` in place (all of ``obs``,
    ``var``, layers and embeddings follow); imputing writes ``adata.X``. Records ``params`` and
    ``dropped_features`` / ``dropped_wells`` / ``n_imputed`` in ``adata.uns["cpembed_pp"]["drop_nonfinite"]``.

    Raises
    ------
    ValueError
        When dropping would keep no feature (well), or when a single well (feature) would by itself drop more
        features (wells) than are kept, as a well of NaN does: the message names it and the option that handles it.

    References
    ----------
    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling.
    *Nature Communications* 15, 6516 (2024).
    """
    if how not in ("features", "wells", "impute_median", "impute_zero"):
        raise ValueError(f"how={how!r} is not one of 'features', 'wells', 'impute_median', 'impute_zero'.")
    check_in_memory(adata, copy=copy)
    matrix = get_matrix(adata)
    finite = np.isfinite(matrix)
    if how in _DROP_ADVICE:
        blamed, dropped = ("well", "features") if how == "features" else ("feature", "wells")
        failing, names = (~finite, adata.obs_names) if how == "features" else (~finite.T, adata.var_names)
        check_filter_loss(failing, names, group=blamed, items=dropped, step="drop_nonfinite", advice=_DROP_ADVICE[how])
    adata = target(adata, copy=copy)
    results = {}
    if how == "features":
        keep = finite.all(axis=0)
        results["dropped_features"] = adata.var_names[~keep].to_numpy(dtype=str)
        subset_features(adata, keep)
    elif how == "wells":
        keep = finite.all(axis=1)
        results["dropped_wells"] = adata.obs_names[~keep].to_numpy(dtype=str)
        subset_wells(adata, keep)
    else:
        adata.X = impute_nonfinite(matrix, fill="median" if how == "impute_median" else "zero")
        results["n_imputed"] = int(finite.size - finite.sum())
    record(adata, "drop_nonfinite", {"how": how}, **results)
    return adata if copy else None
