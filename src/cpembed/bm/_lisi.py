"""Local inverse Simpson's index (LISI) of batches (iLISI) and of labels (cLISI) in kNN neighbourhoods.

Each sample weighs its neighbours with a Gaussian kernel whose width is set, by bisection, so that the entropy of
the weights equals ``log(perplexity)``; LISI is the inverse Simpson's index of the weighted batch (or label)
composition: the effective number of batches (labels) around the sample.

References
----------
Korsunsky, I. et al. Fast, sensitive and accurate integration of single-cell data with Harmony. *Nature Methods*
16, 1289–1296 (2019).

Luecken, M. D. et al. Benchmarking atlas-level data integration in single-cell genomics. *Nature Methods* 19,
41–50 (2022) (the scaled iLISI and cLISI; scib-metrics ``metrics/_lisi.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._inputs import per_sample
from ._neighbors import NeighborsResult

#: Bisection of the kernel precision: at most 50 steps, stopping at this entropy tolerance (Harmony, scib-metrics).
_MAX_STEPS = 50
_TOLERANCE = 1e-5


def lisi(neighbors: NeighborsResult, labels: np.ndarray, *, perplexity: float | None = None) -> np.ndarray:
    """LISI of every sample: the effective number of distinct ``labels`` among its neighbours.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (the benchmark uses k = 90, scib-metrics' ``Benchmarker`` value); the sample
        itself gets no weight.
    labels
        Batch or label of each sample.
    perplexity
        Effective neighbourhood size; ``None`` uses ``floor(k / 3)`` (scib-metrics' default).

    Returns
    -------
    Array of shape (n_samples,) with values in [1, number of labels] (-1 where every kernel weight vanished, as
    scib-metrics reports it).
    """
    labels = per_sample(labels, neighbors.n_samples, "labels")
    codes, uniques = pd.factorize(labels)
    if perplexity is None:
        perplexity = np.floor(neighbors.n_neighbors / 3)
    distances = neighbors.distances.astype(np.float64)
    not_self = neighbors.indices != np.arange(neighbors.n_samples)[:, None]
    entropy, weights = _kernel_weights(distances, not_self, perplexity)
    n, k = distances.shape
    rows = np.repeat(np.arange(n), k)
    composition = np.bincount(
        rows * len(uniques) + codes[neighbors.indices].ravel(), weights=weights.ravel(), minlength=n * len(uniques)
    ).reshape(n, len(uniques))
    simpson = np.where(entropy == 0, -1.0, (composition**2).sum(axis=1))
    return 1 / simpson


def ilisi(
    neighbors: NeighborsResult, batch: np.ndarray, *, perplexity: float | None = None, scale: bool = True
) -> float:
    """Integration LISI: median LISI of batches, scaled to [0, 1] by ``(median - 1) / (batches - 1)``.

    1 means every neighbourhood holds all batches in their overall balance; 0 means one batch per neighbourhood.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (k = 90 in the benchmark, as scib-metrics' ``Benchmarker``).
    batch
        Batch of each sample (at least two batches when ``scale``).
    perplexity
        Effective neighbourhood size; ``None`` uses ``floor(k / 3)`` (scib-metrics' default).
    scale
        Rescale to [0, 1], higher is better (scib's default).

    Returns
    -------
    The iLISI score.
    """
    median = float(np.nanmedian(lisi(neighbors, batch, perplexity=perplexity)))
    if not scale:
        return median
    n_batches = len(pd.unique(np.asarray(batch)))
    if n_batches < 2:
        raise ValueError("iLISI needs at least two batches.")
    return (median - 1) / (n_batches - 1)


def clisi(
    neighbors: NeighborsResult, labels: np.ndarray, *, perplexity: float | None = None, scale: bool = True
) -> float:
    """Cell-type (label) LISI: median LISI of labels, scaled to [0, 1] by ``(labels - median) / (labels - 1)``.

    1 means every neighbourhood holds a single label.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (k = 90 in the benchmark, as scib-metrics' ``Benchmarker``).
    labels
        Label of each sample (at least two labels when ``scale``).
    perplexity
        Effective neighbourhood size; ``None`` uses ``floor(k / 3)`` (scib-metrics' default).
    scale
        Rescale to [0, 1], higher is better (scib's default).

    Returns
    -------
    The cLISI score.
    """
    median = float(np.nanmedian(lisi(neighbors, labels, perplexity=perplexity)))
    if not scale:
        return median
    n_labels = len(pd.unique(np.asarray(labels)))
    if n_labels < 2:
        raise ValueError("cLISI needs at least two labels.")
    return (n_labels - median) / (n_labels - 1)


def _kernel_weights(distances: np.ndarray, not_self: np.ndarray, perplexity: float) -> tuple[np.ndarray, np.ndarray]:
    """Entropy and normalised Gaussian weights of each row, precision found by bisection on the entropy."""
    n = distances.shape[0]
    beta = np.ones(n)
    beta_min = np.full(n, -np.inf)
    beta_max = np.full(n, np.inf)
    entropy, weights = _entropy_and_weights(distances, not_self, beta)
    gap = entropy - np.log(perplexity)
    for _ in range(_MAX_STEPS):
        rows = np.flatnonzero(np.abs(gap) >= _TOLERANCE)
        if rows.size == 0:
            break
        too_flat = gap[rows] > 0
        b, lo, hi = beta[rows], beta_min[rows], beta_max[rows]
        beta[rows] = np.where(
            too_flat,
            np.where(np.isinf(hi), b * 2, (b + hi) / 2),
            np.where(np.isinf(lo), b / 2, (b + lo) / 2),
        )
        beta_min[rows] = np.where(too_flat, b, lo)
        beta_max[rows] = np.where(too_flat, hi, b)
        entropy[rows], weights[rows] = _entropy_and_weights(distances[rows], not_self[rows], beta[rows])
        gap[rows] = entropy[rows] - np.log(perplexity)
    return entropy, weights


def _entropy_and_weights(
    distances: np.ndarray, not_self: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Harmony's ``Hbeta``: weights ``exp(-d·beta)`` (self excluded), their entropy, and the normalised weights."""
    weights = np.where(not_self, np.exp(-distances * beta[:, None]), 0.0)
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.where(total == 0, 0.0, np.log(total) + beta * (distances * weights).sum(axis=1) / total)
        weights = np.where(total[:, None] == 0, 0.0, weights / total[:, None])
    return entropy, weights
