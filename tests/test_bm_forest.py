"""The benchmark's random forest against scikit-learn's RandomForestClassifier: the same predictions, exactly."""

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

import cpembed as cpe
from cpembed.bm._forest import random_forest_predict


def sklearn_predict(X_train, y_train, X_test, *, n_estimators=100, random_state=42):
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=random_state)
    return forest.fit(X_train, y_train).predict(X_test)


@pytest.fixture(scope="module")
def bbbc021():
    adata = cpe.datasets.bbbc021()
    cpe.pp.drop_nonfinite(adata)
    return adata


@pytest.mark.parametrize("label", ["Metadata_Batch", "Metadata_moa"])
def test_bbbc021_features_predict_as_sklearn(bbbc021, label):
    """Raw CellProfiler features: integer-valued counts and areas give ties and features constant in a node."""
    X = np.asarray(bbbc021.X, dtype=np.float64)
    y = bbbc021.obs[label].astype(str).to_numpy()
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=42)
    expected = sklearn_predict(X_train, y_train, X_test)
    np.testing.assert_array_equal(random_forest_predict(X_train, y_train, X_test), expected)
    # Predicting the training wells exercises every leaf reached by the bootstrap samples.
    np.testing.assert_array_equal(
        random_forest_predict(X_train, y_train, X_train), sklearn_predict(X_train, y_train, X_train)
    )


def test_simulated_embedding_predicts_as_sklearn_for_any_seed_and_n_jobs():
    adata = cpe.datasets.simulate_profiles(3, 2, 2, n_compounds=60, n_moas=12, n_features=60, seed=3)
    cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    X = np.asarray(adata.X)[:, :16]
    y = adata.obs["Metadata_moa"].astype(str).to_numpy()
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0)
    for seed in (0, 42):
        expected = sklearn_predict(X_train, y_train, X_test, n_estimators=30, random_state=seed)
        for n_jobs in (None, 2):
            observed = random_forest_predict(
                X_train, y_train, X_test, n_estimators=30, random_state=seed, n_jobs=n_jobs
            )
            np.testing.assert_array_equal(observed, expected)


def test_near_ties_duplicates_and_constant_features():
    """Values closer than scikit-learn's float32 tie tolerance, rows repeated with other classes, a constant column."""
    rng = np.random.default_rng(0)
    X = (0.7 + 1e-7 * rng.integers(0, 5, size=(400, 6))).astype(np.float32)
    X[:, 2] = 1.0
    X[200:] = X[:200]
    y = rng.integers(0, 3, 400)
    X_test = X[::3] + np.float32(3e-8)
    np.testing.assert_array_equal(
        random_forest_predict(X, y, X_test, n_estimators=20), sklearn_predict(X, y, X_test, n_estimators=20)
    )


def test_input_errors():
    X = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same columns"):
        random_forest_predict(X, np.arange(10), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        random_forest_predict(np.full((10, 3), np.nan), np.arange(10), X)
    with pytest.raises(ValueError, match="n_jobs == 0"):
        random_forest_predict(X, np.arange(10) % 2, X, n_jobs=0)
