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

import numba
import numpy as np
import pandas as pd

from ._inputs import per_sample
from ._neighbors import NeighborsResult, distance_unit

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
    distances = distances / distance_unit(distances)  # Harmony's search reaches about 2^±50 from precision 1
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


@numba.njit(parallel=True, cache=True)
def _kernel_weights(distances: np.ndarray, not_self: np.ndarray, perplexity: float) -> tuple[np.ndarray, np.ndarray]:
    """Entropy and normalised Gaussian weights of each row, the precision found by bisection on the entropy.

    Harmony's ``Hbeta`` search, row by row (rows in parallel): start from precision 1, double or halve it until the
    entropy is bracketed, then bisect until it is within ``_TOLERANCE`` of ``log(perplexity)`` or ``_MAX_STEPS``
    updates were made.
    """
    n, k = distances.shape
    target = np.log(perplexity)
    entropy = np.zeros(n)
    weights = np.zeros((n, k))
    for row in numba.prange(n):
        beta, beta_min, beta_max = 1.0, -np.inf, np.inf
        row_entropy = _entropy_and_weights(distances[row], not_self[row], beta, weights[row])
        for _ in range(_MAX_STEPS):
            gap = row_entropy - target
            if abs(gap) < _TOLERANCE:
                break
            if gap > 0:  # too flat: sharpen
                beta_min = beta
                beta = beta * 2 if np.isinf(beta_max) else (beta + beta_max) / 2
            else:
                beta_max = beta
                beta = beta / 2 if np.isinf(beta_min) else (beta + beta_min) / 2
            row_entropy = _entropy_and_weights(distances[row], not_self[row], beta, weights[row])
        entropy[row] = row_entropy
    return entropy, weights


@numba.njit(cache=True, inline="always")
def _entropy_and_weights(distances: np.ndarray, not_self: np.ndarray, beta: float, weights: np.ndarray) -> float:
    """Harmony's ``Hbeta`` for one row: the entropy of the weights ``exp(-d·beta)`` (self excluded).

    The normalised weights are written into ``weights``; when every weight vanished they are all 0 and so is the
    returned entropy.
    """
    total = 0.0
    weighted_distance = 0.0
    for j in range(distances.shape[0]):
        weight = np.exp(-distances[j] * beta) if not_self[j] else 0.0
        weights[j] = weight
        total += weight
        weighted_distance += distances[j] * weight
    if total == 0.0:
        return 0.0
    for j in range(distances.shape[0]):
        weights[j] /= total
    return np.log(total) + beta * weighted_distance / total
