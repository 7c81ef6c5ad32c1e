"""ComBat batch correction (Johnson et al. 2007) of profiles, through scanpy's implementation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from cpembed._validation import check_obs_keys, get_finite_matrix

from ._common import check_several_batches, store_embedding


def combat(
    adata: AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    covariate_keys: Sequence[str] | None = None,
    key_added: str = "X_combat",
    copy: bool = False,
) -> AnnData | None:
    """Remove additive and multiplicative batch effects from every feature with ComBat.

    ComBat fits, per feature, a location and scale shift for each batch with an empirical Bayes prior shared
    across features, and removes them (Johnson et al. 2007). The computation is :func:`scanpy.pp.combat`, run on
    a temporary AnnData so that ``adata.X`` is left as it is.

    Parameters
    ----------
    adata
        Profiles, one row per well, already normalised (e.g. with :func:`cpembed.pp.normalize_to_controls`).
    batch_key
        ``.obs`` column with the batch of each well (e.g. ``"Metadata_Batch"`` or ``"Metadata_Plate"``).
    layer
        Correct this layer instead of ``X``.
    covariate_keys
        ``.obs`` columns of biological covariates whose effects ComBat preserves (e.g. ``"Metadata_moa"``). They
        must not be confounded with the batch. Numeric columns enter the model as they are; categorical and
        boolean ones as indicators of every level but the first (R's treatment coding).
    key_added
        The corrected profiles go to ``.obsm[key_added]``, the parameters to ``.uns[key_added]["params"]``.
    copy
        Return a corrected copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    - ``.obsm[key_added]``: the corrected profiles, wells × features, float32;
    - ``.uns[key_added]["params"]``: ``batch_key``, ``layer`` and ``covariate_keys``.

    Raises
    ------
    KeyError
        When ``batch_key`` or a covariate is not an ``.obs`` column.
    ValueError
        When the data hold NaN or inf, when there is a single batch or a batch of one well (its variance is
        undefined and scanpy would return NaN everywhere), when a covariate has missing values, or when the covariates
        are constant or confounded with the batch.

    References
    ----------
    Johnson, W. E., Li, C. & Rabinovic, A. Adjusting batch effects in microarray expression data using empirical
    Bayes methods. *Biostatistics* 8, 118–127 (2007).
    """
    covariate_keys = list(covariate_keys or [])
    check_obs_keys(adata, *covariate_keys)
    check_several_batches(adata, batch_key)
    _check_batch_sizes(adata.obs[batch_key], batch_key)
    matrix = get_finite_matrix(adata, layer=layer)
    corrected = combat_array(matrix, adata.obs[[batch_key, *covariate_keys]], batch_key, covariate_keys)
    params = {"batch_key": batch_key, "layer": layer, "covariate_keys": covariate_keys}
    return store_embedding(adata, corrected, key_added, params, copy=copy)


def _check_batch_sizes(batches: pd.Series, batch_key: str) -> None:
    sizes = batches.value_counts()
    lonely = sizes.index[sizes == 1].tolist()
    if lonely:
        raise ValueError(
            f"ComBat needs at least two wells per batch; adata.obs[{batch_key!r}] has single-well batches: "
            f"{', '.join(map(repr, lonely[:10]))}. Merge or drop them."
        )


def combat_array(
    matrix: np.ndarray, design: pd.DataFrame, batch_key: str, covariate_keys: Sequence[str] = ()
) -> np.ndarray:
    """Run ComBat on a wells × features matrix; ``design`` holds the batch and covariate columns of each row.

    Returns the corrected matrix as float32.
    """
    import scanpy as sc

    _check_not_confounded(design[batch_key], design[list(covariate_keys)], batch_key)
    covariates = _encode_covariates(design[list(covariate_keys)])
    obs = pd.concat([design[[batch_key]], covariates], axis=1).set_axis(design.index.astype(str))
    temporary = AnnData(X=np.asarray(matrix, dtype=np.float64), obs=obs)
    corrected = sc.pp.combat(temporary, batch_key, covariates=list(covariates.columns) or None, inplace=False)
    return corrected.astype(np.float32)


def _check_not_confounded(batches: pd.Series, covariates: pd.DataFrame, batch_key: str) -> None:
    """Raise when the covariates are constant or confounded with the batch, which makes ComBat's design singular.

    ComBat regresses every feature on the batch indicators and the covariates together; a covariate that the batch
    determines (each of its levels within a single batch, or equal to the batch) or that is constant has no effect
    of its own to estimate. Each covariate is tested against the batches, then all of them together.
    """
    indicators = pd.get_dummies(batches.astype(str), dtype=np.float64).to_numpy()
    groups = [[key] for key in covariates.columns] + ([list(covariates.columns)] if covariates.shape[1] > 1 else [])
    for keys in groups:
        design = np.hstack([indicators, _encode_covariates(covariates[keys]).to_numpy()])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValueError(
                f"covariate_keys {keys} are constant or confounded with adata.obs[{batch_key!r}]: the batch determines "
                "their values, so ComBat cannot separate their effect from the batch effect. Drop them from "
                "covariate_keys, or use covariates that vary within batches."
            )


def _encode_covariates(covariates: pd.DataFrame) -> pd.DataFrame:
    """Numeric covariates as they are; categorical (and boolean) ones as indicator columns without the first level.

    Dropping the first level is R's treatment coding, as in ``model.matrix(~ condition)`` given to ``sva::ComBat``.
    scanpy codes categorical covariates with one column per level, which together are collinear with the batch
    indicators and make its design matrix singular (scverse/scanpy#1606); numeric indicators avoid that.
    """
    missing = [name for name in covariates.columns if covariates[name].isna().any()]
    if missing:
        raise ValueError(f"Covariates with missing values: {', '.join(map(repr, missing))}; fill or drop those rows.")
    columns = []
    for name in covariates.columns:
        column = covariates[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            columns.append(column.astype(np.float64))
        else:
            levels = column.astype(str)
            columns.append(pd.get_dummies(levels, prefix=name, prefix_sep="=", drop_first=True, dtype=np.float64))
    return pd.concat(columns, axis=1) if columns else pd.DataFrame(index=covariates.index)
