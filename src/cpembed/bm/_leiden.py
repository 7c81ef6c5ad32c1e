"""Leiden clustering scored against labels: NMI and ARI at the resolution with the best NMI.

References
----------
Traag, V. A., Waltman, L. & van Eck, N. J. From Louvain to Leiden: guaranteeing well-connected communities.
*Scientific Reports* 9, 5233 (2019).

Luecken, M. D. et al. Benchmarking atlas-level data integration in single-cell genomics. *Nature Methods* 19,
41–50 (2022) (scib-metrics ``nmi_ari_cluster_labels_leiden``, whose resolution search this follows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ._inputs import per_sample
from ._neighbors import NeighborsResult

#: scib-metrics searches the resolutions 0.2, 0.4, ..., 2.0.
DEFAULT_RESOLUTIONS = tuple(round(0.2 * step, 1) for step in range(1, 11))


@dataclass(frozen=True)
class LeidenScores:
    """Agreement of the best Leiden clustering with the labels.

    Attributes
    ----------
    nmi
        Normalised mutual information (arithmetic normalisation), the largest over the resolutions.
    ari
        Adjusted Rand index of the same clustering, clipped at 0: the index is 0 at chance and can fall slightly below
        it, which here scores as chance, so that every benchmark metric lies in [0, 1].
    resolution
        The resolution that gave it.
    """

    nmi: float
    ari: float
    resolution: float


def leiden_nmi_ari(
    neighbors: NeighborsResult,
    labels: np.ndarray,
    *,
    resolutions: tuple[float, ...] = DEFAULT_RESOLUTIONS,
    seed: int = 42,
    n_jobs: int = 1,
) -> LeidenScores:
    """Cluster the UMAP connectivity graph with Leiden at several resolutions; keep the best NMI.

    Each resolution runs igraph's Leiden (modularity objective, edge weights = connectivities, random numbers from
    ``random.Random(seed)``), exactly as scib-metrics 0.5 does, so the two give the same clusters on the same graph.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (the benchmark uses k = 15, scib-metrics' ``Benchmarker`` value).
    labels
        Label of each sample.
    resolutions
        Leiden resolutions tried (scib-metrics: 0.2 to 2.0 in steps of 0.2).
    seed
        Seed of each clustering (scib-metrics' default, 42).
    n_jobs
        Parallel processes (joblib) sharing the resolutions; 1 runs them one after another in this process.

    Returns
    -------
    NMI and ARI (clipped at 0, unlike scib-metrics) of the best clustering, and its resolution.
    """
    from joblib import Parallel, delayed, effective_n_jobs
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = per_sample(labels, neighbors.n_samples, "labels")
    graph = neighbors.connectivities
    # One task per worker, each building the igraph network once for its share of the resolutions.
    n_tasks = max(1, min(effective_n_jobs(n_jobs), len(resolutions)))
    shares = [list(range(task, len(resolutions), n_tasks)) for task in range(n_tasks)]
    results = Parallel(n_jobs=n_tasks)(
        delayed(_leiden)(graph, [resolutions[i] for i in share], seed) for share in shares
    )
    clusterings = [None] * len(resolutions)
    for share, memberships in zip(shares, results, strict=True):
        for i, membership in zip(share, memberships, strict=True):
            clusterings[i] = membership
    nmis = [normalized_mutual_info_score(labels, clusters, average_method="arithmetic") for clusters in clusterings]
    best = int(np.argmax(nmis))
    return LeidenScores(
        nmi=float(nmis[best]),
        ari=max(0.0, float(adjusted_rand_score(labels, clusterings[best]))),
        resolution=float(resolutions[best]),
    )


def _leiden(graph: sparse.csr_matrix, resolutions: list[float], seed: int) -> list[np.ndarray]:
    """Leiden clusterings of a symmetric weighted graph, one per resolution, each seeded afresh with ``seed``.

    The network is built once for all of them; igraph's random generator is restored afterwards.
    """
    import igraph

    # Both directions of every edge are kept, as scanpy and scib-metrics build the graph.
    network = igraph.Graph.Weighted_Adjacency(graph, mode="directed")
    network.to_undirected(mode="each")
    memberships = []
    try:
        for resolution in resolutions:
            igraph.set_random_number_generator(random.Random(seed))
            partition = network.community_leiden(
                objective_function="modularity", weights="weight", resolution=resolution
            )
            memberships.append(np.asarray(partition.membership))
    finally:
        igraph.set_random_number_generator(random)
    return memberships
