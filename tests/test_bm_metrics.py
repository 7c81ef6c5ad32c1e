"""Each batch-correction and clustering metric against an independent computation on real BBBC021 profiles.

References: scikit-learn (silhouettes, exact neighbours, random forest), scib-metrics 0.5 (graph connectivity,
batch silhouette, Leiden NMI/ARI, kBET per label, iLISI, cLISI, UMAP connectivities) run on the same neighbours,
and brute-force versions kept here. Tolerances are stated at each comparison.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

import cpembed as cpe
from cpembed import bm


@pytest.fixture(scope="module")
def bbbc021():
    """BBBC021 treated wells: plate-normalised features, a 20-d PCA embedding, MoA labels and imaging weeks."""
    adata = cpe.datasets.bbbc021()
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon", method="standardize")
    features = np.asarray(adata.X, dtype=np.float64)
    features = features[:, np.isfinite(features).all(axis=0) & (features.std(axis=0) > 0)]
    treated = ~adata.obs["Metadata_is_negcon"].to_numpy()
    pca = PCA(20, random_state=0).fit_transform(features)
    return {
        "features": features[treated],
        "pca": pca[treated],
        "moa": adata.obs["Metadata_moa"].to_numpy()[treated].astype(str),
        "week": adata.obs["Metadata_Batch"].to_numpy()[treated].astype(str),
        "all_pca": pca,
        "all_week": adata.obs["Metadata_Batch"].to_numpy().astype(str),
    }


@pytest.fixture(scope="module")
def neighbors(bbbc021):
    return bm.nearest_neighbors(bbbc021["pca"], 90)


def scib_neighbors(result: bm.NeighborsResult):
    from scib_metrics.nearest_neighbors import NeighborsResults

    return NeighborsResults(indices=result.indices, distances=result.distances.astype(np.float32))


def exact_sklearn_neighbors(X: np.ndarray, n_neighbors: int, random_state: int = 0):
    """Drop-in for scib-metrics' pynndescent: exact neighbours, so both sides search the same graph."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors(X)
    return NeighborsResults(indices=indices, distances=distances.astype(np.float32))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_neighbors_are_exact(bbbc021, metric):
    ours = bm.nearest_neighbors(bbbc021["features"], 30, metric=metric, block_size=100)
    distances, _ = (
        NearestNeighbors(n_neighbors=30, metric=metric, algorithm="brute").fit(bbbc021["features"]).kneighbors()
    )
    np.testing.assert_array_equal(ours.indices[:, 0], np.arange(len(ours.indices)))
    # sklearn leaves the query out; the sets may differ only at exact ties, so compare sorted distances (1e-6).
    np.testing.assert_allclose(ours.distances[:, 1:], distances[:, :29], rtol=1e-6, atol=1e-6)


def test_connectivities_equal_umap(neighbors):
    ours = neighbors.subset(15).connectivities
    reference = scib_neighbors(neighbors).subset_neighbors(15).knn_graph_connectivities.tocsr()
    assert ours.nnz == reference.nnz
    assert abs(ours - reference).max() < 1e-5  # umap works in float32


def test_connectivities_with_duplicated_wells_equal_umap_without_warnings(bbbc021):
    """Exact duplicates put several neighbours at distance 0, below rho: their weight is 1, as in UMAP, and the
    kernel-width search must not overflow on the way."""
    X = np.concatenate([bbbc021["pca"], np.repeat(bbbc021["pca"][:3], 8, axis=0)])
    result = bm.nearest_neighbors(X, 15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = result.connectivities
    reference = scib_neighbors(result).knn_graph_connectivities.tocsr()
    assert ours.nnz == reference.nnz
    assert abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_label_equals_sklearn(bbbc021, metric):
    X, moa = bbbc021["features"], bbbc021["moa"]
    ours = bm.silhouette_samples(X, moa, metric=metric, block_size=64)
    np.testing.assert_allclose(ours, sklearn_silhouette_samples(X, moa, metric=metric), atol=1e-6)
    expected = (sklearn_silhouette_samples(X, moa, metric=metric).mean() + 1) / 2
    assert bm.silhouette_label(X, moa, metric=metric) == pytest.approx(expected, abs=1e-7)


def test_silhouette_batch_equals_scib_and_brute_force(bbbc021):
    import scib_metrics

    # Three MoAs keep scib-metrics' jax compilation (one per label size) short.
    keep = np.isin(bbbc021["moa"], ["Eg5 inhibitors", "Microtubule destabilizers", "DNA replication"])
    X, moa, week = bbbc021["pca"][keep], bbbc021["moa"][keep], bbbc021["week"][keep]
    per_label = []  # brute force: 1 - |sklearn silhouette w.r.t. week| within each MoA seen in two weeks or more
    for label in np.unique(moa):
        mask = moa == label
        if 1 < len(np.unique(week[mask])) < mask.sum():
            per_label.append(np.mean(1 - np.abs(sklearn_silhouette_samples(X[mask], week[mask]))))
    ours = bm.silhouette_batch(X, moa, week)
    assert ours == pytest.approx(np.mean(per_label), abs=1e-6)  # distances formed in float32
    assert ours == pytest.approx(scib_metrics.silhouette_batch(X, moa, week), abs=1e-5)  # jax float32
    assert bm.silhouette_batch(X, moa, week, metric="cosine") == pytest.approx(
        scib_metrics.silhouette_batch(X, moa, week, metric="cosine"), abs=1e-5
    )


def test_graph_connectivity_equals_scib(bbbc021, neighbors):
    import scib_metrics

    for k in (5, 15):
        expected = scib_metrics.graph_connectivity(scib_neighbors(neighbors).subset_neighbors(k), bbbc021["moa"])
        assert bm.graph_connectivity(neighbors.subset(k), bbbc021["moa"]) == pytest.approx(expected, abs=1e-12)


def test_leiden_nmi_ari_equals_scib(bbbc021, neighbors):
    import scib_metrics

    expected = scib_metrics.nmi_ari_cluster_labels_leiden(
        scib_neighbors(neighbors).subset_neighbors(15), bbbc021["moa"]
    )
    ours = bm.leiden_nmi_ari(neighbors.subset(15), bbbc021["moa"])
    assert ours.nmi == pytest.approx(expected["nmi"], abs=1e-9)  # same graph, same seed: same clusters
    assert ours.ari == pytest.approx(expected["ari"], abs=1e-9)
    assert ours.resolution in bm._leiden.DEFAULT_RESOLUTIONS


def test_lisi_equals_scib(bbbc021, neighbors):
    import scib_metrics

    reference = scib_neighbors(neighbors)
    assert bm.ilisi(neighbors, bbbc021["week"]) == pytest.approx(
        scib_metrics.ilisi_knn(reference, bbbc021["week"]),
        abs=1e-5,  # jax float32
    )
    assert bm.clisi(neighbors, bbbc021["moa"]) == pytest.approx(
        scib_metrics.clisi_knn(reference, bbbc021["moa"]), abs=1e-5
    )


def test_lisi_brute_force_on_a_tiny_graph():
    # Two neighbours at equal distance: weights 1/2 each; two labels among them give LISI 2, one label LISI 1.
    neighbors = bm.NeighborsResult(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]]), np.array([[0, 1.0, 1.0]] * 3))
    np.testing.assert_allclose(bm.lisi(neighbors, np.array(["a", "b", "c"]), perplexity=2), [2, 2, 2], atol=1e-4)
    np.testing.assert_allclose(bm.lisi(neighbors, np.array(["a", "b", "b"]), perplexity=2), [1, 2, 2], atol=1e-4)
    np.testing.assert_allclose(bm.lisi(neighbors, np.array(["a", "a", "a"]), perplexity=2), [1, 1, 1], atol=1e-9)


@pytest.mark.slow
def test_kbet_per_label_equals_scib(bbbc021, neighbors, monkeypatch):
    import scib_metrics
    from scib_metrics import nearest_neighbors as scib_nn
    from scib_metrics.utils import _diffusion_nn

    # scib-metrics searches diffusion neighbours with pynndescent (approximate on tiny labels); swap in an exact
    # search so that both sides use the same neighbours, then the per-label scores must agree exactly.
    monkeypatch.setattr(scib_nn, "pynndescent", exact_sklearn_neighbors)
    # scib-metrics weighs the trivial diffusion eigenvalue 1 by 1 only when its float32 value is exactly 1; ARPACK
    # (random start) returns it one ulp low now and then, which weighs that eigenvector ~1e7 and changes kBET from
    # run to run. Snap it to 1 as that code intends, so the reference is deterministic.
    compute_eigen = _diffusion_nn._compute_eigen

    def snapped_eigen(*args, **kwargs):
        values, vectors = compute_eigen(*args, **kwargs)
        return np.where(np.abs(1 - values) < 1e-6, np.float32(1), values).astype(np.float32), vectors

    monkeypatch.setattr(_diffusion_nn, "_compute_eigen", snapped_eigen)
    # scib-metrics 0.5.10 lowers its diffusion-component cap (100) to each label's size - 1 and keeps the lowered cap
    # for the labels after it (in sorted order); name the labels so that they sort from largest to smallest, where
    # that carry-over changes nothing.
    sizes = pd.Series(bbbc021["moa"]).value_counts()
    ranked = {name: f"{rank:02d} {name}" for rank, name in enumerate(sizes.index)}
    moa = np.array([ranked[name] for name in bbbc021["moa"]])
    week = bbbc021["week"]
    subset = neighbors.subset(50)
    expected = scib_metrics.kbet_per_label(scib_neighbors(subset), week, moa)
    assert bm.kbet_per_label(subset, week, moa) == pytest.approx(expected, abs=1e-9)


def test_kbet_brute_force(neighbors, bbbc021):
    from scipy.stats import chi2

    week = bbbc021["week"]
    subset = neighbors.subset(20)
    overall = pd.Series(week).value_counts(normalize=True)
    accepted = []
    for row in subset.indices:
        observed = pd.Series(week[row]).value_counts().reindex(overall.index, fill_value=0)
        expected = overall * len(row)
        statistic = ((observed - expected) ** 2 / expected).sum()
        accepted.append(chi2.sf(statistic, len(overall) - 1) >= 0.05)
    assert bm.kbet(subset, week) == pytest.approx(np.mean(accepted), abs=1e-12)


def test_classifiers_equal_reference_code(bbbc021):
    X, week = bbbc021["all_pca"], bbbc021["all_week"]
    # The CellPainTR reference code's perform_classification, written out.
    X_train, X_test, y_train, y_test = train_test_split(X, week, test_size=0.2, random_state=42)
    forest = RandomForestClassifier(random_state=42).fit(X_train, y_train)
    f1 = f1_score(y_test, forest.predict(X_test), average="weighted")
    assert bm.batch_classifier(X, week) == pytest.approx(1 - f1, abs=1e-12)
    assert bm.bio_information(X, week, n_jobs=2) == pytest.approx(f1, abs=1e-12)


def test_metrics_on_simulated_profiles_separate_mixed_from_split_batches():
    """Simulated wells: a batch shift lowers the batch metrics, leaves the label metrics high."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 60)
    batch = np.tile(np.arange(3), 120)
    centres = rng.normal(scale=6, size=(6, 8))
    mixed = centres[labels] + rng.normal(size=(360, 8))
    split = mixed + 4 * np.eye(8)[batch]
    scores = {}
    for name, X in {"mixed": mixed, "split": split}.items():
        nn = bm.nearest_neighbors(X, 90)
        scores[name] = (
            bm.silhouette_batch(X, labels, batch),
            bm.ilisi(nn, batch),
            bm.kbet_per_label(nn.subset(50), batch, labels),
        )
    assert all(m > s for m, s in zip(scores["mixed"], scores["split"], strict=True))
    assert bm.silhouette_label(mixed, labels) > 0.7
    assert bm.graph_connectivity(bm.nearest_neighbors(mixed, 15), labels) > 0.95


def test_metric_input_errors(bbbc021, neighbors):
    with pytest.raises(ValueError, match="two distinct labels"):
        bm.silhouette_samples(bbbc021["pca"], np.zeros(len(bbbc021["pca"])))
    with pytest.raises(ValueError, match="labels has shape"):
        bm.graph_connectivity(neighbors, bbbc021["moa"][:10])
    with pytest.raises(ValueError, match="only 90 were computed"):
        neighbors.subset(100)
    with pytest.raises(ValueError, match="two classes"):
        bm.batch_classifier(bbbc021["pca"], np.zeros(len(bbbc021["pca"])))
    with pytest.raises(ValueError, match="metric must be"):
        bm.nearest_neighbors(bbbc021["pca"], 5, metric="manhattan")


def test_nearest_neighbors_break_ties_at_random_not_by_row_order():
    """All wells at one point: the neighbours are a seeded random draw, not the first rows of the table."""
    X = np.ones((300, 4))
    result = bm.nearest_neighbors(X, 11)
    np.testing.assert_array_equal(result.indices[:, 0], np.arange(300))
    assert (result.distances == 0).all()
    others = result.indices[:, 1:]
    assert (others != np.arange(300)[:, None]).all()
    assert np.unique(others).size > 250  # row order would pick rows 0-10 for every well
    np.testing.assert_array_equal(bm.nearest_neighbors(X, 11).indices, result.indices)
    assert (bm.nearest_neighbors(X, 11, seed=1).indices != result.indices).any()


def test_kernels_do_not_depend_on_the_unit_of_distance(neighbors, bbbc021):
    """UMAP connectivities and LISI of distances far beyond float32's range, or below its precision."""
    reference = neighbors.subset(15).connectivities
    for scale in (2.0**150, 2.0**-150):
        scaled = bm.NeighborsResult(neighbors.indices, neighbors.distances * scale)
        assert abs(scaled.subset(15).connectivities - reference).max() < 1e-4
        assert bm.ilisi(scaled, bbbc021["week"]) == pytest.approx(bm.ilisi(neighbors, bbbc021["week"]), abs=1e-3)
        assert bm.clisi(scaled, bbbc021["moa"]) == pytest.approx(bm.clisi(neighbors, bbbc021["moa"]), abs=1e-3)


def test_leiden_ari_below_chance_scores_zero(neighbors, bbbc021, monkeypatch):
    monkeypatch.setattr("sklearn.metrics.adjusted_rand_score", lambda labels, clusters: -0.0005)
    assert bm.leiden_nmi_ari(neighbors.subset(15), bbbc021["moa"], resolutions=(1.0,)).ari == 0.0


def test_metrics_refuse_embeddings_with_non_finite_or_float32_overflowing_values(bbbc021):
    X = bbbc021["pca"].copy()
    X[5, 2] = np.inf
    for compute in (
        lambda: bm.nearest_neighbors(X, 5),
        lambda: bm.silhouette_label(X, bbbc021["moa"]),
        lambda: bm.bio_information(X, bbbc021["moa"]),
    ):
        with pytest.raises(ValueError, match="X contains 1 NaN or infinite values"):
            compute()
    with pytest.raises(ValueError, match="X in float32, as the random forest reads it, would hold 1 NaN or infinite"):
        bm.bio_information(np.where(np.isinf(X), 1e39, X), bbbc021["moa"])
