"""Plate-prediction probe against scikit-learn directly; known-relationship recall against a brute-force version."""

import itertools
from functools import cache

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import cpembed as cpe
from cpembed.bm import known_relationship_recall, plate_prediction_probe


@pytest.fixture(autouse=True)
def _one_thread():
    """The data are tiny: thread pools only cost time here (and thrash on a shared machine)."""
    with threadpool_limits(limits=1):
        yield


@cache
def _bbbc021():
    adata = cpe.datasets.bbbc021()
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon", method="standardize")
    return adata


@cache
def _simulated_plates():
    """Four plates of 30 wells with a plate shift; 6 controls per plate."""
    rng = np.random.default_rng(3)
    plate = np.repeat(np.arange(4), 30).astype(str)
    X = rng.normal(size=(120, 8)) + 0.8 * rng.normal(size=(4, 8))[plate.astype(int)]
    is_control = np.tile(np.arange(30) < 6, 4)
    return X, plate, is_control


def _manual_macro_f1(classifier, X, y, seed):
    scores = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        predicted = classifier.fit(X[train], y[train]).predict(X[test])
        scores.append(f1_score(y[test], predicted, average="macro"))
    return np.mean(scores)


@pytest.mark.parametrize("source", ["bbbc021", "simulated"])
def test_plate_probe_equals_sklearn(source):
    if source == "bbbc021":
        # Each BBBC021 plate holds too few wells for 5 folds: the imaging week is the label probed, without Week6
        # (three wells besides the controls), on 16 features to keep the test short.
        adata = _bbbc021()
        adata = adata[adata.obs["Metadata_Batch"] != "Week6"]
        X, plate = adata.X[:, :16], adata.obs["Metadata_Batch"].astype(str).to_numpy()
        is_control = adata.obs["Metadata_is_negcon"].to_numpy()
    else:
        X, plate, is_control = _simulated_plates()
    table = plate_prediction_probe(X, plate, is_control, seed=1).set_index(["classifier", "controls"])
    classifiers = {
        "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "knn": KNeighborsClassifier(n_neighbors=5),
    }
    folds = StratifiedKFold(5, shuffle=True, random_state=1)
    for (name, classifier), (controls, keep) in itertools.product(
        classifiers.items(), [("with", np.ones(len(plate), bool)), ("without", ~is_control)]
    ):
        expected = cross_val_score(classifier, X[keep], plate[keep], cv=folds, scoring="f1_macro")
        assert table.loc[(name, controls), "macro_f1"] == pytest.approx(expected.mean(), abs=1e-12)
        assert table.loc[(name, controls), "macro_f1_std"] == pytest.approx(expected.std(), abs=1e-12)
        assert table.loc[(name, controls), "macro_f1"] == pytest.approx(
            _manual_macro_f1(classifier, X[keep], plate[keep], 1), abs=1e-12
        )
        assert table.loc[(name, controls), "n_wells"] == keep.sum()


def test_plate_probe_sees_a_plate_effect():
    X, plate, is_control = _simulated_plates()
    shifted = plate_prediction_probe(X, plate, is_control)["macro_f1"]
    shuffled = plate_prediction_probe(X, np.random.default_rng(0).permutation(plate), is_control)["macro_f1"]
    assert (shifted > shuffled + 0.3).all()


def test_plate_probe_bad_input():
    X, plate, is_control = _simulated_plates()
    with pytest.raises(ValueError, match="fewer wells than the 5 folds"):
        plate_prediction_probe(X[:-27], plate[:-27], is_control[:-27])
    with pytest.raises(ValueError, match="at least two plates"):
        plate_prediction_probe(X[:30], plate[:30], is_control[:30])
    bad = X.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        plate_prediction_probe(bad, plate, is_control)
    with pytest.raises(ValueError, match="plate has shape"):
        plate_prediction_probe(X, plate[:-1], is_control)


def _brute_force_recall(X, perturbation, known_pairs, fraction):
    consensus = pd.DataFrame(X).groupby(perturbation).mean()
    labels = list(consensus.index)
    profiles = consensus.to_numpy()

    def cosine(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    similarities = {
        frozenset((labels[i], labels[j])): cosine(profiles[i], profiles[j])
        for i, j in itertools.combinations(range(len(labels)), 2)
    }
    lower = np.percentile(list(similarities.values()), 100 * fraction)
    upper = np.percentile(list(similarities.values()), 100 * (1 - fraction))
    recovered = [
        similarities[frozenset(pair)] <= lower or similarities[frozenset(pair)] >= upper
        for pair in known_pairs
        if frozenset(pair) in similarities
    ]
    return np.mean(recovered), len(recovered)


def _moa_pairs(perturbation, moa):
    """Known relationships: every pair of perturbations sharing an MoA annotation."""
    table = pd.DataFrame({"perturbation": perturbation, "moa": moa}).drop_duplicates("perturbation")
    pairs = []
    for _, group in table.groupby("moa"):
        pairs += list(itertools.combinations(group["perturbation"], 2))
    return pairs


@pytest.mark.parametrize("source", ["bbbc021", "lincs"])
@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_known_relationship_recall_equals_brute_force(source, fraction):
    if source == "bbbc021":
        adata = _bbbc021()
        perturbation = adata.obs["Metadata_Compound"].astype(str).to_numpy()
    else:
        adata = cpe.datasets.lincs_plate()
        perturbation = adata.obs["Metadata_broad_sample"].astype(str).to_numpy()
    moa = adata.obs["Metadata_moa"].astype(str).to_numpy()
    is_control = adata.obs["Metadata_is_negcon"].to_numpy()
    pairs = _moa_pairs(perturbation[~is_control], moa[~is_control])
    pairs_with_absent = [*pairs, ("not-a-compound", pairs[0][0])]
    result = known_relationship_recall(
        adata.X, perturbation, pd.DataFrame(pairs_with_absent), is_control=is_control, fraction=fraction
    )
    expected, n_pairs = _brute_force_recall(
        adata.X[~is_control].astype(np.float64), perturbation[~is_control], pairs, fraction
    )
    assert result.recall == pytest.approx(expected, abs=1e-12)
    assert len(result.per_pair) == n_pairs == len(pairs)
    assert result.n_missing == 1
    print(f"{source}: recall of same-MoA pairs at {fraction:.0%} tails = {result.recall:.3f} ({n_pairs} pairs)")


def test_known_relationship_recall_on_planted_pairs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 20))
    centres[1] = centres[0] + 0.01 * rng.normal(size=20)  # a related pair: near-identical profiles
    centres[3] = -centres[2]  # an anti-correlated pair: the bottom tail
    perturbation = np.repeat([f"c{i}" for i in range(40)], 3)
    X = centres[np.repeat(np.arange(40), 3)] + 0.05 * rng.normal(size=(120, 20))
    result = known_relationship_recall(X, perturbation, [("c0", "c1"), ("c2", "c3"), ("c5", "c6")])
    assert result.per_pair["recovered"].tolist()[:2] == [True, True]


def test_known_relationship_recall_bad_input():
    X = np.random.default_rng(0).normal(size=(6, 3))
    perturbation = np.array(["a", "a", "b", "b", "c", "c"])
    with pytest.raises(ValueError, match="with itself"):
        known_relationship_recall(X, perturbation, [("a", "a")])
    with pytest.raises(ValueError, match="None of the known pairs"):
        known_relationship_recall(X, perturbation, [("a", "z")])
    with pytest.raises(ValueError, match="two columns"):
        known_relationship_recall(X, perturbation, [("a", "b", "c")])
    with pytest.raises(ValueError, match="fraction"):
        known_relationship_recall(X, perturbation, [("a", "b")], fraction=0.6)
    with pytest.raises(ValueError, match="perturbation has shape"):
        known_relationship_recall(X, perturbation[:-1], [("a", "b")])
