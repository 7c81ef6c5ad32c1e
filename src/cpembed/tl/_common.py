"""What every ``cpembed.tl`` function does around its maths: check the batch labels, store the result, log it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cpembed._validation import check_obs_keys, check_result_finite

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def check_batch_labels(adata: AnnData, batch_key: str) -> None:
    """Raise when ``obs[batch_key]`` is missing or has missing labels, naming the column and how many."""
    check_obs_keys(adata, batch_key)
    n_missing = int(adata.obs[batch_key].isna().sum())
    if n_missing:
        raise ValueError(f"adata.obs[{batch_key!r}] has {n_missing} missing batch labels; label or drop those rows.")


def check_several_batches(adata: AnnData, batch_key: str) -> None:
    """Raise when ``obs[batch_key]`` is missing, has missing labels, or holds a single batch (nothing to correct)."""
    check_batch_labels(adata, batch_key)
    labels = adata.obs[batch_key]
    if labels.nunique() < 2:
        raise ValueError(
            f"adata.obs[{batch_key!r}] holds a single batch ({labels.iloc[0]!r}): there is nothing to correct."
        )


def store_embedding(
    adata: AnnData,
    embedding: np.ndarray,
    key_added: str,
    params: dict[str, Any],
    *,
    copy: bool,
    extra_obsm: Mapping[str, np.ndarray] | None = None,
    extra_uns: Mapping[str, Any] | None = None,
) -> AnnData | None:
    """Write ``embedding`` to ``.obsm[key_added]`` and ``params`` to ``.uns[key_added]["params"]``, and log them.

    Every ``cpembed.tl`` function stores its result here. ``extra_obsm`` (key -> array) are written to ``.obsm``
    beside the embedding (such as CellPainTR's per-stage embeddings) and ``extra_uns`` into ``.uns[key_added]``
    beside ``params`` (such as feature names). With ``copy=True`` the result goes to a copy of ``adata``, which is
    returned; otherwise ``adata`` is changed in place (only those entries) and ``None`` is returned, as scanpy's
    ``tl`` functions do. An embedding with NaN or infinite values (an overflow) is refused before anything is
    written.
    """
    embeddings = {key_added: embedding, **(extra_obsm or {})}
    for key, values in embeddings.items():
        check_result_finite(values, f"adata.obsm[{key!r}]")
    target = adata.copy() if copy else adata
    target.obsm.update(embeddings)
    target.uns[key_added] = {**(extra_uns or {}), "params": params}
    logger.info(
        "added .obsm[%s] (%d dimensions) and .uns[%r]",
        "], .obsm[".join(map(repr, embeddings)),
        embedding.shape[1],
        key_added,
    )
    return target if copy else None
