"""Mean average precision (mAP) of perturbation retrieval, with the pair definitions and p-values of copairs.

A query well ranks its *positives* (other wells of the same perturbation) and *negatives* (wells it should not
resemble) by similarity; its average precision (AP) measures how high the positives rank. AP is averaged per
perturbation (mAP) and tested against a null of random rankings (Kalinin et al. 2025, the copairs package);
:func:`map_control` and :func:`map_no_rep` are the two settings of the JUMP batch-correction benchmark
(Arevalo et al. 2024, ``metrics/map.py``).

The computation never builds a wells × wells matrix: positive similarities come from one block per perturbation,
negative similarities from one block per plate, and both are ranked together in blocks of queries.

References
----------
Kalinin, A. A., Arevalo, J., Serrano, E., Vulliard, L., Tsang, H., Bornholdt, M., Muñoz, A. F., Sivagurunathan, S.,
Rajwa, B., Carpenter, A. E., Way, G. P. & Singh, S. A versatile information retrieval framework for evaluating
profile strength and similarity. *Nature Communications* 16, 5181 (2025). Software: https://github.com/cytomining/copairs

Arevalo, J., Su, E., Ewald, J. D., van Dijk, R., Carpenter, A. E. & Singh, S. Evaluating batch correction methods
for image-based cell profiling. *Nature Communications* 15, 6516 (2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import sparse
from threadpoolctl import threadpool_limits

from ._inputs import power_of_two_scale, validated_arrays

#: Most query-candidate comparisons made at once by one block of queries (a few tens of MiB).
DEFAULT_BATCH_SIZE = 1 << 22
#: Similarities closer than this count as tied: well above the rounding error of a float64 product of unit vectors
#: (identical wells compared by different products differ by it), well below the float32 resolution copairs ranks at.
_SIMILARITY_TIE = 1e-10
#: Observed and null mAP closer than this count as tied (a tie does not count against the observed score).
_TIE_TOLERANCE = 1e-12
#: Perturbations whose null mAPs are formed at once in :func:`_map_p_values`.
_PERTURBATION_BLOCK = 256


class UndefinedMAPError(ValueError):
    """No well of the input can be scored (no query has both a positive and a negative): the mAP is undefined."""


@dataclass(frozen=True)
class MAPResult:
    """Mean average precision of a retrieval setting.

    Attributes
    ----------
    mean_average_precision
        Mean over perturbations of their mAP.
    fraction_retrieved
        Fraction of perturbations whose Benjamini–Hochberg corrected p-value is below the threshold.
    per_perturbation
        One row per scored perturbation (index: the perturbation label) with ``mean_average_precision``,
        ``n_queries`` (wells that were scored), ``p_value``, ``corrected_p_value`` and ``retrieved``.
    """

    mean_average_precision: float
    fraction_retrieved: float
    per_perturbation: pd.DataFrame


def map_control(
    X: np.ndarray,
    perturbation: np.ndarray,
    plate: np.ndarray,
    is_control: np.ndarray,
    *,
    well: np.ndarray | None = None,
    distance: str = "cosine",
    null_size: int = 10_000,
    threshold: float = 0.05,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> MAPResult:
    """Mean average precision (mAP) of finding replicates among the negative controls of their plate.

    The "mAP (control)" setting of the JUMP batch-correction benchmark (Arevalo et al. 2024), which calls copairs
    with ``pos_sameby=[perturbation]``, ``pos_diffby=[well]``, ``neg_sameby=[plate]`` and
    ``neg_diffby=[control flag, perturbation]``. For every non-control well (the query):

    - positives: all other wells of the same perturbation, on any plate (with ``well`` given, only those at a
      different well position);
    - negatives: the control wells on the query's plate.

    Control wells are never queries. A query without positives (a perturbation with one well) is dropped. Every
    plate that holds a query must hold controls, otherwise a ValueError names the plates.

    Parameters
    ----------
    X
        Profiles or embeddings, wells × dimensions.
    perturbation
        Perturbation label of each well (compound, ORF, ...; the controls carry their own label, e.g. ``"DMSO"``).
    plate
        Plate of each well.
    is_control
        Boolean, ``True`` for negative-control wells.
    well
        Well position (e.g. ``"A01"``) of each well; when given, replicates at the same position are not positives,
        as in Arevalo et al. (2024). ``None`` (default) counts every other well of the perturbation.
    distance
        ``"cosine"`` (default, as in copairs and Arevalo et al.) or ``"correlation"`` (Pearson).
    null_size
        Random rankings per null distribution; 10,000 as in Arevalo et al. (2024).
    threshold
        Significance level of the corrected p-values; 0.05 as in Arevalo et al. (2024).
    seed
        Seed of the null distributions (0, as in Arevalo et al.).
    batch_size
        Most query–candidate comparisons made at once (bounds the memory of one block).

    Returns
    -------
    The mean mAP, the fraction of perturbations retrieved and the per-perturbation table.

    Raises
    ------
    UndefinedMAPError
        No query well has both a positive and a negative (a ValueError; :func:`cpembed.bm.benchmark` records NaN).
    """
    _check_settings(null_size, threshold)
    X, perturbation, plate, is_control, well = _validated_inputs(X, perturbation, plate, is_control, well)
    _check_controls_distinct(perturbation, is_control)
    _check_plates_have_controls(plate, is_control)
    queries = average_precision(
        X,
        ~is_control,
        perturbation,
        plate,
        is_control,
        positive_diff=well,
        distance=distance,
        batch_size=batch_size,
    )
    return _summarise(queries, perturbation, null_size=null_size, threshold=threshold, seed=seed)


def map_no_rep(
    X: np.ndarray,
    perturbation: np.ndarray,
    plate: np.ndarray,
    is_control: np.ndarray,
    *,
    well: np.ndarray | None = None,
    distance: str = "cosine",
    null_size: int = 10_000,
    threshold: float = 0.05,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> MAPResult:
    """Mean average precision (mAP) of finding replicates among the other perturbations of their plate.

    The "mAP (no rep)" setting of the JUMP batch-correction benchmark (Arevalo et al. 2024), which removes the
    controls and calls copairs with ``pos_sameby=[perturbation]``, ``pos_diffby=[]``, ``neg_sameby=[plate]`` and
    ``neg_diffby=[perturbation]``. Control wells and perturbations with a single well are removed first (as
    Arevalo et al. do); then for every remaining well (the query):

    - positives: all other wells of the same perturbation, on any plate (with ``well`` given, only those at a
      different well position);
    - negatives: the wells of other perturbations on the query's plate.

    A query whose plate holds no other perturbation is dropped.

    Parameters
    ----------
    X
        Profiles or embeddings, wells × dimensions.
    perturbation
        Perturbation label of each well.
    plate
        Plate of each well.
    is_control
        Boolean, ``True`` for negative-control wells (removed).
    well
        Well position of each well; when given, replicates at the same position are not positives (Arevalo et al.
        use no such restriction in this setting: the default ``None``).
    distance
        ``"cosine"`` (default) or ``"correlation"``.
    null_size
        Random rankings per null distribution (10,000, Arevalo et al. 2024).
    threshold
        Significance level of the corrected p-values (0.05, Arevalo et al. 2024).
    seed
        Seed of the null distributions.
    batch_size
        Most query–candidate comparisons made at once (bounds the memory of one block).

    Returns
    -------
    The mean mAP, the fraction of perturbations retrieved and the per-perturbation table.

    Raises
    ------
    UndefinedMAPError
        No query well has both a positive and a negative (a ValueError; :func:`cpembed.bm.benchmark` records NaN).
    """
    _check_settings(null_size, threshold)
    X, perturbation, plate, is_control, well = _validated_inputs(X, perturbation, plate, is_control, well)
    keep = ~is_control & _has_replicates(perturbation)
    if not keep.any():
        raise UndefinedMAPError(
            "No perturbation outside the controls has two or more wells: mAP (no rep) is undefined."
        )
    rows = np.flatnonzero(keep)
    queries = average_precision(
        X[rows],
        np.ones(rows.size, dtype=bool),
        perturbation[rows],
        plate[rows],
        np.ones(rows.size, dtype=bool),
        positive_diff=None if well is None else well[rows],
        distance=distance,
        batch_size=batch_size,
    )
    queries.index = rows[queries.index]
    return _summarise(queries, perturbation, null_size=null_size, threshold=threshold, seed=seed)


def average_precision(
    X: np.ndarray,
    query_mask: np.ndarray,
    positive_group: np.ndarray,
    negative_group: np.ndarray,
    negative_mask: np.ndarray,
    *,
    positive_diff: np.ndarray | None = None,
    distance: str = "cosine",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pd.DataFrame:
    """Average precision of every query row under a pair rule (copairs ``average_precision``).

    For query ``i``:

    - positives are the rows ``j != i`` with ``positive_group[j] == positive_group[i]`` (and, if given,
      ``positive_diff[j] != positive_diff[i]``): copairs ``pos_sameby`` / ``pos_diffby``;
    - negatives are the rows ``j`` with ``negative_mask[j]``, ``negative_group[j] == negative_group[i]`` and
      ``positive_group[j] != positive_group[i]``: copairs ``neg_sameby`` / ``neg_diffby``.

    Positives and negatives are ranked by decreasing similarity; AP is the mean over positives of the precision at
    their ranks. Equal similarities share one rank, the last of their group (scikit-learn's
    ``average_precision_score``); copairs ranks a positive before a tied negative instead, which scores a constant
    embedding as perfect. Queries without a positive or without a negative are dropped (copairs returns NaN for
    the first and a trivial AP of 1 for the second).
    Similarities are computed in float64 (copairs rounds them to float32, so near-ties closer than about 1e-7 may
    rank differently there). BLAS runs single-threaded during the call: the products are small.

    Parameters
    ----------
    X
        Profiles or embeddings, rows × dimensions, finite.
    query_mask
        Boolean, the rows to score.
    positive_group
        Label whose equality makes positives (the perturbation).
    negative_group
        Label that negatives share with the query (the plate).
    negative_mask
        Boolean, the rows that may be negatives (the controls, or every row).
    positive_diff
        Optional label in which positives must differ from the query (the well position).
    distance
        ``"cosine"`` or ``"correlation"`` (the copairs similarity of the same name).
    batch_size
        Most query–candidate comparisons made at once (bounds the memory of one block).

    Returns
    -------
    One row per scored query, indexed by its row position in ``X``, with ``average_precision``, ``n_positives``
    and ``n_total`` (positives + negatives).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    X, arrays = validated_arrays(
        X,
        {"positive_group": positive_group, "negative_group": negative_group, "positive_diff": positive_diff},
        {"query_mask": query_mask, "negative_mask": negative_mask},
    )
    # The products are small (one plate or one perturbation at a time): BLAS threads cost more than they save.
    with threadpool_limits(limits=1, user_api="blas"):
        return _average_precision_single_thread(X, **arrays, distance=distance, batch_size=batch_size)


def _average_precision_single_thread(
    X, *, query_mask, positive_group, negative_group, negative_mask, positive_diff, distance, batch_size
) -> pd.DataFrame:
    unit = _unit_rows(X, distance)
    positive_codes = pd.factorize(positive_group)[0]
    negative_codes = pd.factorize(negative_group)[0]
    diff_codes = None if positive_diff is None else pd.factorize(positive_diff)[0]
    query_rows = np.flatnonzero(query_mask)
    positives = _positive_similarities(unit, query_rows, positive_codes, diff_codes, batch_size)
    has_positive = positives.counts > 0
    candidates = np.flatnonzero(negative_mask)

    rows, scores, n_positives, n_totals = [], [], [], []
    for plate_queries, plate_candidates in _rows_by_group(query_rows[has_positive], candidates, negative_codes):
        slots = np.searchsorted(query_rows, plate_queries)
        kmax = int(positives.counts[slots].max())
        rows_per_block = max(1, batch_size // (kmax * max(1, plate_candidates.size)))
        for start in range(0, slots.size, rows_per_block):
            block = slots[start : start + rows_per_block]
            positive_sims = positives.padded(block, kmax)
            negative_sims = _negative_similarities(unit, query_rows[block], plate_candidates, positive_codes)
            ap, n_negative = _ranked_average_precision(positive_sims, negative_sims)
            kept = n_negative > 0
            rows.append(query_rows[block][kept])
            scores.append(ap[kept])
            n_positives.append(positives.counts[block][kept])
            n_totals.append(positives.counts[block][kept] + n_negative[kept])
    if not rows:
        return pd.DataFrame(
            {"average_precision": [], "n_positives": [], "n_total": []}, index=pd.Index([], dtype=np.int64)
        )
    table = pd.DataFrame(
        {
            "average_precision": np.concatenate(scores),
            "n_positives": np.concatenate(n_positives),
            "n_total": np.concatenate(n_totals),
        },
        index=np.concatenate(rows),
    )
    return table.sort_index()


def null_average_precision(n_positives: int, n_total: int, null_size: int, seed: int) -> np.ndarray:
    """AP of ``null_size`` random rankings of ``n_positives`` positives among ``n_total`` items.

    The null distribution of copairs (``compute.random_ap``): the positives' positions are a uniformly random
    subset. Each configuration has its own random stream, seeded by ``(seed, n_positives, n_total)``, so a
    configuration's null does not depend on which other configurations are present; results are cached per
    configuration.

    Parameters
    ----------
    n_positives
        Positives in the ranking.
    n_total
        Positives and negatives in the ranking.
    null_size
        Random rankings drawn.
    seed
        Seed, combined with the configuration.

    Returns
    -------
    Read-only array of ``null_size`` AP values.
    """
    if not 1 <= n_positives <= n_total:
        raise ValueError(f"Need 1 <= n_positives <= n_total, got {n_positives} and {n_total}.")
    return _cached_null(int(n_positives), int(n_total), int(null_size), int(seed))


def _average_precision_at_positions(positions: np.ndarray) -> np.ndarray:
    """AP of rankings given the sorted 0-based positions of their positives (one ranking per row)."""
    n_positives = positions.shape[1]
    return (np.arange(1, n_positives + 1) / (positions + 1)).mean(axis=1)


@lru_cache(maxsize=4096)
def _cached_null(n_positives: int, n_total: int, null_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n_positives, n_total])
    null = _average_precision_at_positions(_random_subsets(rng, n_total, n_positives, null_size))
    null.flags.writeable = False
    return null


def _random_subsets(rng: np.random.Generator, n: int, k: int, size: int) -> np.ndarray:
    """``size`` uniformly random k-subsets of ``range(n)``, sorted within each row.

    Floyd's algorithm (k draws per row, vectorised over rows) when k is small next to n; otherwise the k
    smallest of n uniform keys per row.
    """
    if k * k <= 4 * n:
        chosen = np.empty((size, k), dtype=np.int64)
        for i, upper in enumerate(range(n - k, n)):
            draw = rng.integers(0, upper + 1, size=size)
            taken = (chosen[:, :i] == draw[:, None]).any(axis=1)
            chosen[:, i] = np.where(taken, upper, draw)
    else:
        rows_per_chunk = max(1, DEFAULT_BATCH_SIZE // n)
        chosen = np.concatenate(
            [
                np.argpartition(rng.random((min(rows_per_chunk, size - start), n)), k - 1, axis=1)[:, :k]
                for start in range(0, size, rows_per_chunk)
            ]
        )
    return np.sort(chosen, axis=1)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (copairs uses statsmodels ``multipletests(method="fdr_bh")``)."""
    from scipy.stats import false_discovery_control

    p_values = np.asarray(p_values, dtype=np.float64)
    if p_values.size == 0:
        return p_values
    return false_discovery_control(p_values, method="bh")


@dataclass(frozen=True)
class _RaggedSimilarities:
    """Similarities of each query to its positives, stored back to back (a CSR row per query)."""

    starts: np.ndarray
    counts: np.ndarray
    values: np.ndarray

    def padded(self, slots: np.ndarray, width: int) -> np.ndarray:
        """Rows ``slots`` as a dense matrix, padded with -inf (ranked last, never relevant)."""
        offsets = np.arange(width)
        present = offsets < self.counts[slots, None]
        index = np.where(present, self.starts[slots, None] + offsets, 0)
        values = self.values[index] if self.values.size else np.zeros(index.shape)
        return np.where(present, values, -np.inf)


def _positive_similarities(
    unit: np.ndarray,
    query_rows: np.ndarray,
    positive_codes: np.ndarray,
    diff_codes: np.ndarray | None,
    batch_size: int,
) -> _RaggedSimilarities:
    """Similarities of each query row to its positives, from one block per positive group.

    Groups of equal size are stacked and multiplied together (a batched matrix product), in chunks of at most
    ``batch_size`` similarities.
    """
    starts = np.zeros(query_rows.size, dtype=np.int64)
    counts = np.zeros(query_rows.size, dtype=np.int64)
    chunks: list[np.ndarray] = []
    filled = 0
    is_query = np.zeros(unit.shape[0], dtype=bool)
    is_query[query_rows] = True
    for members in _groups_by_size(positive_codes, is_query):
        size = members.shape[1]
        rows_per_chunk = max(1, min(size, batch_size // size))
        groups_per_chunk = max(1, batch_size // (size * rows_per_chunk))
        for g0 in range(0, members.shape[0], groups_per_chunk):
            group_members = members[g0 : g0 + groups_per_chunk]
            for r0 in range(0, size, rows_per_chunk):
                block = group_members[:, r0 : r0 + rows_per_chunk]
                valid = (block[:, :, None] != group_members[:, None, :]) & is_query[block][:, :, None]
                if diff_codes is not None:
                    valid &= diff_codes[block][:, :, None] != diff_codes[group_members][:, None, :]
                sims = unit[block] @ unit[group_members].transpose(0, 2, 1)
                block_queries = is_query[block]
                slots = np.searchsorted(query_rows, block[block_queries])
                counts[slots] = valid.sum(axis=2)[block_queries]
                starts[slots] = filled + np.concatenate([[0], np.cumsum(counts[slots])[:-1]])
                chunks.append(sims[valid])
                filled += chunks[-1].size
    values = np.concatenate(chunks) if chunks else np.empty(0)
    return _RaggedSimilarities(starts=starts, counts=counts, values=values)


def _groups_by_size(codes: np.ndarray, is_query: np.ndarray):
    """Yield, for each group size of two or more, a (groups × size) array of the rows of the groups with a query."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    has_query = np.bincount(codes, weights=is_query, minlength=sizes.size) > 0
    for size in np.unique(sizes[has_query & (sizes > 1)]):
        groups = np.flatnonzero(has_query & (sizes == size))
        yield order[offsets[groups, None] + np.arange(size)]


def _negative_similarities(
    unit: np.ndarray, queries: np.ndarray, candidates: np.ndarray, positive_codes: np.ndarray
) -> np.ndarray:
    """Similarities of queries to the candidate negatives of their plate; -inf where a candidate is a positive."""
    sims = unit[queries] @ unit[candidates].T
    same_group = positive_codes[queries, None] == positive_codes[None, candidates]
    sims[same_group] = -np.inf
    return sims


def _ranked_average_precision(positive_sims: np.ndarray, negative_sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP of each row from its positive and negative similarities (-inf marks an absent entry).

    Similarities within ``_SIMILARITY_TIE`` form one threshold, as equal scores do in scikit-learn's
    ``average_precision_score``: each positive gets the precision among all wells at least as similar as it is, so a
    tie never favours positives over negatives. Without ties this is the precision at the positive's rank.
    """
    positives = -np.sort(-positive_sims, axis=1)
    present = np.isfinite(positives)
    floor = positives - _SIMILARITY_TIE
    negatives_at_or_above = np.count_nonzero(negative_sims[:, None, :] >= floor[:, :, None], axis=2)
    # Sorted in decreasing order, tied positives are adjacent: each counts the positives up to the end of its run.
    columns = np.arange(1, positives.shape[1] + 1)
    with np.errstate(invalid="ignore"):  # -inf - -inf between padding entries, which are not counted
        steps = positives[:, :-1] - positives[:, 1:] > _SIMILARITY_TIE
    run_ends = np.concatenate([steps, np.ones((len(positives), 1), bool)], axis=1)
    positives_at_or_above = np.minimum.accumulate(np.where(run_ends, columns, positives.shape[1])[:, ::-1], axis=1)[
        :, ::-1
    ]
    precision = positives_at_or_above / (positives_at_or_above + negatives_at_or_above)
    ap = np.where(present, precision, 0.0).sum(axis=1) / present.sum(axis=1)
    return ap, np.isfinite(negative_sims).sum(axis=1)


def _rows_by_group(queries: np.ndarray, candidates: np.ndarray, codes: np.ndarray):
    """Yield (queries, candidates) of each group (plate) that holds at least one query."""
    candidate_codes = codes[candidates]
    candidate_order = np.argsort(candidate_codes, kind="stable")
    sorted_codes = candidate_codes[candidate_order]
    query_codes = codes[queries]
    query_order = np.argsort(query_codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(query_codes[query_order])) + 1
    for group_queries in np.split(query_order, boundaries):
        if group_queries.size == 0:
            continue
        code = query_codes[group_queries[0]]
        lo, hi = np.searchsorted(sorted_codes, [code, code + 1])
        yield np.sort(queries[group_queries]), candidates[candidate_order[lo:hi]]


def _unit_rows(X: np.ndarray, distance: str) -> np.ndarray:
    """Rows scaled so that their dot products are the requested similarity (float64)."""
    X = np.asarray(X, dtype=np.float64)
    X = X / power_of_two_scale(X)  # exact: similarities unchanged, squares within float64's range
    if distance == "correlation":
        X = X - X.mean(axis=1, keepdims=True)
    elif distance != "cosine":
        raise ValueError(f"distance must be 'cosine' or 'correlation', got {distance!r}.")
    norms = np.linalg.norm(X, axis=1)
    if (norms == 0).any():
        raise ValueError(
            f"{int((norms == 0).sum())} rows of X are constant or zero, so their {distance} similarity is undefined. "
            "Remove them first."
        )
    return X / norms[:, None]


def _map_p_values(
    queries: pd.DataFrame, codes: np.ndarray, observed: np.ndarray, null_size: int, seed: int
) -> np.ndarray:
    """p-value of each perturbation's mAP, with copairs' null (``map.get_map_pvalue``).

    Null mAP number ``s`` of a perturbation is the mean over its queries of null AP number ``s`` of each query's
    (n_positives, n_total) configuration; p = (1 + #{null mAP > observed}) / (1 + null_size), a null mAP within
    1e-12 of the observed one counting as a tie (not above).
    """
    configs, config_of_query = np.unique(queries[["n_positives", "n_total"]].to_numpy(), axis=0, return_inverse=True)
    nulls = np.stack([null_average_precision(k, n, null_size, seed) for k, n in configs])
    weights = sparse.csr_matrix(
        (np.ones(codes.size), (codes, config_of_query.ravel())), shape=(observed.size, configs.shape[0])
    )
    weights = sparse.diags(1.0 / np.asarray(weights.sum(axis=1)).ravel()) @ weights
    p_values = np.empty(observed.size)
    for start in range(0, observed.size, _PERTURBATION_BLOCK):
        stop = min(start + _PERTURBATION_BLOCK, observed.size)
        null_maps = weights[start:stop] @ nulls
        exceed = (null_maps > observed[start:stop, None] + _TIE_TOLERANCE).sum(axis=1)
        p_values[start:stop] = (exceed + 1) / (null_size + 1)
    return p_values


def _summarise(
    queries: pd.DataFrame, perturbation: np.ndarray, *, null_size: int, threshold: float, seed: int
) -> MAPResult:
    """Per-perturbation mAP, p-values and BH correction, and the two summary numbers."""
    if queries.empty:
        raise UndefinedMAPError("No query well has both a positive and a negative: mAP is undefined.")
    codes, labels = pd.factorize(perturbation[queries.index.to_numpy()])
    grouped = queries["average_precision"].groupby(codes)
    observed = grouped.mean().to_numpy()
    p_values = _map_p_values(queries, codes, observed, null_size, seed)
    corrected = benjamini_hochberg(p_values)
    table = pd.DataFrame(
        {
            "mean_average_precision": observed,
            "n_queries": grouped.size().to_numpy(),
            "p_value": p_values,
            "corrected_p_value": corrected,
            "retrieved": corrected < threshold,
        },
        index=pd.Index(labels, name="perturbation"),
    )
    return MAPResult(
        mean_average_precision=float(observed.mean()),
        fraction_retrieved=float(table["retrieved"].mean()),
        per_perturbation=table,
    )


def _check_settings(null_size: int, threshold: float) -> None:
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
    if null_size < 1:
        raise ValueError(f"null_size must be positive, got {null_size}.")


def _validated_inputs(X, perturbation, plate, is_control, well):
    X, arrays = validated_arrays(
        X, {"perturbation": perturbation, "plate": plate, "well": well}, {"is_control": is_control}
    )
    return X, arrays["perturbation"], arrays["plate"], arrays["is_control"], arrays["well"]


def _check_controls_distinct(perturbation: np.ndarray, is_control: np.ndarray) -> None:
    shared = np.intersect1d(perturbation[is_control].astype(str), perturbation[~is_control].astype(str))
    if shared.size:
        raise ValueError(
            f"Perturbation labels {list(shared[:5])} are used by control and non-control wells; give the controls "
            "their own label."
        )


def _check_plates_have_controls(plate: np.ndarray, is_control: np.ndarray) -> None:
    lacking = np.setdiff1d(np.unique(plate[~is_control]), np.unique(plate[is_control]))
    if lacking.size:
        shown = ", ".join(map(str, lacking[:10])) + (" ..." if lacking.size > 10 else "")
        raise ValueError(
            f"{lacking.size} plates have no control wells, so their wells have no negatives for mAP (control): "
            f"{shown}. Remove those plates or use map_no_rep."
        )


def _has_replicates(perturbation: np.ndarray) -> np.ndarray:
    codes = pd.factorize(perturbation)[0]
    return np.bincount(codes)[codes] > 1
