"""Harmony batch correction of a PCA embedding (Korsunsky et al. 2019), through harmonypy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from cpembed._validation import get_finite_matrix

from ._common import check_several_batches, store_embedding


def harmony(
    adata: AnnData,
    batch_key: str,
    *,
    basis: str = "X_pca",
    key_added: str = "X_harmony",
    random_state: int = 0,
    copy: bool = False,
    **harmony_kwargs: Any,
) -> AnnData | None:
    """Integrate batches in an embedding with Harmony.

    Harmony alternates soft k-means clustering, penalised towards clusters that mix batches, with a linear
    correction of each batch's offset within every cluster (Korsunsky et al. 2019). The computation is
    :func:`harmonypy.run_harmony`.

    Parameters
    ----------
    adata
        Profiles with the embedding to correct in ``.obsm[basis]``.
    batch_key
        ``.obs`` column with the batch of each well (e.g. ``"Metadata_Batch"``).
    basis
        The ``.obsm`` embedding to correct. Harmony works on a PCA embedding: this function does not compute one
        (so that ``adata`` gains no entry it did not ask for); run :func:`scanpy.pp.pca` first.
    key_added
        The corrected embedding goes to ``.obsm[key_added]``, the parameters to ``.uns[key_added]["params"]``.
    random_state
        Seed of Harmony's k-means initialisation; the result is reproducible for a given seed.
    copy
        Return a corrected copy instead of writing to ``adata``.
    harmony_kwargs
        Passed on to :func:`harmonypy.run_harmony` (``theta``, ``sigma``, ``nclust``, ``max_iter_harmony``, ...);
        harmonypy's defaults (``theta=2``, ``sigma=0.1``, ``nclust=min(n_wells / 30, 100)``) follow the R package.
        ``verbose=True`` logs harmonypy's progress per iteration (off by default).

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    - ``.obsm[key_added]``: the corrected embedding, wells × dimensions of ``basis``, float32;
    - ``.uns[key_added]["params"]``: ``batch_key``, ``basis``, ``random_state`` and the ``harmony_kwargs``.

    Raises
    ------
    KeyError
        When ``batch_key`` is not an ``.obs`` column or ``basis`` not an ``.obsm`` key.
    ValueError
        When the embedding holds NaN or inf, when there is a single batch, or when the number of clusters is not
        between 1 and the number of wells (Harmony's default gives 0 clusters below 16 wells).

    References
    ----------
    Korsunsky, I., Millard, N., Fan, J., Slowikowski, K., Zhang, F., Wei, K., Baglaenko, Y., Brenner, M., Loh, P. &
    Raychaudhuri, S. Fast, sensitive and accurate integration of single-cell data with Harmony.
    *Nature Methods* 16, 1289–1296 (2019).
    """
    check_several_batches(adata, batch_key)
    if basis not in adata.obsm:
        raise KeyError(
            f"{basis!r} not found in adata.obsm (available: {list(adata.obsm)}). Harmony corrects an embedding: "
            "run sc.pp.pca(adata) first, or pass `basis=`."
        )
    embedding = get_finite_matrix(adata, obsm_key=basis)
    _check_clusters(adata.n_obs, harmony_kwargs.get("nclust"))
    corrected = harmony_array(embedding, adata.obs[batch_key], random_state=random_state, **harmony_kwargs)
    params = {"batch_key": batch_key, "basis": basis, "random_state": random_state, **harmony_kwargs}
    return store_embedding(adata, corrected, key_added, params, copy=copy)


def _check_clusters(n_wells: int, nclust: int | None) -> None:
    """Raise unless Harmony gets between 1 and ``n_wells`` clusters (its default is ``round(n_wells / 30)``)."""
    if nclust is None and round(n_wells / 30) < 1:
        raise ValueError(
            f"Harmony's default number of clusters, round(n_wells / 30), is 0 for {n_wells} wells: use at least 16 "
            "wells, or pass `nclust=` (e.g. nclust=1, which corrects each batch's mean offset)."
        )
    if nclust is not None and not 1 <= nclust <= n_wells:
        raise ValueError(f"nclust={nclust} must lie between 1 and the number of wells ({n_wells}).")


def harmony_array(
    embedding: np.ndarray, batches: pd.Series, *, random_state: int = 0, **harmony_kwargs: Any
) -> np.ndarray:
    """Run Harmony on a wells × dimensions embedding, one batch label per row; returns wells × dimensions, float32."""
    import harmonypy

    batch_frame = pd.DataFrame({"batch": np.asarray(batches.astype(str))})
    result = harmonypy.run_harmony(
        np.asarray(embedding, dtype=np.float64),
        batch_frame,
        "batch",
        random_state=random_state,
        **{"verbose": False, **harmony_kwargs},
    )
    return np.asarray(result.Z_corr, dtype=np.float32)  # harmonypy >= 2 returns wells × dimensions
