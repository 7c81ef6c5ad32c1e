"""Classifier scores of the CellPainTR benchmark: how well batch (bad) or label (good) can be predicted.

A random forest is trained on 80% of the wells and scored on the rest with the support-weighted F1
(CellPainTR paper, appendix C.2.2, Eqs. 15–16; reference code ``experiment/metrics.py``, ``perform_classification``).
The forest is scikit-learn's ``RandomForestClassifier(random_state=42)``, grown by :mod:`._forest`, which returns
the same predictions in less time.

References
----------
Breiman, L. Random forests. *Machine Learning* 45, 5–32 (2001).
"""

from __future__ import annotations

import numpy as np

from cpembed._validation import check_finite, check_result_finite

from ._forest import random_forest_predict
from ._inputs import per_sample


def classifier_f1(
    X: np.ndarray,
    y: np.ndarray,
    *,
    test_size: float = 0.2,
    random_state: int = 42,
    n_estimators: int = 100,
    n_jobs: int | None = None,
) -> float:
    """Weighted F1 of a random forest predicting ``y`` from ``X`` on a held-out split.

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features), finite and within float32's range (the forest works in float32).
    y
        Class of each sample (at least two classes).
    test_size
        Held-out fraction (CellPainTR reference code: 0.2).
    random_state
        Seed of the split and of the forest (CellPainTR reference code: 42).
    n_estimators
        Trees in the forest (scikit-learn's default, used by the reference code).
    n_jobs
        Trees grown in parallel; the result does not depend on it.

    Returns
    -------
    The support-weighted F1 score on the held-out samples.
    """
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    X = np.asarray(X)
    check_finite(X, "X")
    with np.errstate(over="ignore"):
        check_result_finite(X.astype(np.float32), "X in float32, as the random forest reads it,")
    y = per_sample(y, X.shape[0], "y")
    if len(np.unique(y)) < 2:
        raise ValueError("The classifier needs at least two classes.")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=random_state)
    predicted = random_forest_predict(
        X_train, y_train, X_test, n_estimators=n_estimators, random_state=random_state, n_jobs=n_jobs
    )
    return float(f1_score(y_test, predicted, average="weighted"))


def batch_classifier(
    X: np.ndarray,
    batch: np.ndarray,
    *,
    test_size: float = 0.2,
    random_state: int = 42,
    n_estimators: int = 100,
    n_jobs: int | None = None,
) -> float:
    """Batch-correction score ``1 - F1`` of a random forest predicting the batch (CellPainTR Eq. 15).

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features).
    batch
        Batch of each sample.
    test_size
        Held-out fraction (CellPainTR reference code: 0.2).
    random_state
        Seed of the split and of the forest (CellPainTR reference code: 42).
    n_estimators
        Trees in the forest (scikit-learn's default, used by the reference code).
    n_jobs
        Trees grown in parallel; the result does not depend on it.

    Returns
    -------
    ``1 - weighted F1``; higher means batches are harder to tell apart.
    """
    return 1.0 - classifier_f1(
        X, batch, test_size=test_size, random_state=random_state, n_estimators=n_estimators, n_jobs=n_jobs
    )


def bio_information(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    test_size: float = 0.2,
    random_state: int = 42,
    n_estimators: int = 100,
    n_jobs: int | None = None,
) -> float:
    """Biological-information score: weighted F1 of a random forest predicting the label (CellPainTR Eq. 16).

    Parameters
    ----------
    X
        Array of shape (n_samples, n_features).
    labels
        Label (e.g. MoA or compound) of each sample.
    test_size
        Held-out fraction (CellPainTR reference code: 0.2).
    random_state
        Seed of the split and of the forest (CellPainTR reference code: 42).
    n_estimators
        Trees in the forest (scikit-learn's default, used by the reference code).
    n_jobs
        Trees grown in parallel; the result does not depend on it.

    Returns
    -------
    The weighted F1; higher means labels are easier to predict.
    """
    return classifier_f1(
        X, labels, test_size=test_size, random_state=random_state, n_estimators=n_estimators, n_jobs=n_jobs
    )
