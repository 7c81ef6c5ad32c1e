"""Nearest neighbours, computed once per embedding and shared by every graph-based metric.

The graph metrics of scib-metrics (graph connectivity, Leiden NMI/ARI, kBET, LISI) all read one neighbour search
at the largest k they need and take the first k columns each (scib-metrics ``nearest_neighbors/_dataclass.py``).
:func:`nearest_neighbors` searches exactly, in blocks of rows, so memory stays linear in the number of wells, or,
for large data, approximately with pynndescent (scib-metrics' choice); both give a :class:`NeighborsResult`.
:attr:`NeighborsResult.connectivities` turns it into the UMAP fuzzy graph that scanpy and scib-metrics cluster on.

References
----------
McInnes, L., Healy, J. & Melville, J. UMAP: Uniform Manifold Approximation and Projection for Dimension Reduction.
arXiv:1802.03426 (2018).

Dong, W., Charikar, M. & Li, K. Efficient k-nearest neighbor graph construction for generic similarity measures.
*Proceedings of the 20th International Conference on World Wide Web*, 577–586 (2011) (NN-descent, pynndescent).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from cpembed._validation import check_finite

from ._inputs import power_of_two_scale

if TYPE_CHECKING:
    import torch

Metric = Literal["euclidean", "cosine"]
Search = Literal["auto", "exact", "approximate"]

#: Samples above which ``search="auto"`` searches approximately: the exact search's ``O(n²)`` time passes a minute
#: per embedding on two CPU cores near here, while its results at this size serve as the reference.
APPROXIMATE_ABOVE = 100_000

#: Rows of the distance matrix held at once (2,048 rows × 50,000 wells of float32 is 400 MB).
DEFAULT_BLOCK_SIZE = 2048
#: Bisection steps and tolerance of UMAP's ``smooth_knn_dist``.
_SMOOTH_K_ITERATIONS = 64
_SMOOTH_K_TOLERANCE = 1e-5
#: UMAP's ``MIN_K_DIST_SCALE``: the kernel width is at least this fraction of the mean neighbour distance.
_MIN_K_DIST_SCALE = 1e-3
#: Median neighbour distances within this range are used as they are by the kernels of UMAP and LISI.
_UNIT_RANGE = (2.0**-10, 2.0**10)


@dataclass(frozen=True)
class NeighborsResult:
    """The k nearest neighbours of every sample, the sample itself first.

    Attributes
    ----------
    indices
        Array of shape (n_samples, n_neighbors): neighbour indices sorted by distance; column 0 is the sample.
    distances
        Array of the same shape: the distances to those neighbours (column 0 is 0).
    """

    indices: np.ndarray
    distances: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.shape != self.distances.shape or self.indices.ndim != 2:
            raise ValueError(
                f"indices {self.indices.shape} and distances {self.distances.shape} must be 2-D arrays of one shape."
            )

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return self.indices.shape[0]

    @property
    def n_neighbors(self) -> int:
        """Number of neighbours per sample, the sample itself included."""
        return self.indices.shape[1]

    def subset(self, n_neighbors: int) -> NeighborsResult:
        """Return the first ``n_neighbors`` neighbours of every sample."""
        if n_neighbors > self.n_neighbors:
            raise ValueError(f"Asked for {n_neighbors} neighbours, but only {self.n_neighbors} were computed.")
        return NeighborsResult(self.indices[:, :n_neighbors], self.distances[:, :n_neighbors])

    @cached_property
    def adjacency(self) -> sparse.csr_matrix:
        """Directed kNN graph: an edge (weight 1) from each sample to each of its neighbours."""
        n, k = self.indices.shape
        data = np.ones(n * k, dtype=np.float32)
        return sparse.csr_matrix((data, self.indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))

    @cached_property
    def connectivities(self) -> sparse.csr_matrix:
        """Symmetric UMAP fuzzy-set graph of the neighbours (``umap.fuzzy_simplicial_set``, as scanpy uses it).

        Each edge gets ``exp(-(d - rho) / sigma)``, where ``rho`` is the distance to the nearest non-identical
        neighbour and ``sigma`` is found by bisection so that the weights of a sample sum to ``log2(k)``; the graph is
        then symmetrised with the fuzzy union ``A + Aᵀ - A ∘ Aᵀ``.
        """
        # UMAP's float32 values, as rho's; in a unit its kernel-width search (64 steps from 1) reaches.
        distances = (self.distances / distance_unit(self.distances)).astype(np.float32).astype(np.float64)
        sigmas, rhos = _smooth_knn_distances(distances)
        weights = np.exp(-np.clip(distances - rhos[:, None], 0.0, None) / sigmas[:, None])
        weights[self.indices == np.arange(self.n_samples)[:, None]] = 0.0
        n, k = self.indices.shape
        graph = sparse.csr_matrix(
            (weights.astype(np.float32).ravel(), self.indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n)
        )
        graph.eliminate_zeros()
        transpose = graph.T.tocsr()
        union = graph + transpose - graph.multiply(transpose)
        union.eliminate_zeros()
        return union.tocsr()


def distance_unit(distances: np.ndarray) -> float:
    """Power of two near the median neighbour distance when that lies outside [2⁻¹⁰, 2¹⁰], else 1.

    The kernel-width searches of UMAP and of Harmony's LISI start at 1 and double or halve a limited number of times,
    and UMAP rounds distances to float32: distances far from 1 (an embedding scaled by 1e50 or 1e-50) are beyond
    their reach, which would leave every weight 0, uniform or NaN. Both kernels are unchanged by the unit of distance
    up to their search tolerance, and distances of ordinary embeddings are left as they are.
    """
    typical = float(np.median(distances[:, 1:])) if distances.shape[1] > 1 else 0.0
    if typical == 0 or _UNIT_RANGE[0] <= typical <= _UNIT_RANGE[1]:
        return 1.0
    return float(2.0 ** np.round(np.log2(typical)))


def _smooth_knn_distances(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kernel widths ``sigma`` and offsets ``rho`` of UMAP's ``smooth_knn_dist`` (local connectivity 1), vectorised.

    ``distances`` are expected already rounded to float32 values (held in float64), as UMAP sees them.
    """
    n, k = distances.shape
    target = np.log2(k)
    positive = np.where(distances > 0, distances, np.inf)
    rhos = positive.min(axis=1)
    rhos[~np.isfinite(rhos)] = 0.0
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(_SMOOTH_K_ITERATIONS):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        shifted = distances[rows, 1:] - rhos[rows, None]
        psum = np.exp(-np.maximum(shifted, 0.0) / mid[rows, None]).sum(axis=1)  # weight 1 up to rho, as UMAP
        done = np.abs(psum - target) < _SMOOTH_K_TOLERANCE
        too_wide = (psum > target) & ~done
        too_narrow = ~too_wide & ~done
        hi[rows[too_wide]] = mid[rows[too_wide]]
        lo[rows[too_narrow]] = mid[rows[too_narrow]]
        unbounded = too_narrow & ~np.isfinite(hi[rows])
        mid[rows[unbounded]] *= 2
        bounded = (too_wide | too_narrow) & ~unbounded
        mid[rows[bounded]] = (lo[rows[bounded]] + hi[rows[bounded]]) / 2
        active[rows[done]] = False
    sigmas = mid.astype(np.float32).astype(np.float64)
    floor = np.where(rhos > 0, distances.mean(axis=1), distances.mean()) * _MIN_K_DIST_SCALE
    return np.maximum(sigmas, floor), rhos


def nearest_neighbors(
    X: np.ndarray,
    n_neighbors: int,
    *,
    metric: Metric = "euclidean",
    search: Search = "auto",
    block_size: int = DEFAULT_BLOCK_SIZE,
    seed: int = 0,
    n_jobs: int = 1,
) -> NeighborsResult:
    """K nearest neighbours of every row of ``X``, the row itself first.

    The exact search forms the distances of a block of rows to all rows with one matrix product (float32) and keeps
    the k smallest, so memory is ``block_size × n`` whatever ``n`` is, at the cost of ``O(n² d)`` arithmetic: about
    10 s for 50,000 wells × 64 dimensions on two CPU cores, 16 times that at four times the wells. The approximate
    search builds pynndescent's NN-descent graph (with the settings scib-metrics and UMAP use), whose time grows
    about as ``n log n``; it misses a few true neighbours, which moves the aggregate scores of
    :func:`~cpembed.bm.benchmark` by less than 0.01 on the data of ``benchmarks/bm_speed.py`` (the Leiden ARI, the
    most sensitive metric, by up to 0.03; see the benchmarks page). Either way the kept distances are then recomputed
    exactly in float64 and sorted, and rows at equal distance (duplicated wells, a collapsed embedding) are chosen
    (exact search) and ordered at random (seeded), independently for every sample, not by row order, which would tie
    neighbourhoods to how the wells happen to be sorted (e.g. by plate).

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features), finite.
    n_neighbors
        Neighbours per sample, the sample itself included.
    metric
        ``"euclidean"`` (scib-metrics' default) or ``"cosine"`` (``1 - cosine similarity``, the JUMP benchmark's
        choice for its neighbour graphs).
    search
        ``"exact"``, ``"approximate"`` (pynndescent) or ``"auto"``: approximate above :data:`APPROXIMATE_ABOVE`
        samples, exact up to it.
    block_size
        Rows of the distance matrix formed at once (exact search).
    seed
        Seed of pynndescent's random projection trees, and of the order in which equidistant neighbours are chosen.
    n_jobs
        Threads of pynndescent (its neighbours depend on their number); the exact search uses torch's threads.

    Returns
    -------
    The neighbours and their distances.
    """
    X = np.asarray(X, dtype=np.float64)
    check_finite(X, "X")
    n = X.shape[0]
    if not 1 <= n_neighbors <= n:
        raise ValueError(f"n_neighbors must be between 1 and the number of samples ({n}), got {n_neighbors}.")
    points, scale = _prepared_points(X, metric)
    rng = np.random.default_rng(seed)
    if resolve_search(search, n) == "exact":
        indices = _exact_candidates(points, n_neighbors, block_size, rng)
    else:
        indices = _approximate_candidates(points, n_neighbors, seed, n_jobs)
    distances = _exact_distances(points, indices, metric) * scale
    order = np.argsort(distances[:, 1:], axis=1, kind="stable") + 1
    order = np.concatenate([np.zeros((n, 1), dtype=np.int64), order], axis=1)
    sorted_distances = np.take_along_axis(distances, order, 1)
    # Rows with equal distances: those neighbours in random order (the sample itself, at -1, stays first).
    tied = np.flatnonzero((np.diff(sorted_distances[:, 1:], axis=1) == 0).any(axis=1))
    if tied.size:
        keys = np.concatenate([np.full((tied.size, 1), -1.0), distances[tied, 1:]], axis=1)
        order[tied] = np.lexsort((rng.random(keys.shape), keys), axis=1)
        sorted_distances[tied] = np.take_along_axis(distances[tied], order[tied], 1)
    return NeighborsResult(np.take_along_axis(indices, order, 1), sorted_distances)


def resolve_search(search: Search, n_samples: int) -> Literal["exact", "approximate"]:
    """The search ``search`` stands for on ``n_samples`` samples (``"auto"`` resolved), or a ValueError."""
    if search not in ("auto", "exact", "approximate"):
        raise ValueError(f"search must be 'auto', 'exact' or 'approximate', got {search!r}.")
    if search == "auto":
        return "approximate" if n_samples > APPROXIMATE_ABOVE else "exact"
    return search


def _exact_candidates(points: np.ndarray, k: int, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` nearest rows of every row (itself first), from float32 distance blocks."""
    import torch

    n = points.shape[0]
    points32 = torch.from_numpy(points.astype(np.float32))
    squared_norms = (points32 * points32).sum(dim=1)
    indices = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = torch.addmm(squared_norms[None, :], points32[start:stop], points32.T, alpha=-2.0)
        block[torch.arange(stop - start), torch.arange(start, stop)] = -np.inf  # the sample itself comes first
        indices[start:stop] = _smallest(block, k, rng)
    return indices


def _approximate_candidates(points: np.ndarray, k: int, seed: int, n_jobs: int) -> np.ndarray:
    """About the ``k`` nearest rows of every row (itself first), from pynndescent's NN-descent graph.

    Euclidean distances of the prepared points order neighbours as the metric does (cosine points are unit vectors).
    The index settings are those of scib-metrics' ``pynndescent`` (taken from UMAP). NN-descent may list a row's
    duplicate before the row itself, or leave the row out: it is put first, and the others follow in their order.
    """
    from pynndescent import NNDescent

    n = points.shape[0]
    index = NNDescent(
        points.astype(np.float32),
        n_neighbors=k,
        metric="euclidean",
        random_state=seed,
        n_jobs=n_jobs,
        low_memory=True,
        compressed=False,
        n_trees=min(64, 5 + round(n**0.5 / 20)),
        n_iters=max(5, round(np.log2(n))),
        max_candidates=60,
    )
    found = index.neighbor_graph[0]
    if (found < 0).any():
        raise ValueError("The approximate search found fewer neighbours than asked for: use search='exact'.")
    rows = np.arange(n)[:, None]
    others = np.take_along_axis(found, np.argsort(found == rows, axis=1, kind="stable"), 1)[:, : k - 1]
    return np.concatenate([rows, others], axis=1).astype(np.int64)


def _smallest(block: torch.Tensor, k: int, rng: np.random.Generator) -> np.ndarray:
    """Columns of the ``k`` smallest values of each row; where values tied with the k-th are left out, a random draw.

    ``torch.topk`` keeps tied columns in an order of its own, which would send every well of a collapsed embedding to
    the same few neighbours.
    """
    import torch

    searched = min(k + 1, block.shape[1])  # one more than needed shows whether a tie crosses the k-th place
    values, columns = torch.topk(block, searched, dim=1, largest=False)
    columns = columns[:, :k].contiguous().numpy()
    if searched == k:
        return columns
    kth = values[:, k - 1 : k]
    for row in np.flatnonzero((values[:, k] == values[:, k - 1]).numpy()):
        below = torch.nonzero(block[row] < kth[row]).ravel().numpy()
        tied = torch.nonzero(block[row] == kth[row]).ravel().numpy()
        columns[row] = np.concatenate([below, rng.choice(tied, size=k - below.size, replace=False)])
    return columns


def _prepared_points(X: np.ndarray, metric: Metric) -> tuple[np.ndarray, float]:
    """Rows ready for float32 distance products, and the factor that turns their Euclidean distances into X's.

    ``X`` is first divided by a power of two (exactly) that brings its largest entry near 1, so that embeddings
    whose values lie beyond float32's range, or below its precision, keep their neighbours; then the rows are centred
    (Euclidean: fewer cancellation errors) or scaled to unit length (cosine, factor 1).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")
    scale = power_of_two_scale(X)
    X = X / scale
    if metric == "euclidean":
        return X - X.mean(axis=0), scale
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0), 1.0


def _exact_distances(points: np.ndarray, indices: np.ndarray, metric: Metric) -> np.ndarray:
    """Distances from each row of ``points`` to its listed neighbours, in float64."""
    distances = np.empty(indices.shape)
    for start in range(0, indices.shape[0], DEFAULT_BLOCK_SIZE):
        rows = points[start : start + DEFAULT_BLOCK_SIZE]
        neighbours = points[indices[start : start + DEFAULT_BLOCK_SIZE]]
        if metric == "euclidean":
            distances[start : start + len(rows)] = np.linalg.norm(neighbours - rows[:, None, :], axis=2)
        else:
            distances[start : start + len(rows)] = np.clip(1.0 - np.einsum("nkd,nd->nk", neighbours, rows), 0, None)
    distances[:, 0] = 0.0
    return distances
