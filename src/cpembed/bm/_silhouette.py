"""Average silhouette width (ASW) of labels and of batches within labels, without a samples × samples matrix.

The silhouette of sample i in cluster c is ``(b - a) / max(a, b)``, where ``a`` is its mean distance to the other
members of c and ``b`` its smallest mean distance to another cluster (Rousseeuw 1987; ``sklearn.metrics.
silhouette_samples``). Both only need, for each sample, the *sum of its distances to each cluster*:

- cosine distance ``1 - u·v`` (unit vectors) sums to ``|c| - u·Σ_c v``: one product with the per-cluster sums of
  the unit vectors, ``O(n · clusters · d)``;
- Euclidean distance has no such shortcut: distances are formed block by block (samples sorted by cluster, only the
  blocks on and above the diagonal, each used for its rows and, transposed, for its columns) and summed per
  cluster, ``O(n² d)`` time but ``block_size²`` memory.

For large data the mean silhouette can be estimated from the silhouettes of ``n_samples`` wells drawn at random
without replacement, each computed exactly against all wells (``O(n_samples · n · d)``). Every silhouette lies in
[-1, 1], so by Hoeffding's inequality (which holds for sampling without replacement) the rescaled scores of
:func:`silhouette_label` and :func:`silhouette_batch` are within ``sqrt(ln(2 / δ) / (2 · n_samples))`` of the
exact ones with probability ``1 - δ``: 0.0094 at 99 % for :data:`SAMPLED_SILHOUETTES` wells (per label for the batch
silhouette, whose labels with fewer wells are computed exactly).

References
----------
Hoeffding, W. Probability inequalities for sums of bounded random variables. *Journal of the American
Statistical Association* 58, 13–30 (1963).

Rousseeuw, P. J. Silhouettes: a graphical aid to the interpretation and validation of cluster analysis.
*Journal of Computational and Applied Mathematics* 20, 53–65 (1987).

Luecken, M. D. et al. Benchmarking atlas-level data integration in single-cell genomics. *Nature Methods* 19,
41–50 (2022) (the batch and label silhouettes; scib-metrics ``metrics/_silhouette.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cpembed._validation import check_finite

from ._inputs import per_sample
from ._neighbors import Metric, _prepared_points

if TYPE_CHECKING:
    import torch

#: Side of the square blocks of the distance matrix formed at once for Euclidean silhouettes (16 MB of float32).
DEFAULT_BLOCK_SIZE = 2048
#: Wells whose silhouettes estimate a mean silhouette when it is sampled (error at most 0.0094 with 99 % probability).
SAMPLED_SILHOUETTES = 30_000


def silhouette_samples(
    X: np.ndarray, labels: np.ndarray, *, metric: Metric = "euclidean", block_size: int = DEFAULT_BLOCK_SIZE
) -> np.ndarray:
    """Silhouette coefficient of every sample (as ``sklearn.metrics.silhouette_samples``; 0 for singletons).

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features).
    labels
        Cluster of each sample; at least two distinct values.
    metric
        ``"euclidean"`` (default of scikit-learn and scib-metrics) or ``"cosine"`` (the JUMP benchmark's choice).
    block_size
        Side of the square blocks of the distance matrix formed at once (Euclidean only).

    Returns
    -------
    Array of shape (n_samples,) with values in [-1, 1]; 0 where all the distances involved are 0 (a sample whose
    cluster and nearest other cluster sit at its own point), as scikit-learn and scib-metrics score it.
    """
    X = np.asarray(X, dtype=np.float64)
    check_finite(X, "X")
    codes, sizes = _cluster_codes(labels, X.shape[0])
    return _silhouettes(X, codes, sizes, metric, block_size)


def silhouette_label(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    metric: Metric = "euclidean",
    rescale: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_samples: int | None = None,
    seed: int = 0,
) -> float:
    """Silhouette of the biological labels: mean silhouette, rescaled to ``(ASW + 1) / 2`` (scib-metrics).

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features).
    labels
        Label (e.g. MoA or compound) of each sample.
    metric
        ``"euclidean"`` (scib-metrics' default) or ``"cosine"`` (Arevalo et al. 2024, ``metrics/scib.py``).
    rescale
        Map [-1, 1] to [0, 1] (scib-metrics' default), so that higher is better.
    block_size
        Side of the square blocks of the distance matrix formed at once (Euclidean only).
    n_samples
        Average the silhouettes of this many wells drawn at random (each against all wells) when there are more
        wells; ``None`` averages them all. The error bound is given in the module's description.
    seed
        Seed of that draw.

    Returns
    -------
    The label silhouette; higher means labels are better separated.
    """
    X = np.asarray(X, dtype=np.float64)
    check_finite(X, "X")
    codes, sizes = _cluster_codes(labels, X.shape[0])
    rows = _sampled_rows(X.shape[0], n_samples, np.random.default_rng(seed))
    asw = float(np.mean(_silhouettes(X, codes, sizes, metric, block_size, rows)))
    return (asw + 1) / 2 if rescale else asw


def silhouette_batch(
    X: np.ndarray,
    labels: np.ndarray,
    batch: np.ndarray,
    *,
    metric: Metric = "euclidean",
    rescale: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_samples: int | None = None,
    seed: int = 0,
) -> float:
    """Batch silhouette within labels (scib ``silhouette_batch``): 1 is perfectly mixed batches.

    For each label seen in at least two batches (and with fewer batches than samples), the silhouette of its
    samples with respect to their batch is computed on that label's samples alone; each sample scores
    ``1 - |silhouette|``; the scores are averaged per label, then over labels (Luecken et al. 2022).

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features).
    labels
        Biological label of each sample.
    batch
        Batch of each sample.
    metric
        ``"euclidean"`` (scib-metrics' default) or ``"cosine"`` (Arevalo et al. 2024).
    rescale
        Score ``1 - |s|`` (scib's default); with ``False`` the mean of ``|s|`` is returned (lower is better).
    block_size
        Side of the square blocks of the distance matrix formed at once (Euclidean only).
    n_samples
        Within each label with more wells, average the silhouettes of this many of its wells drawn at random (each
        against all the label's wells); ``None`` averages them all.
    seed
        Seed of those draws.

    Returns
    -------
    The batch silhouette, or NaN (with no label present in two batches).
    """
    X = np.asarray(X, dtype=np.float64)
    check_finite(X, "X")
    labels = per_sample(labels, X.shape[0], "labels")
    batch = per_sample(batch, X.shape[0], "batch")
    rng = np.random.default_rng(seed)
    per_label = []
    for label in pd.unique(labels):
        mask = labels == label
        codes, sizes = _cluster_codes(batch[mask], int(mask.sum()))
        if sizes.size == 1 or sizes.size == mask.sum():
            continue
        rows = _sampled_rows(codes.size, n_samples, rng)
        scores = np.abs(_silhouettes(X[mask], codes, sizes, metric, block_size, rows))
        per_label.append(np.mean(1 - scores if rescale else scores))
    return float(np.mean(per_label)) if per_label else float("nan")


def _silhouettes(
    X: np.ndarray,
    codes: np.ndarray,
    sizes: np.ndarray,
    metric: Metric,
    block_size: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Silhouettes of the samples ``rows`` (all with ``None``) of clusters ``codes``; see :func:`silhouette_samples`."""
    if sizes.size < 2:
        raise ValueError("The silhouette needs at least two distinct labels.")
    sums = _cluster_distance_sums(X, codes, sizes, metric, block_size, rows)
    own_codes = codes if rows is None else codes[rows]
    scored = np.arange(len(own_codes))
    own = sums[scored, own_codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = own / (sizes[own_codes] - 1)
        mean_to_cluster = sums / sizes
    mean_to_cluster[scored, own_codes] = np.inf
    inter = mean_to_cluster.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        silhouettes = (inter - intra) / np.maximum(intra, inter)
    silhouettes[sizes[own_codes] == 1] = 0.0
    return np.nan_to_num(silhouettes)


def _sampled_rows(n: int, n_samples: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """``n_samples`` of ``n`` rows drawn without replacement, sorted; ``None`` (all rows) when there are not more."""
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be at least 1 or None, got {n_samples}.")
    if n_samples is None or n <= n_samples:
        return None
    return np.sort(rng.choice(n, size=n_samples, replace=False))


def _cluster_codes(labels: np.ndarray, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer cluster codes 0..C-1 and cluster sizes."""
    labels = per_sample(labels, n_samples, "labels")
    codes = pd.factorize(labels)[0]
    if (codes < 0).any():
        raise ValueError("labels has missing values.")
    return codes, np.bincount(codes).astype(np.float64)


def _cluster_distance_sums(
    X: np.ndarray, codes: np.ndarray, sizes: np.ndarray, metric: Metric, block_size: int, rows: np.ndarray | None
) -> np.ndarray:
    """Array (samples, clusters): the sum of the distances from each sample (of ``rows``) to each cluster's members."""
    import torch

    points, _ = _prepared_points(X, metric)  # a silhouette does not depend on the scale of distances
    if metric == "cosine":
        unit_sums = np.zeros((sizes.size, points.shape[1]))
        np.add.at(unit_sums, codes, points)
        scored = points if rows is None else points[rows]
        return sizes[None, :] - scored @ unit_sums.T
    if rows is not None:
        return _sampled_euclidean_sums(points, codes, sizes, block_size, rows)
    # Work in cluster order, so that each block's columns fall into contiguous runs of one cluster, and form only the
    # blocks on and above the diagonal: block (a, b) gives the sums of a's rows over b's clusters and, transposed, of
    # b's rows over a's clusters.
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    sorted_points = torch.from_numpy(points[order].astype(np.float32))
    squared = (sorted_points * sorted_points).sum(dim=1)
    n = len(codes)
    blocks = [(start, min(start + block_size, n)) for start in range(0, n, block_size)]
    runs = [_cluster_runs(sorted_codes[start:stop]) for start, stop in blocks]
    sorted_sums = np.zeros((n, sizes.size))
    for a, (a_start, a_stop) in enumerate(blocks):
        for b in range(a, len(blocks)):
            b_start, b_stop = blocks[b]
            block = torch.addmm(
                squared[None, b_start:b_stop],
                sorted_points[a_start:a_stop],
                sorted_points[b_start:b_stop].T,
                alpha=-2.0,
            )
            block.add_(squared[a_start:a_stop, None]).clamp_(min=0.0).sqrt_()
            if a == b:
                block.fill_diagonal_(0.0)
            block = block.double()
            runs_b, clusters_b = runs[b]
            sorted_sums[a_start:a_stop, clusters_b] += (block @ runs_b).numpy()
            if a != b:
                runs_a, clusters_a = runs[a]
                sorted_sums[b_start:b_stop, clusters_a] += (block.T @ runs_a).numpy()
    sums = np.empty_like(sorted_sums)
    sums[order] = sorted_sums
    return sums


def _sampled_euclidean_sums(
    points: np.ndarray, codes: np.ndarray, sizes: np.ndarray, block_size: int, rows: np.ndarray
) -> np.ndarray:
    """The Euclidean distance sums of the samples ``rows`` to each cluster, from blocks of those rows × all samples."""
    import torch

    order = np.argsort(codes, kind="stable")
    sorted_points = torch.from_numpy(points[order].astype(np.float32))
    squared = (sorted_points * sorted_points).sum(dim=1)
    column_blocks = [(start, min(start + block_size, len(codes))) for start in range(0, len(codes), block_size)]
    runs = [_cluster_runs(codes[order][start:stop]) for start, stop in column_blocks]
    position = np.empty(len(codes), dtype=np.int64)
    position[order] = np.arange(len(codes))
    sums = np.zeros((len(rows), sizes.size))
    for start in range(0, len(rows), block_size):
        stop = min(start + block_size, len(rows))
        own = position[rows[start:stop]]  # each scored row's own column, whose distance is set to 0 exactly
        scored = sorted_points[own]
        for (b_start, b_stop), (runs_b, clusters_b) in zip(column_blocks, runs, strict=True):
            block = torch.addmm(squared[None, b_start:b_stop], scored, sorted_points[b_start:b_stop].T, alpha=-2.0)
            block.add_(squared[own, None]).clamp_(min=0.0).sqrt_()
            inside = np.flatnonzero((own >= b_start) & (own < b_stop))
            block[inside, own[inside] - b_start] = 0.0
            sums[start:stop, clusters_b] += (block.double() @ runs_b).numpy()
    return sums


def _cluster_runs(sorted_codes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Indicator matrix (samples × runs, float64) of the runs of equal codes in a sorted array, and each run's code."""
    import torch

    starts = np.flatnonzero(np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]]))
    run_of_sample = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(sorted_codes))))
    indicator = torch.zeros((len(sorted_codes), len(starts)), dtype=torch.float64)
    indicator[torch.arange(len(sorted_codes)), torch.from_numpy(run_of_sample)] = 1.0
    return indicator, sorted_codes[starts]
