"""Aggregate image- or cell-level rows to wells, then normalise wells on the negative controls.

Normalisations: ``"center_scale"`` subtracts the control mean and divides by the control standard deviation per
plate; ``"tvn"`` is Typical Variation Normalisation (Ando et al. 2017): PCA-whitening fitted on the control wells,
per batch, as used for image embeddings by CWA-MSN and OpenPhenom (Kraus et al. 2024).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._validation import check_groups_present, check_obs_keys, check_result_finite, get_finite_matrix
from ._utils import column_scale

if TYPE_CHECKING:
    from anndata import AnnData

# Added to variances before dividing, so constant control features stay finite (pycytominer's Spherize default).
DEFAULT_EPS = 1e-6


def aggregate_rows(matrix: np.ndarray, groups: np.ndarray, method: Literal["mean", "median"] = "mean"):
    """Mean or median of the rows of each group, groups in order of first appearance.

    Returns
    -------
    ``(group labels, aggregated matrix)``.
    """
    if method not in {"mean", "median"}:
        raise ValueError(f"method must be 'mean' or 'median', got {method!r}.")
    codes, labels = pd.factorize(np.asarray(groups))
    frame = pd.DataFrame(np.asarray(matrix, dtype=np.float64))
    aggregated = getattr(frame.groupby(codes, sort=True), method)().to_numpy()
    return np.asarray(labels), aggregated


def center_scale_to_controls(
    matrix: np.ndarray, plates: np.ndarray, is_control: np.ndarray, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """Per plate: subtract the control mean and divide by the control standard deviation (ddof 1) plus ``eps``."""
    out = np.empty_like(matrix, dtype=np.float64)
    for plate in pd.unique(plates):
        rows = plates == plate
        controls = matrix[rows & is_control]
        scale = column_scale(controls)  # so that squares of huge values do not overflow
        deviation = (controls / scale).std(axis=0, ddof=1) * scale
        out[rows] = (matrix[rows] - controls.mean(axis=0)) / (deviation + eps)
    return out


def typical_variation_normalize(
    matrix: np.ndarray, batches: np.ndarray, is_control: np.ndarray, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """Typical Variation Normalisation: per batch, PCA-whiten every row with the controls' mean and covariance.

    ``x -> (x - mean_c) V diag(1 / sqrt(lambda + eps))`` where ``V, lambda`` are the eigenvectors and eigenvalues of
    the control covariance (ddof 1, as ``sklearn.decomposition.PCA(whiten=True)``), components by decreasing
    variance. Controls become centred with identity covariance.
    """
    out = np.empty_like(matrix, dtype=np.float64)
    for batch in pd.unique(batches):
        rows = batches == batch
        controls = matrix[rows & is_control]
        mean = controls.mean(axis=0)
        covariance = np.cov(controls - mean, rowvar=False, ddof=1).reshape(matrix.shape[1], matrix.shape[1])
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        whitening = eigenvectors[:, order] / np.sqrt(np.clip(eigenvalues[order], 0.0, None) + eps)
        out[rows] = (matrix[rows] - mean) @ whitening
    return out


def _group_obs(obs: pd.DataFrame, codes: np.ndarray) -> pd.DataFrame:
    """Columns that are constant within every group, one row per group (its first value)."""
    grouped = obs.groupby(codes, sort=True, observed=True)
    n_unique = grouped.nunique(dropna=False)
    constant = [column for column in obs.columns if (n_unique[column] <= 1).all()]
    return grouped.first().loc[:, constant].reset_index(drop=True)


def aggregate(
    adata: AnnData,
    by: str,
    *,
    obsm_key: str | None = None,
    layer: str | None = None,
    method: Literal["mean", "median"] = "mean",
    normalize: Literal["center_scale", "tvn"] | None = None,
    control_key: str | None = None,
    plate_key: str | None = None,
    batch_key: str | None = None,
    eps: float = DEFAULT_EPS,
) -> AnnData:
    """Aggregate rows (images, tiles, cells) to one row per ``by`` group (usually the well), then normalise.

    Parameters
    ----------
    adata
        Row-level AnnData.
    by
        obs column to group by (a plate-unique well identifier).
    obsm_key, layer
        Aggregate ``obsm[obsm_key]`` (e.g. ``"X_cwamsn"``) or a layer instead of ``X``.
    method
        ``"mean"`` (CWA-MSN, OpenPhenom) or ``"median"`` (CellProfiler profiling habit).
    normalize
        None, ``"center_scale"`` (per ``plate_key``) or ``"tvn"`` (per ``batch_key``, or all wells together).
    control_key
        Boolean obs column marking negative-control rows; required to normalise.
    plate_key, batch_key
        obs columns for the per-plate and per-batch normalisations.
    eps
        Added to control variances (default 1e-6, as pycytominer's sphering).

    Returns
    -------
    New AnnData with one row per group: ``X`` (float32) the aggregated (and normalised) values, ``obs`` the columns
    constant within groups plus ``n_rows`` (rows aggregated), ``uns["aggregate"]["params"]``. ``adata`` is not
    changed.

    Raises
    ------
    ValueError
        When the input holds NaN or infinite values, or when a result overflows (float32 holds values up to about
        3.4e38), besides the errors for missing columns and too few controls.
    """
    import anndata as ad

    check_obs_keys(adata, by, control_key, plate_key, batch_key)
    matrix = get_finite_matrix(adata, layer=layer, obsm_key=obsm_key)
    labels, values = aggregate_rows(matrix, adata.obs[by].to_numpy(), method)
    codes, _ = pd.factorize(adata.obs[by].to_numpy())
    obs = _group_obs(adata.obs, codes)
    obs["n_rows"] = np.bincount(codes)
    obs.index = labels.astype(str)
    if normalize is not None:
        values = _normalize(values, obs, normalize, control_key, plate_key, batch_key, eps)
    with np.errstate(over="ignore"):  # refused with a message just below
        values = values.astype(np.float32)
    check_result_finite(values, "aggregate's result")
    out = ad.AnnData(X=values, obs=obs)
    out.uns["aggregate"] = {
        "params": {"by": by, "obsm_key": obsm_key, "layer": layer, "method": method, "normalize": normalize}
    }
    return out


def _normalize(values, obs, normalize, control_key, plate_key, batch_key, eps) -> np.ndarray:
    if control_key is None:
        raise ValueError("Normalising needs `control_key`, a boolean obs column marking negative controls.")
    if control_key not in obs:
        raise ValueError(f"obs[{control_key!r}] differs within some groups; controls must be marked per group.")
    is_control = obs[control_key].to_numpy().astype(bool)
    if normalize == "center_scale":
        if plate_key is None or plate_key not in obs:
            raise ValueError("normalize='center_scale' needs `plate_key`, constant within each group.")
        groups = obs[plate_key].to_numpy()
    elif normalize == "tvn":
        groups = obs[batch_key].to_numpy() if batch_key is not None else np.zeros(len(obs), dtype=int)
    else:
        raise ValueError(f"normalize must be None, 'center_scale' or 'tvn', got {normalize!r}.")
    counts = pd.Series(is_control).groupby(groups).sum()
    check_groups_present(counts.index[counts >= 2], pd.unique(groups), "groups have fewer than 2 control wells")
    if normalize == "center_scale":
        return center_scale_to_controls(values, groups, is_control, eps)
    return typical_variation_normalize(values, groups, is_control, eps)
