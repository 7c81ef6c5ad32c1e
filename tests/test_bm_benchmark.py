"""cpe.bm.benchmark and cpe.pl.benchmark_table on real BBBC021 profiles and simulated JUMP-like profiles."""

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

import cpembed as cpe
from cpembed import bm

KEYS = {
    "batch_key": "Metadata_Batch",
    "label_key": "Metadata_moa",
    "perturbation_key": "Metadata_Compound",
    "plate_key": "Metadata_Plate",
    "control_key": "Metadata_is_negcon",
}
FAST = ["graph_connectivity", "silhouette_batch", "silhouette_label", "kbet", "ilisi", "clisi", "leiden_nmi"]


@pytest.fixture(scope="module")
def table(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    result = bm.benchmark(adata, ["X_pca", "X_pca5"], **KEYS, null_size=2000, progress=False)
    return adata, result


def test_table_has_the_published_columns(table, tmp_path):
    adata, result = table
    assert list(result.index) == ["X_pca", "X_pca5"]
    assert list(result.columns) == list(bm.METRIC_COLUMNS) + list(bm.SCORE_COLUMNS)
    assert result.notna().all().all()
    assert ((result >= 0) & (result <= 1)).all().all()
    pd.testing.assert_frame_equal(adata.uns["cpe_benchmark"]["results"], result)
    adata.write_h5ad(tmp_path / "benchmarked.h5ad")  # the table and its settings survive a round trip through h5ad
    record = ad.read_h5ad(tmp_path / "benchmarked.h5ad").uns["cpe_benchmark"]
    pd.testing.assert_frame_equal(record["results"], result)
    assert record["params"]["null_size"] == 2000


def test_stored_table_carries_the_settings_that_made_it(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    settings = {"metric": "cosine", "null_size": 300, "leiden_seed": 7, "graph_neighbors": 10, "threshold": 0.1}
    wells = np.ones(adata.n_obs, dtype=bool)
    wells[:5] = False
    bm.benchmark(adata, "X_pca5", **KEYS, **settings, metrics=FAST, wells=wells, key_added="scores", progress=False)
    params = adata.uns["scores"]["params"]
    assert {name: params[name] for name in settings} == settings
    assert {name: params[name] for name in KEYS} == KEYS
    assert params["n_wells"] == adata.n_obs - 5
    assert params["classifier_seed"] == 42
    assert params["kbet_neighbors"] == 50
    assert "well_key" not in params  # None is left out, so the record can be written to .h5ad
    assert "n_jobs" not in params  # the scores do not depend on it
    assert list(adata.uns["scores"]["results"].index) == ["X_pca5"]


def test_table_equals_the_metric_functions_under_the_protocol(bbbc021_standardized, table):
    _, result = table
    X = bbbc021_standardized.obsm["X_pca"]
    obs = bbbc021_standardized.obs
    control = obs["Metadata_is_negcon"].to_numpy()
    treated = ~control
    moa, week = obs["Metadata_moa"].to_numpy().astype(str), obs["Metadata_Batch"].to_numpy().astype(str)
    neighbors = bm.nearest_neighbors(X[treated], 90)  # controls left out of the graph and silhouette metrics
    leiden = bm.leiden_nmi_ari(neighbors.subset(15), moa[treated])
    with_control_class = np.where(control, bm._benchmark.CONTROL_CLASS, moa)
    map_control = bm.map_control(X, obs["Metadata_Compound"], obs["Metadata_Plate"], control, null_size=2000)
    map_no_rep = bm.map_no_rep(X, obs["Metadata_Compound"], obs["Metadata_Plate"], control, null_size=2000)
    expected = {
        "graph_connectivity": bm.graph_connectivity(neighbors.subset(15), moa[treated]),
        "silhouette_batch": bm.silhouette_batch(X[treated], moa[treated], week[treated]),
        "batch_classifier_control": bm.batch_classifier(X, week),
        "batch_classifier_no_control": bm.batch_classifier(X[treated], week[treated]),
        "leiden_nmi": leiden.nmi,
        "leiden_ari": leiden.ari,
        "silhouette_label": bm.silhouette_label(X[treated], moa[treated]),
        "map_control": map_control.mean_average_precision,
        "map_no_rep": map_no_rep.mean_average_precision,
        "bio_info_control": bm.bio_information(X, with_control_class),
        "bio_info_no_control": bm.bio_information(X[treated], moa[treated]),
        "kbet": bm.kbet_per_label(neighbors.subset(50), week[treated], moa[treated]),
        "ilisi": bm.ilisi(neighbors, week[treated]),
        "clisi": bm.clisi(neighbors, moa[treated]),
        "map_control_fraction_retrieved": map_control.fraction_retrieved,
        "map_no_rep_fraction_retrieved": map_no_rep.fraction_retrieved,
    }
    for column, value in expected.items():
        assert result.loc["X_pca", column] == pytest.approx(value, abs=1e-12), column


def test_aggregates_follow_the_papers(table):
    _, result = table
    row = result.loc["X_pca"]
    # CellPainTR appendix C.2.5, Eqs. 21-23.
    batch = np.mean(
        [row.graph_connectivity, row.silhouette_batch, row.batch_classifier_control, row.batch_classifier_no_control]
    )
    bio = np.mean(
        [
            row.leiden_nmi,
            row.leiden_ari,
            row.silhouette_label,
            row.map_control,
            row.map_no_rep,
            row.bio_info_control,
            row.bio_info_no_control,
        ]
    )
    assert row.batch_score == pytest.approx(batch, abs=1e-12)
    assert row.bio_score == pytest.approx(bio, abs=1e-12)
    assert row.overall_score == pytest.approx((batch + bio) / 2, abs=1e-12)
    # Arevalo et al. 2024: 0.4 batch + 0.6 bio over their metric set.
    jump_batch = np.mean([row.graph_connectivity, row.silhouette_batch, row.kbet, row.ilisi])
    jump_bio = np.mean(
        [row.leiden_nmi, row.leiden_ari, row.silhouette_label, row.clisi, row.map_control, row.map_no_rep]
    )
    assert row.total_score == pytest.approx(0.4 * jump_batch + 0.6 * jump_bio, abs=1e-12)


def test_benchmark_leaves_adata_unchanged_but_uns(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    before = (
        adata.obs.copy(),
        adata.X.copy(),
        {key: value.copy() for key, value in adata.obsm.items()},
        set(adata.uns),
    )
    result = bm.benchmark(adata, "X_pca5", **KEYS, metrics=["graph_connectivity"], progress=False, key_added="bench")
    pd.testing.assert_frame_equal(adata.obs, before[0])
    np.testing.assert_array_equal(adata.X, before[1])
    assert adata.obsm.keys() == before[2].keys()
    assert set(adata.uns) - before[3] == {"bench"}
    assert result["graph_connectivity"].notna().all()
    assert result.drop(columns="graph_connectivity").isna().all().all()  # not computed, so no aggregate either


def test_a_batch_corrected_embedding_scores_better_on_simulated_profiles():
    adata = cpe.datasets.simulate_profiles(
        n_sources=2,
        n_batches_per_source=2,
        n_plates_per_batch=1,
        plate_format=96,
        n_compounds=20,
        n_moas=4,
        n_features=100,
        seed=0,
    )
    cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    adata = adata[~adata.obs["Metadata_is_poscon"].to_numpy()].copy()
    pcs = PCA(10, random_state=0).fit_transform(np.asarray(adata.X, dtype=np.float64))
    source = adata.obs["Metadata_Source"].to_numpy()
    centred = pcs.copy()
    for name in np.unique(source):  # remove each source's mean: a crude batch correction
        centred[source == name] -= pcs[source == name].mean(axis=0)
    adata.obsm["X_pca"], adata.obsm["X_centred"] = pcs, centred
    keys = {**KEYS, "batch_key": "Metadata_Source"}
    result = bm.benchmark(adata, ["X_pca", "X_centred"], **keys, metrics=FAST, progress=False)
    assert result.loc["X_centred", "ilisi"] > result.loc["X_pca", "ilisi"]
    assert result.loc["X_centred", "silhouette_batch"] > result.loc["X_pca", "silhouette_batch"]


def test_bad_input_gets_clear_errors(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    with pytest.raises(KeyError, match="Metadata_Nope"):
        bm.benchmark(adata, "X_pca", **{**KEYS, "batch_key": "Metadata_Nope"}, progress=False)
    with pytest.raises(KeyError, match="X_missing"):
        bm.benchmark(adata, ["X_pca", "X_missing"], **KEYS, progress=False)
    adata.obsm["X_nan"] = adata.obsm["X_pca"].copy()
    adata.obsm["X_nan"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"adata.obsm\['X_nan'\] contains 1 NaN"):
        bm.benchmark(adata, "X_nan", **KEYS, progress=False)
    adata.obs["one_batch"] = "Week1"
    with pytest.raises(ValueError, match="single batch"):
        bm.benchmark(adata, "X_pca", **{**KEYS, "batch_key": "one_batch"}, progress=False)
    adata.obs["flag_as_text"] = adata.obs["Metadata_is_negcon"].astype(str)
    with pytest.raises(TypeError, match="must be boolean"):
        bm.benchmark(adata, "X_pca", **{**KEYS, "control_key": "flag_as_text"}, progress=False)
    with pytest.raises(ValueError, match="Unknown metrics"):
        bm.benchmark(adata, "X_pca", **KEYS, metrics=["graph_conn"], progress=False)
    adata.obs["moa_with_gap"] = adata.obs["Metadata_moa"].astype(object)
    adata.obs.loc[adata.obs.index[~adata.obs["Metadata_is_negcon"]][0], "moa_with_gap"] = None
    with pytest.raises(ValueError, match="missing for 1 non-control wells"):
        bm.benchmark(adata, "X_pca", **{**KEYS, "label_key": "moa_with_gap"}, progress=False)


def test_benchmark_table_draws(table, tmp_path):
    import matplotlib.pyplot as plt

    _, result = table
    path = tmp_path / "table.png"
    fig = cpe.pl.benchmark_table(result, save=str(path), return_fig=True)
    assert path.stat().st_size > 10_000
    ax = fig.axes[0]
    n_metrics = sum(
        column in result
        for group in ("Batch correction", "Bio conservation")
        for column in cpe.pl._benchmark_table.COLUMN_GROUPS[group]
    )
    assert sum(len(c.get_offsets()) for c in ax.collections) == n_metrics * len(result)  # one circle per value
    labels = [text.get_text() for text in ax.texts]
    best = result["overall_score"].idxmax()
    assert labels.index(best) < labels.index(result["overall_score"].idxmin())  # best method on top
    plt.close(fig)
    _, own_ax = plt.subplots()
    assert cpe.pl.benchmark_table(result[["graph_connectivity", "overall_score"]], ax=own_ax) is None
    with pytest.raises(ValueError, match="no metric column"):
        cpe.pl.benchmark_table(pd.DataFrame({"other": [1.0]}), show=False)


def test_well_key_restricts_only_the_control_map():
    """Same-position replicates are excluded from the control mAP only, as in the JUMP benchmark."""
    adata = cpe.datasets.simulate_profiles(n_sources=2, n_batches_per_source=1, n_plates_per_batch=2, n_features=40)
    cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    obs = adata.obs
    result = bm.benchmark(
        adata,
        "X",
        **{**KEYS, "batch_key": "Metadata_Source"},
        well_key="Metadata_Well",
        metrics=["map_control", "map_no_rep"],
        null_size=500,
        progress=False,
    )
    arrays = (
        np.asarray(adata.X),
        obs["Metadata_Compound"],
        obs["Metadata_Plate"],
        obs["Metadata_is_negcon"].to_numpy(),
    )
    with_well = bm.map_control(*arrays, well=obs["Metadata_Well"], null_size=500)
    assert result.loc["X", "map_control"] == pytest.approx(with_well.mean_average_precision, abs=1e-12)
    assert result.loc["X", "map_no_rep"] == pytest.approx(bm.map_no_rep(*arrays, null_size=500).mean_average_precision)


def test_constant_embedding_scores_below_pca(bbbc021_standardized):
    """A collapsed embedding: ties never favour positives, its bio metrics sit at chance and it ranks below PCA."""
    adata = bbbc021_standardized.copy()
    adata.obsm["X_constant"] = np.ones((adata.n_obs, 20))
    with pytest.warns(UserWarning, match=r"adata.obsm\['X_constant'\] places every scored well at the same point"):
        result = bm.benchmark(adata, ["X_pca", "X_constant"], **KEYS, null_size=500, progress=False)
    assert result.notna().all().all()
    assert ((result >= 0) & (result <= 1)).all().all()
    pca, constant = result.loc["X_pca"], result.loc["X_constant"]
    assert constant["map_control_fraction_retrieved"] == constant["map_no_rep_fraction_retrieved"] == 0.0
    for column in ("map_control", "map_no_rep", "leiden_ari", "bio_score", "overall_score", "total_score"):
        assert constant[column] < pca[column], column
    assert constant["leiden_ari"] < 0.05  # chance level: a clustering of a random graph


def test_benchmark_is_unchanged_by_the_embedding_scale(bbbc021_standardized):
    """Embeddings far beyond float32's range, or below its precision, keep their neighbours and silhouettes."""
    adata = bbbc021_standardized.copy()
    adata.obsm["X_huge"] = adata.obsm["X_pca5"] * 2.0**200
    adata.obsm["X_tiny"] = adata.obsm["X_pca5"] * 2.0**-200
    metrics = [*FAST, "leiden_ari", "map_control", "map_no_rep"]
    result = bm.benchmark(adata, ["X_pca5", "X_huge", "X_tiny"], **KEYS, metrics=metrics, null_size=200, progress=False)
    exact = [column for column in metrics if column not in ("ilisi", "clisi")]
    for key in ("X_huge", "X_tiny"):
        pd.testing.assert_series_equal(result.loc[key, exact], result.loc["X_pca5", exact], check_names=False)
        # LISI's kernel search starts from another unit of distance: equal up to its entropy tolerance.
        np.testing.assert_allclose(
            result.loc[key, ["ilisi", "clisi"]], result.loc["X_pca5", ["ilisi", "clisi"]], atol=1e-3
        )


def test_benchmark_refuses_labels_unique_to_each_well(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    adata.obs["well_id"] = adata.obs_names.astype(str)
    with pytest.raises(ValueError, match=r"Every non-control well has a label of its own in adata.obs\['well_id'\]"):
        bm.benchmark(adata, "X_pca", **{**KEYS, "label_key": "well_id"}, progress=False)


def test_benchmark_warns_when_a_metric_is_undefined(bbbc021_standardized):
    """Labels that never span two batches leave the batch silhouette NaN: a warning names the cause."""
    adata = bbbc021_standardized.copy()
    adata.obs["plate_compound"] = adata.obs["Metadata_Plate"].astype(str) + adata.obs["Metadata_Compound"].astype(str)
    options = {**KEYS, "label_key": "plate_compound", "metrics": ["silhouette_batch", "silhouette_label"]}
    with pytest.warns(UserWarning, match=r"silhouette_batch is NaN for 'X_pca', .*: no label has wells in two or more"):
        result = bm.benchmark(adata, "X_pca", **options, progress=False)
    assert np.isnan(result.loc["X_pca", "silhouette_batch"])
    assert result.loc["X_pca", "silhouette_label"] > 0


def test_benchmark_records_an_undefined_map_as_nan(bbbc021_standardized):
    """Wells of one compound have replicates but no other compound on their plates: mAP (no rep) is undefined."""
    adata = bbbc021_standardized.copy()
    obs = adata.obs
    compound = obs.loc[~obs["Metadata_is_negcon"], "Metadata_Compound"].value_counts().index[0]
    wells = (obs["Metadata_Compound"] == compound).to_numpy() | obs["Metadata_is_negcon"].to_numpy()
    options = {**KEYS, "metrics": ["map_control", "map_no_rep"], "wells": wells, "null_size": 500}
    with pytest.warns(UserWarning, match=r"map_no_rep is NaN for 'X_pca', and so are .* on a replicate's plate"):
        result = bm.benchmark(adata, "X_pca", **options, progress=False)
    assert result.loc["X_pca", ["map_no_rep", "map_no_rep_fraction_retrieved"]].isna().all()
    expected = bm.map_control(
        adata.obsm["X_pca"][wells],
        obs["Metadata_Compound"].to_numpy()[wells],
        obs["Metadata_Plate"].to_numpy()[wells],
        obs["Metadata_is_negcon"].to_numpy()[wells],
        null_size=500,
    )
    assert result.loc["X_pca", "map_control"] == pytest.approx(expected.mean_average_precision)


def test_benchmark_refuses_fewer_wells_than_neighbours(bbbc021_standardized):
    adata = bbbc021_standardized.copy()
    n_treated = int((~adata.obs["Metadata_is_negcon"]).sum())
    with pytest.raises(
        ValueError, match=rf"see {n_treated} wells, fewer than the neighbours asked for \(lisi_neighbors"
    ):
        bm.benchmark(adata, "X_pca", **KEYS, metrics=["ilisi"], lisi_neighbors=n_treated + 1, progress=False)
    # Only the selected metrics' neighbours are needed: the kBET setting does not matter for graph connectivity.
    result = bm.benchmark(
        adata, "X_pca", **KEYS, metrics=["graph_connectivity"], kbet_neighbors=n_treated + 1, progress=False
    )
    assert result.loc["X_pca", "graph_connectivity"] > 0
