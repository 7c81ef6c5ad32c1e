"""Random-forest predictions identical to scikit-learn's ``RandomForestClassifier``, grown faster.

The CellPainTR benchmark's four classifier metrics fit scikit-learn random forests with their defaults (100 fully
grown trees, Gini impurity, bootstrap samples, ``sqrt(n_features)`` features drawn per split, ``random_state=42``).
On tens of thousands of wells these forests take most of the benchmark's time. This module grows the same trees and
so returns the same predictions, with two changes that leave every split unchanged:

- each feature is replaced once by the dense rank of its float32 value, together with the largest rank still tied
  with it under scikit-learn's tolerance, so a node's samples are ordered by a radix sort on small integers and
  ties are found without reading the feature values;
- the Gini sums of squared class weights are updated in constant time per candidate split instead of being
  recomputed over all classes.

What scikit-learn's result depends on is reproduced exactly: the seeds it derives for each tree, the bootstrap
counts used as sample weights, the ``rand_r`` stream that draws candidate features (with its bookkeeping of
constant features), ties up to its ``FEATURE_THRESHOLD`` in float32, thresholds halfway between float32 values in
float64, the depth-first growth order, the leaf class fractions and their summation over trees in tree order
(``n_jobs=1`` in scikit-learn). Sums of bootstrap counts are integers, so they are exact in any order. The test suite
checks the predictions against the installed scikit-learn; they were identical with scikit-learn 1.4.2 and 1.9.1,
the range ``pyproject.toml`` allows (a release that changes the tree builder needs this module checked again).

References
----------
Breiman, L. Random forests. *Machine Learning* 45, 5–32 (2001).

Pedregosa, F. et al. Scikit-learn: machine learning in Python. *JMLR* 12, 2825–2830 (2011) (``sklearn/tree/
_splitter.pyx``, ``_partitioner.pyx``, ``_criterion.pyx``, ``_tree.pyx`` and ``sklearn/ensemble/_forest.py``).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

#: scikit-learn's tie tolerance between sorted feature values (a float32 constant, added in float32).
FEATURE_THRESHOLD = np.float32(1e-7)
#: scikit-learn's tolerance for pure nodes and for the impurity decrease (``_tree.pyx``).
EPSILON = float(np.finfo(np.float64).eps)
#: Upper bound of scikit-learn's ``rand_r`` replacement.
RAND_R_MAX = 2147483647
#: Ranges up to which the quicksort finishes with an insertion sort.
_INSERTION_SORT_SIZE = 16
#: Node sizes up to which samples are quicksorted; larger nodes are radix-sorted.
_QUICKSORT_SIZE = 64


def random_forest_predict(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    *,
    n_estimators: int = 100,
    random_state: int = 42,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Predict ``X_test`` with the forest ``RandomForestClassifier(n_estimators, random_state=...)`` fits.

    Parameters
    ----------
    X_train
        Training samples, shape (n_train, n_features); finite values.
    y_train
        Class of each training sample.
    X_test
        Samples to predict, shape (n_test, n_features).
    n_estimators
        Trees in the forest.
    random_state
        Seed of the forest, as an integer (scikit-learn derives every tree's seed from it).
    n_jobs
        Trees grown at once (threads); ``None`` or 1 grows one at a time, -1 uses every core. The result does not
        depend on it.

    Returns
    -------
    The predicted class of each test sample, as scikit-learn's ``predict`` returns it.
    """
    train = np.asarray(X_train, dtype=np.float32)
    test = np.ascontiguousarray(X_test, dtype=np.float32)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"X_train and X_test must be 2-D with the same columns, got {train.shape} and {test.shape}.")
    if not (np.isfinite(train).all() and np.isfinite(test).all()):
        raise ValueError("The random forest needs finite values.")
    classes, codes = np.unique(np.asarray(y_train), return_inverse=True)
    ranked, values = _ranked_features(train)
    n_samples, n_features = train.shape
    max_features = max(1, int(np.sqrt(n_features)))
    seeds = _tree_seeds(random_state, n_estimators)

    def grow_and_predict(seed: int) -> np.ndarray:
        tree_rng = np.random.RandomState(seed)
        weight = np.bincount(tree_rng.randint(0, n_samples, n_samples), minlength=n_samples).astype(np.float64)
        rand_r_state = np.random.RandomState(seed).randint(0, RAND_R_MAX)
        return _grow_and_predict(
            ranked, values, codes.astype(np.int64), weight, len(classes), max_features, rand_r_state, test
        )

    proba = np.zeros((test.shape[0], len(classes)))
    workers = _n_workers(n_jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for seed in seeds:
            pending.append(pool.submit(grow_and_predict, seed))
            if len(pending) > 2 * workers:
                proba += pending.popleft().result()
        while pending:
            proba += pending.popleft().result()
    proba /= n_estimators
    return classes.take(np.argmax(proba, axis=1))


def _tree_seeds(random_state: int, n_estimators: int) -> list[int]:
    """Each tree's seed, drawn as scikit-learn's ``_set_random_states`` draws them."""
    rng = np.random.RandomState(random_state)
    return [int(rng.randint(np.iinfo(np.int32).max)) for _ in range(n_estimators)]


def _n_workers(n_jobs: int | None) -> int:
    import os

    if n_jobs is None:
        return 1
    if n_jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use None, a positive number or -1.")
    return n_jobs


def _ranked_features(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, every sample's dense rank and tie reach, and the sorted distinct values (padded with +inf).

    Returns ``ranked`` of shape (n_features, n_samples), int64, holding ``rank << 32 | reach``: ``rank`` orders the
    distinct float32 values, and ``reach`` is the largest rank whose value is at most ``value + FEATURE_THRESHOLD``
    (added in float32, as scikit-learn does), so two sorted neighbours tie exactly when the next rank is at most the
    previous reach. ``values`` has shape (n_features, n_distinct_max), float32, with ``values[f, rank] == X[i, f]``.
    """
    n_samples, n_features = X.shape
    ranked = np.empty((n_features, n_samples), dtype=np.int64)
    distinct = []
    for feature in range(n_features):
        unique, rank = np.unique(X[:, feature], return_inverse=True)
        reach = np.searchsorted(unique, unique + FEATURE_THRESHOLD, side="right") - 1
        ranked[feature] = (rank.astype(np.int64) << 32) | reach[rank]
        distinct.append(unique)
    values = np.full((n_features, max(map(len, distinct))), np.inf, dtype=np.float32)
    for feature, unique in enumerate(distinct):
        values[feature, : len(unique)] = unique
    return ranked, values


@numba.njit(cache=True, inline="always")
def _rand_int(low: int, high: int, state: np.ndarray) -> int:
    """scikit-learn's ``rand_int``: ``low + our_rand_r(state) % (high - low)`` with its xorshift ``our_rand_r``."""
    mask = np.uint64(0xFFFFFFFF)
    seed = state[0]
    if seed == np.uint64(0):
        seed = np.uint64(1)
    seed ^= (seed << np.uint64(13)) & mask
    seed ^= seed >> np.uint64(17)
    seed ^= (seed << np.uint64(5)) & mask
    state[0] = seed
    return low + np.int64((seed % np.uint64(RAND_R_MAX + 1)) % np.uint64(high - low))


@numba.njit(cache=True)
def _insertion_sort(keys, items, low, high):
    """Sort ``keys[low:high]`` ascending in place, carrying ``items``."""
    for i in range(low + 1, high):
        key, item = keys[i], items[i]
        j = i - 1
        while j >= low and keys[j] > key:
            keys[j + 1] = keys[j]
            items[j + 1] = items[j]
            j -= 1
        keys[j + 1] = key
        items[j + 1] = item


@numba.njit(cache=True)
def _quicksort(keys, items, low, high):
    """Sort ``keys[low:high]`` ascending in place, carrying ``items`` (median-of-three quicksort, explicit stack)."""
    stack = np.empty(128, dtype=np.int64)
    top = 0
    while True:
        while high - low > _INSERTION_SORT_SIZE:
            middle = (low + high) // 2
            a, b, c = keys[low], keys[middle], keys[high - 1]
            pivot = max(min(a, b), min(max(a, b), c))
            i, j = low, high - 1
            while i <= j:
                while keys[i] < pivot:
                    i += 1
                while keys[j] > pivot:
                    j -= 1
                if i <= j:
                    keys[i], keys[j] = keys[j], keys[i]
                    items[i], items[j] = items[j], items[i]
                    i += 1
                    j -= 1
            # Defer the larger part, go on with the smaller one: the stack stays logarithmic.
            if j + 1 - low < high - i:
                stack[top], stack[top + 1] = i, high
                high = j + 1
            else:
                stack[top], stack[top + 1] = low, j + 1
                low = i
            top += 2
        _insertion_sort(keys, items, low, high)
        if top == 0:
            return
        top -= 2
        low, high = stack[top], stack[top + 1]


@numba.njit(cache=True)
def _sort_by_rank(keys, items, m, key_buffer, item_buffer):
    """Sort ``keys[:m]`` (``rank << 32 | reach``, see :func:`_ranked_features`) ascending, carrying ``items[:m]``.

    Nodes up to ``_QUICKSORT_SIZE`` samples are quicksorted, larger ones radix-sorted on bytes (least significant
    first, on the rank bytes only: equal ranks have equal reaches), which is linear in the node size.
    """
    if m <= _INSERTION_SORT_SIZE:
        _insertion_sort(keys, items, 0, m)
        return
    if m <= _QUICKSORT_SIZE:
        _quicksort(keys, items, 0, m)
        return
    largest = 0
    for i in range(m):
        largest = max(largest, keys[i])
    counts = np.empty(256, dtype=np.int64)
    shift = 32
    n_passes = 0
    source_keys, source_items, target_keys, target_items = keys, items, key_buffer, item_buffer
    while shift == 32 or (largest >> shift) > 0:
        counts[:] = 0
        for i in range(m):
            counts[(source_keys[i] >> shift) & 255] += 1
        total = 0
        for digit in range(256):
            count = counts[digit]
            counts[digit] = total
            total += count
        for i in range(m):
            digit = (source_keys[i] >> shift) & 255
            target_keys[counts[digit]] = source_keys[i]
            target_items[counts[digit]] = source_items[i]
            counts[digit] += 1
        source_keys, source_items, target_keys, target_items = target_keys, target_items, source_keys, source_items
        shift += 8
        n_passes += 1
    if n_passes % 2 == 1:
        keys[:m] = source_keys[:m]
        items[:m] = source_items[:m]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _grow_and_predict(ranked, values, y, weight, n_classes, max_features, rand_r_state, X_test):
    """Grow one tree as scikit-learn grows it and return its class fractions for ``X_test``.

    The tree is the one of ``DepthFirstTreeBuilder`` with ``BestSplitter`` and the ``Gini`` criterion; the result has
    shape (n_test, n_classes).
    """
    n_features = ranked.shape[0]
    samples = np.nonzero(weight)[0]
    n_nonzero = samples.size
    weighted_n_samples = weight.sum()
    features = np.arange(n_features)
    constant_features = np.empty(n_features, dtype=np.int64)
    state = np.array([rand_r_state], dtype=np.uint64)

    capacity = 2 * n_nonzero + 1
    node_feature = np.full(capacity, -1, dtype=np.int64)
    node_threshold = np.zeros(capacity)
    node_left = np.full(capacity, -1, dtype=np.int64)
    node_right = np.full(capacity, -1, dtype=np.int64)
    node_leaf = np.full(capacity, -1, dtype=np.int64)
    leaf_values = np.empty((n_nonzero, n_classes))
    n_nodes = 0
    n_leaves = 0

    stack_start = np.empty(capacity, dtype=np.int64)
    stack_end = np.empty(capacity, dtype=np.int64)
    stack_parent = np.empty(capacity, dtype=np.int64)
    stack_is_left = np.empty(capacity, dtype=np.bool_)
    stack_impurity = np.empty(capacity)
    stack_constants = np.empty(capacity, dtype=np.int64)
    stack_start[0], stack_end[0], stack_parent[0], stack_is_left[0] = 0, n_nonzero, -1, False
    stack_impurity[0], stack_constants[0] = np.inf, 0
    top = 1

    # Each sample's class and bootstrap count packed into one integer, carried through the sorts.
    packed = (y << 32) | weight.astype(np.int64)
    keys = np.empty(n_nonzero, dtype=np.int64)
    items = np.empty(n_nonzero, dtype=np.int64)
    key_buffer = np.empty(n_nonzero, dtype=np.int64)
    item_buffer = np.empty(n_nonzero, dtype=np.int64)
    total = np.zeros(n_classes)
    left = np.zeros(n_classes)
    first = True

    while top > 0:
        top -= 1
        start, end = stack_start[top], stack_end[top]
        parent, is_left = stack_parent[top], stack_is_left[top]
        impurity, n_known_constants = stack_impurity[top], stack_constants[top]
        n_node_samples = end - start

        total[:] = 0.0
        weighted_n_node = 0.0
        for p in range(start, end):
            i = samples[p]
            total[y[i]] += weight[i]
            weighted_n_node += weight[i]
        is_leaf = n_node_samples < 2
        total_squares = 0.0
        for c in range(n_classes):
            total_squares += total[c] * total[c]
        if first:
            impurity = 1.0 - total_squares / (weighted_n_node * weighted_n_node)
            first = False
        is_leaf = is_leaf or impurity <= EPSILON

        split_pos = end
        best_feature = 0
        best_threshold = 0.0
        impurity_left = impurity_right = np.inf
        if not is_leaf:
            # --- BestSplitter.node_split_best ---
            best_proxy = -np.inf
            f_i = n_features
            n_found_constants = 0
            n_drawn_constants = 0
            n_total_constants = n_known_constants
            n_visited = 0
            while f_i > n_total_constants and (
                n_visited < max_features or n_visited <= n_found_constants + n_drawn_constants
            ):
                n_visited += 1
                f_j = _rand_int(n_drawn_constants, f_i - n_found_constants, state)
                if f_j < n_known_constants:
                    features[n_drawn_constants], features[f_j] = features[f_j], features[n_drawn_constants]
                    n_drawn_constants += 1
                    continue
                f_j += n_found_constants
                feature = features[f_j]
                feature_ranked = ranked[feature]
                for q in range(n_node_samples):
                    i = samples[start + q]
                    items[q] = packed[i]
                    keys[q] = feature_ranked[i]
                _sort_by_rank(keys, items, n_node_samples, key_buffer, item_buffer)
                feature_values = values[feature]
                if (keys[n_node_samples - 1] >> 32) <= (keys[0] & 0xFFFFFFFF):  # max - min within the tolerance
                    features[f_j], features[n_total_constants] = features[n_total_constants], features[f_j]
                    n_found_constants += 1
                    n_total_constants += 1
                    continue
                f_i -= 1
                features[f_i], features[f_j] = features[f_j], features[f_i]

                left[:] = 0.0
                weighted_left = 0.0
                squares_left = 0.0
                squares_right = total_squares
                for q in range(n_node_samples - 1):
                    # Move sample q to the left child; a split lies before q + 1 unless the values tie.
                    c = items[q] >> 32
                    w = np.float64(items[q] & 0xFFFFFFFF)
                    count_left = left[c]
                    count_right = total[c] - count_left
                    squares_left += 2.0 * w * count_left + w * w
                    squares_right += w * w - 2.0 * w * count_right
                    left[c] = count_left + w
                    weighted_left += w
                    if (keys[q + 1] >> 32) <= (keys[q] & 0xFFFFFFFF):  # tied within the tolerance
                        continue
                    weighted_right = weighted_n_node - weighted_left
                    impurity_left = 1.0 - squares_left / (weighted_left * weighted_left)
                    impurity_right = 1.0 - squares_right / (weighted_right * weighted_right)
                    proxy = -weighted_right * impurity_right - weighted_left * impurity_left
                    if proxy > best_proxy:
                        best_proxy = proxy
                        split_pos = start + q + 1
                        best_feature = feature
                        previous_value = np.float64(feature_values[keys[q] >> 32])
                        best_threshold = previous_value / 2.0 + np.float64(feature_values[keys[q + 1] >> 32]) / 2.0

            improvement = -np.inf
            if split_pos < end:
                feature_values = values[best_feature]
                low, high = start, end
                while low < high:
                    if np.float64(feature_values[ranked[best_feature, samples[low]] >> 32]) <= best_threshold:
                        low += 1
                    else:
                        high -= 1
                        samples[low], samples[high] = samples[high], samples[low]
                left[:] = 0.0
                weighted_left = 0.0
                for p in range(start, split_pos):
                    i = samples[p]
                    left[y[i]] += weight[i]
                    weighted_left += weight[i]
                weighted_right = weighted_n_node - weighted_left
                squares_left = 0.0
                squares_right = 0.0
                for c in range(n_classes):
                    squares_left += left[c] * left[c]
                    squares_right += (total[c] - left[c]) * (total[c] - left[c])
                impurity_left = 1.0 - squares_left / (weighted_left * weighted_left)
                impurity_right = 1.0 - squares_right / (weighted_right * weighted_right)
                improvement = (weighted_n_node / weighted_n_samples) * (
                    impurity
                    - (weighted_right / weighted_n_node * impurity_right)
                    - (weighted_left / weighted_n_node * impurity_left)
                )
            features[:n_known_constants] = constant_features[:n_known_constants]
            constant_features[n_known_constants:n_total_constants] = features[n_known_constants:n_total_constants]
            n_known_constants = n_total_constants
            is_leaf = split_pos >= end or improvement + EPSILON < 0.0

        node = n_nodes
        n_nodes += 1
        if parent >= 0:
            if is_left:
                node_left[parent] = node
            else:
                node_right[parent] = node
        if is_leaf:
            node_leaf[node] = n_leaves
            for c in range(n_classes):
                leaf_values[n_leaves, c] = total[c] / weighted_n_node
            n_leaves += 1
        else:
            node_feature[node] = best_feature
            node_threshold[node] = best_threshold
            stack_start[top], stack_end[top], stack_parent[top], stack_is_left[top] = split_pos, end, node, False
            stack_impurity[top], stack_constants[top] = impurity_right, n_known_constants
            top += 1
            stack_start[top], stack_end[top], stack_parent[top], stack_is_left[top] = start, split_pos, node, True
            stack_impurity[top], stack_constants[top] = impurity_left, n_known_constants
            top += 1

    proba = np.empty((X_test.shape[0], n_classes))
    for i in range(X_test.shape[0]):
        node = 0
        while node_leaf[node] < 0:
            if np.float64(X_test[i, node_feature[node]]) <= node_threshold[node]:
                node = node_left[node]
            else:
                node = node_right[node]
        proba[i] = leaf_values[node_leaf[node]]
    return proba
