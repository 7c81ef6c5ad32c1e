"""Probes of image embeddings used by the CWA-MSN paper: plate prediction and known-relationship recall.

References
----------
CWA-MSN: "Efficient cell painting image representation learning via cross-well aligned masked siamese network"
(ICLR 2026 submission), appendix A.3 (plate-prediction probe) and section 4.2 (gene–gene recall).

Celik, S., Hütter, J.-C., Melo Carlos, S., Lazar, N. H., Mohan, R., Tillinghast, C., Biancalani, T., Fay, M. M.,
Earnshaw, B. A. & Haque, I. S. Building, benchmarking, and exploring perturbative maps of transcriptional and
morphological data. *PLOS Computational Biology* 20, e1012463 (2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._inputs import validated_arrays
from ._moa import cosine_similarity_matrix


@dataclass(frozen=True)
class KnownRelationshipRecall:
    """Recall of known perturbation pairs among the most and least similar pairs.

    Attributes
    ----------
    recall
        Fraction of the evaluated known pairs whose similarity lies in either tail.
    lower_threshold, upper_threshold
        The ``fraction`` and ``1 - fraction`` quantiles of all pairs' cosine similarities.
    per_pair
        One row per evaluated known pair: ``perturbation_a``, ``perturbation_b``, ``similarity``, ``recovered``.
    n_missing
        Known pairs left out because a perturbation is absent from the data (or is a control).
    """

    recall: float
    lower_threshold: float
    upper_threshold: float
    per_pair: pd.DataFrame
    n_missing: int


def plate_prediction_probe(
    X: np.ndarray,
    plate: np.ndarray,
    is_control: np.ndarray,
    *,
    n_splits: int = 5,
    n_neighbors: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Cross-validated macro-F1 of classifiers predicting the plate of each well; lower = less batch effect.

    The batch-effect probe of the CWA-MSN paper (appendix A.3, Table 8): a linear classifier and kNN (k = 5)
    predict plate identity with 5-fold cross-validation, on all wells and on the wells without negative controls.
    Here the folds are stratified by plate and shuffled with ``seed``; the linear classifier is a multinomial
    :class:`~sklearn.linear_model.LogisticRegression` on standardised dimensions, kNN is scikit-learn's
    :class:`~sklearn.neighbors.KNeighborsClassifier` (Euclidean), both with scikit-learn's defaults otherwise.

    Parameters
    ----------
    X
        Embeddings or profiles, wells × dimensions.
    plate
        Plate of each well (the label to predict).
    is_control
        Boolean, ``True`` for negative-control wells (left out in the "without controls" rows).
    n_splits
        Cross-validation folds (5, as in the paper).
    n_neighbors
        k of the kNN classifier (5, as in the paper).
    seed
        Seed of the fold assignment.

    Returns
    -------
    Four rows (``classifier`` in {"linear", "knn"} × ``controls`` in {"with", "without"}) with ``macro_f1``
    (mean over folds), ``macro_f1_std`` (over folds) and ``n_wells``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X, plate, is_control = _validated_probe_inputs(X, plate, is_control)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rows = []
    for controls, keep in [("with", np.ones_like(is_control)), ("without", ~is_control)]:
        _check_plates_for_folds(plate[keep], n_splits, controls)
        for name, classifier in _plate_classifiers(n_neighbors).items():
            scores = cross_val_score(classifier, X[keep], plate[keep], cv=folds, scoring="f1_macro")
            rows.append(
                {
                    "classifier": name,
                    "controls": controls,
                    "macro_f1": scores.mean(),
                    "macro_f1_std": scores.std(),
                    "n_wells": int(keep.sum()),
                }
            )
    return pd.DataFrame(rows)


def known_relationship_recall(
    X: np.ndarray,
    perturbation: np.ndarray,
    known_pairs: pd.DataFrame | np.ndarray,
    *,
    is_control: np.ndarray | None = None,
    fraction: float = 0.05,
) -> KnownRelationshipRecall:
    """Recall of known perturbation relationships among the most and the least similar perturbation pairs.

    The relationship benchmark of Celik et al. (2024) as used by the CWA-MSN paper (section 4.2): each
    perturbation's consensus profile is the mean of its wells; cosine similarities are computed between all pairs
    of perturbations; a known pair counts as recovered when its similarity lies in the top or the bottom
    ``fraction`` (5 %, as in both papers) of all pairs' similarities (two-sided: quantiles ``fraction`` and
    ``1 - fraction``). Recall = recovered known pairs / evaluated known pairs.

    Parameters
    ----------
    X
        Embeddings or profiles, wells × dimensions.
    perturbation
        Perturbation label of each well.
    known_pairs
        Known related pairs: a two-column DataFrame or an (n, 2) array of perturbation labels. Pairs naming a
        perturbation absent from the data (or a control) are left out and counted in ``n_missing``; a pair of a
        perturbation with itself is an error.
    is_control
        Boolean, ``True`` for control wells, which are left out; ``None`` keeps every well.
    fraction
        Size of each tail (0.05, as in the papers).

    Returns
    -------
    The recall, both thresholds, the per-pair table and the number of pairs left out.
    """
    if not 0 < fraction < 0.5:
        raise ValueError(f"fraction must lie in (0, 0.5), got {fraction}.")
    if is_control is None:
        is_control = np.zeros(len(perturbation), dtype=bool)
    X, perturbation, is_control = _validated_probe_inputs(X, perturbation, is_control, label_name="perturbation")
    keep = ~is_control
    labels, consensus = _consensus_profiles(X[keep], perturbation[keep])
    if labels.size < 2:
        raise ValueError("Known-relationship recall needs at least two perturbations outside the controls.")
    similarity = cosine_similarity_matrix(consensus, "consensus profiles")
    all_pairs = similarity[np.triu_indices(labels.size, k=1)]
    lower, upper = np.quantile(all_pairs, [fraction, 1 - fraction])

    pairs = _known_pair_array(known_pairs)
    position = pd.Index(labels).get_indexer
    first, second = position(pairs[:, 0]), position(pairs[:, 1])
    present = (first >= 0) & (second >= 0)
    if not present.any():
        raise ValueError("None of the known pairs has both perturbations in the data.")
    pair_similarity = similarity[first[present], second[present]]
    per_pair = pd.DataFrame(
        {
            "perturbation_a": pairs[present, 0],
            "perturbation_b": pairs[present, 1],
            "similarity": pair_similarity,
            "recovered": (pair_similarity <= lower) | (pair_similarity >= upper),
        }
    )
    return KnownRelationshipRecall(
        recall=float(per_pair["recovered"].mean()),
        lower_threshold=float(lower),
        upper_threshold=float(upper),
        per_pair=per_pair,
        n_missing=int((~present).sum()),
    )


def _plate_classifiers(n_neighbors: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "knn": KNeighborsClassifier(n_neighbors=n_neighbors),
    }


def _consensus_profiles(X: np.ndarray, perturbation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean profile of each perturbation (labels in order of first appearance)."""
    codes, labels = pd.factorize(perturbation)
    sums = np.zeros((labels.size, X.shape[1]))
    np.add.at(sums, codes, X)
    return np.asarray(labels), sums / np.bincount(codes)[:, None]


def _known_pair_array(known_pairs: pd.DataFrame | np.ndarray) -> np.ndarray:
    pairs = known_pairs.to_numpy() if isinstance(known_pairs, pd.DataFrame) else np.asarray(known_pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"known_pairs must hold two columns of perturbation labels, got shape {pairs.shape}.")
    if (pairs[:, 0] == pairs[:, 1]).any():
        raise ValueError("known_pairs pairs a perturbation with itself; list pairs of two different perturbations.")
    return pairs


def _check_plates_for_folds(plate: np.ndarray, n_splits: int, controls: str) -> None:
    counts = pd.Series(plate).value_counts()
    if counts.size < 2:
        raise ValueError(f"The plate probe ({controls} controls) needs wells from at least two plates.")
    small = counts[counts < n_splits]
    if small.size:
        raise ValueError(
            f"{small.size} plates have fewer wells than the {n_splits} folds ({controls} controls): "
            f"{', '.join(map(str, small.index[:10]))}. Remove them or lower n_splits."
        )


def _validated_probe_inputs(X, labels, is_control, *, label_name: str = "plate"):
    X, arrays = validated_arrays(X, {label_name: labels}, {"is_control": is_control})
    return X, arrays[label_name], arrays["is_control"]
