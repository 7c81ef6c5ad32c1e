"""Graph connectivity: does each label form one connected piece of the kNN graph?

References
----------
Luecken, M. D. et al. Benchmarking atlas-level data integration in single-cell genomics. *Nature Methods* 19,
41–50 (2022) (scib ``graph_connectivity``; scib-metrics ``metrics/_graph_connectivity.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components

from ._inputs import per_sample
from ._neighbors import NeighborsResult


def graph_connectivity(neighbors: NeighborsResult, labels: np.ndarray) -> float:
    """Mean over labels of the share of a label's samples in the largest connected piece of its kNN subgraph.

    For each label, the kNN graph restricted to that label's samples is split into strongly connected components
    (directed kNN edges, as scib-metrics); the label scores the size of the largest component over the label size.
    1 means every label is one connected piece: batch effects do not split labels apart. The CellPainTR paper
    (appendix C.2.2, Eq. 14) describes a kNN-overlap score under this name, but its numbers come from scib, whose
    definition this is.

    Parameters
    ----------
    neighbors
        Neighbours of every sample (the benchmark uses k = 15, scib-metrics' ``Benchmarker`` value).
    labels
        Label of each sample.

    Returns
    -------
    The graph connectivity, in (0, 1].
    """
    labels = per_sample(labels, neighbors.n_samples, "labels")
    graph = neighbors.adjacency
    shares = []
    for label in pd.unique(labels):
        mask = labels == label
        _, components = connected_components(graph[mask][:, mask], directed=True, connection="strong")
        shares.append(np.bincount(components).max() / mask.sum())
    return float(np.mean(shares))
