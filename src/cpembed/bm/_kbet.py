"""kBET: is the batch composition of each neighbourhood the batch composition of the whole?

References
----------
Büttner, M., Miao, Z., Wolf, F. A., Teichmann, S. A. & Theis, F. J. A test metric for assessing single-cell
RNA-seq batch correction. *Nature Methods* 16, 43–49 (2019).

Luecken, M. D. et al. Benchmarking atlas-level data integration in single-cell genomics. *Nature Methods* 19,
41–50 (2022) (kBET per label on diffusion neighbours; scib-metrics ``metrics/_kbet.py``, which this follows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh
from scipy.special import gammainc

from ._neighbors import NeighborsResult, nearest_neighbors

#: Labels with fewer samples than this are skipped (scib).
_MIN_LABEL_SIZE = 10
#: Added to diffusion eigenvalues so that none is exactly 1 - 1 = 0 in the multiscale weights (scib-metrics).
_EPS = 1e-8
#: Diffusion eigenvalues this close to 1 are the trivial one (weight 1 instead of λ / (1 - λ)).
_TRIVIAL_TOLERANCE = 1e-6


def kbet(neighbors: NeighborsResult, batch: np.ndarray, *, alpha: float = 0.05) -> float:
    """Acceptance rate of kBET: share of samples whose neighbour batch counts pass a χ² test against the overall mix.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (all columns, the sample itself included, form the neighbourhood).
    batch
        Batch of each sample.
    alpha
        Significance level of the test (kBET's default, 0.05).

    Returns
    -------
    The acceptance rate in [0, 1]; higher means better mixed batches.
    """
    codes = pd.factorize(np.asarray(batch))[0]
    n_batches = codes.max() + 1
    expected = np.bincount(codes, minlength=n_batches) / len(codes) * neighbors.n_neighbors
    rows = np.repeat(np.arange(neighbors.n_samples), neighbors.n_neighbors)
    observed = np.bincount(
        rows * n_batches + codes[neighbors.indices].ravel(), minlength=neighbors.n_samples * n_batches
    ).reshape(neighbors.n_samples, n_batches)
    statistic = ((observed - expected) ** 2 / expected).sum(axis=1)
    p_values = 1 - gammainc((n_batches - 1) / 2, statistic / 2)
    return float(np.mean(p_values >= alpha))


def kbet_per_label(
    neighbors: NeighborsResult,
    batch: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.05,
    diffusion_n_comps: int = 100,
) -> float:
    """Mean over labels of kBET on diffusion-map neighbours (scib; scib-metrics' ``kbet_per_label``).

    For each label, the UMAP connectivity graph restricted to its samples is embedded with a diffusion map and
    kBET runs on exact neighbours in that embedding, with ``k0 = clip(mean batch size / 4, 10, 70)``. Labels with
    fewer than 10 samples or a single batch are skipped; a label whose graph falls into pieces is scored on the
    pieces of at least ``3 k0`` samples when they hold 75% of it, and 0 otherwise.

    Two differences from scib-metrics 0.5.10, both where its result is accidental: each label uses
    ``min(diffusion_n_comps, size - 1)`` components (scib-metrics carries a lowered value on to the next labels),
    and diffusion neighbours are exact (scib-metrics uses approximate pynndescent), see also
    :func:`_diffusion_embedding`.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (the benchmark uses k = 50, scib-metrics' ``Benchmarker`` value).
    batch
        Batch of each sample.
    labels
        Label of each sample.
    alpha
        Significance level of the χ² test (kBET's default, 0.05).
    diffusion_n_comps
        Diffusion components of the per-label embedding (scib-metrics' default, 100).

    Returns
    -------
    The mean acceptance rate over labels, or NaN when every label was skipped.
    """
    batch = np.asarray(batch)
    labels = np.asarray(labels)
    if batch.shape != (neighbors.n_samples,) or labels.shape != (neighbors.n_samples,):
        raise ValueError(f"batch and labels must have shape ({neighbors.n_samples},).")
    graph = neighbors.connectivities
    scores = [
        _label_kbet(graph[mask][:, mask], batch[mask], alpha, diffusion_n_comps)
        for mask in (labels == label for label in pd.unique(labels))
    ]
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def _label_kbet(graph: sparse.csr_matrix, batch: np.ndarray, alpha: float, n_comps: int) -> float:
    """Score kBET on one label's samples, following scib's rules for small labels and disconnected graphs."""
    n_obs = graph.shape[0]
    if n_obs < _MIN_LABEL_SIZE or len(pd.unique(batch)) == 1:
        return float("nan")
    k0 = int(min(70, max(10, np.floor(pd.Series(batch).value_counts().mean() / 4))))
    n_components, components = connected_components(graph, connection="strong")
    keep = np.ones(n_obs, dtype=bool)
    if n_components > 1:
        sizes = np.bincount(components)
        keep = sizes[components] >= 3 * k0
        if keep.mean() < 0.75:
            return 0.0
    try:
        embedding = _diffusion_embedding(graph[keep][:, keep], min(n_comps, int(keep.sum()) - 1))
        return kbet(nearest_neighbors(embedding, min(k0 + 1, int(keep.sum()))), batch[keep], alpha=alpha)
    except ValueError:  # the eigendecomposition failed: scib counts the label as fully rejected
        return 0.0


def _diffusion_embedding(graph: sparse.csr_matrix, n_comps: int) -> np.ndarray:
    """Multiscale diffusion map of a connectivity graph (Coifman & Lafon 2006; scanpy's and scib-metrics' recipe).

    Density-normalised, symmetric transition matrix; its top ``n_comps`` eigenvectors (by magnitude) scaled by
    ``λ / (1 - λ)``, and by 1 for the trivial eigenvalue 1, so that Euclidean distance approximates diffusion
    distance. scib-metrics recognises the trivial eigenvalue by ``λ == 1`` after a float32 cast, which misses it
    when the eigensolver returns it one unit in the last place below 1 (then that eigenvector is weighted ~10⁷);
    here it is recognised within 1e-6. The eigensolver starts from a seeded vector, so results are reproducible.
    """
    graph = sparse.csr_matrix(graph, dtype=np.float64)
    density = np.asarray(graph.sum(axis=0)).ravel()
    kernel = sparse.diags(1 / density) @ graph @ sparse.diags(1 / density)
    scale = np.sqrt(np.asarray(kernel.sum(axis=0)).ravel())
    transitions = sparse.diags(1 / scale) @ kernel @ sparse.diags(1 / scale)
    start = np.random.default_rng(0).uniform(0.5, 1.5, size=graph.shape[0])
    values, vectors = eigsh(transitions, k=n_comps, which="LM", v0=start)
    values, vectors = values[::-1].astype(np.float32), vectors[:, ::-1].astype(np.float32)
    values += np.float32(_EPS)
    trivial = np.abs(1 - values) < _TRIVIAL_TOLERANCE
    weights = np.where(trivial, np.float32(1), values / np.where(trivial, np.float32(1), 1 - values))
    return vectors * weights.astype(np.float32)
