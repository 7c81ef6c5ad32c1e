"""Approximate neighbours and sampled silhouettes of cpe.bm against the exact computations."""

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples

from cpembed import bm
from cpembed.bm import _benchmark, _neighbors

KEYS = {
    "batch_key": "Metadata_Batch",
    "label_key": "Metadata_moa",
    "perturbation_key": "Metadata_Compound",
    "plate_key": "Metadata_Plate",
    "control_key": "Metadata_is_negcon",
}
GRAPH_AND_SILHOUETTES = ["graph_connectivity", "silhouette_batch", "silhouette_label", "kbet", "ilisi", "clisi"]


@pytest.fixture(scope="module")
def treated(bbbc021_standardized):
    """The 20-d PCA embedding of BBBC021's treated wells, with their MoAs and imaging weeks."""
    adata = bbbc021_standardized
    mask = ~adata.obs["Metadata_is_negcon"].to_numpy()
    obs = adata.obs[mask]
    return adata.obsm["X_pca"][mask], obs["Metadata_moa"].astype(str).to_numpy(), obs["Metadata_Batch"].to_numpy()


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_approximate_neighbours_are_nearly_the_exact_ones(treated, metric):
    X = treated[0]
    exact = bm.nearest_neighbors(X, 30, metric=metric, search="exact")
    approximate = bm.nearest_neighbors(X, 30, metric=metric, search="approximate")
    assert (approximate.indices[:, 0] == np.arange(len(X))).all()
    assert (np.diff(approximate.distances, axis=1) >= 0).all()
    recall = np.mean([np.intersect1d(a, b).size / 30 for a, b in zip(exact.indices, approximate.indices, strict=True)])
    assert recall > 0.98
    # The distances listed are the exact ones of the neighbours found, and never beat the exact k-th neighbour.
    rows = np.arange(len(X))[:, None]
    if metric == "euclidean":
        expected = np.linalg.norm(X[approximate.indices] - X[rows], axis=2)
    else:
        unit = X / np.linalg.norm(X, axis=1, keepdims=True)
        expected = 1 - np.einsum("nkd,nd->nk", unit[approximate.indices], unit)
        expected[:, 0] = 0
    np.testing.assert_allclose(approximate.distances, expected, atol=1e-12)
    assert (approximate.distances[:, -1] >= exact.distances[:, -1] - 1e-12).all()


@pytest.mark.slow
def test_approximate_search_puts_each_duplicated_well_first():
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(300, 8)), 3, axis=0)  # every well has two identical twins
    result = bm.nearest_neighbors(X, 10, search="approximate")
    assert (result.indices[:, 0] == np.arange(len(X))).all()
    assert (result.distances[:, :3] == 0).all()
    assert (np.sort(result.indices[:, :3], axis=1) == (np.arange(len(X)) // 3 * 3)[:, None] + np.arange(3)).all()


def test_auto_search_switches_to_approximate_above_the_threshold():
    above = _neighbors.APPROXIMATE_ABOVE
    assert _neighbors.resolve_search("auto", above) == "exact"
    assert _neighbors.resolve_search("auto", above + 1) == "approximate"
    assert _neighbors.resolve_search("exact", above + 1) == "exact"
    with pytest.raises(ValueError, match="search must be 'auto', 'exact' or 'approximate'"):
        _neighbors.resolve_search("fast", 10)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sampled_silhouettes_are_exact_per_well_and_close_on_average(treated, metric):
    X, moa, week = treated
    n_samples = len(X) // 3
    reference = sklearn_silhouette_samples(X, moa, metric=metric)
    sampled = bm.silhouette_label(X, moa, metric=metric, n_samples=n_samples, rescale=False, seed=3)
    drawn = np.sort(np.random.default_rng(3).choice(len(X), size=n_samples, replace=False))
    assert sampled == pytest.approx(reference[drawn].mean(), abs=1e-7)
    # Hoeffding's bound at 99 % for the rescaled score (the module's description).
    bound = np.sqrt(np.log(2 / 0.01) / (2 * n_samples))
    assert abs((sampled + 1) / 2 - (reference.mean() + 1) / 2) < bound
    exact_batch = bm.silhouette_batch(X, moa, week, metric=metric)
    assert bm.silhouette_batch(X, moa, week, metric=metric, n_samples=10**9) == exact_batch
    assert abs(bm.silhouette_batch(X, moa, week, metric=metric, n_samples=40) - exact_batch) < 0.02


def test_silhouette_sample_size_must_be_positive(treated):
    X, moa, _ = treated
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        bm.silhouette_label(X, moa, n_samples=0)


@pytest.mark.slow
def test_benchmark_approximate_mode_agrees_with_exact(bbbc021_standardized, monkeypatch):
    adata = bbbc021_standardized.copy()
    n_samples = int((~adata.obs["Metadata_is_negcon"]).sum()) // 2
    monkeypatch.setattr(_benchmark, "SAMPLED_SILHOUETTES", n_samples)  # sample the silhouettes at this size
    options = {**KEYS, "metrics": GRAPH_AND_SILHOUETTES, "progress": False}
    exact = bm.benchmark(adata, ["X_pca", "X_pca5"], neighbors="exact", **options)
    approximate = bm.benchmark(adata, ["X_pca", "X_pca5"], neighbors="approximate", **options)
    difference = (exact[GRAPH_AND_SILHOUETTES] - approximate[GRAPH_AND_SILHOUETTES]).abs()
    assert (difference["silhouette_label"] > 0).all()  # sampled
    assert (difference["silhouette_label"] < np.sqrt(np.log(2 / 0.01) / (2 * n_samples))).all()
    graph = difference.drop(columns=["silhouette_label", "silhouette_batch"])
    assert (graph < 0.01).all().all(), graph
    params = adata.uns["cpe_benchmark"]["params"]
    assert params["neighbors"] == "approximate"
    assert params["n_jobs"] == 1  # NN-descent's result depends on its threads


def test_benchmark_records_the_search_auto_chose(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    bm.benchmark(adata, "X_pca5", **KEYS, metrics=["graph_connectivity"], progress=False)
    assert adata.uns["cpe_benchmark"]["params"]["neighbors"] == "exact"
    assert "n_jobs" not in adata.uns["cpe_benchmark"]["params"]


def test_benchmark_refuses_an_unknown_neighbour_search(bbbc021_standardized):
    with pytest.raises(ValueError, match="search must be"):
        bm.benchmark(bbbc021_standardized.copy(), "X_pca", neighbors="fast", **KEYS, metrics=["kbet"], progress=False)
