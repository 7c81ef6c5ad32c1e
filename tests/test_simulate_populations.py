import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

import cpembed as cpe

SMALL = {
    "n_sources": 4,
    "n_batches_per_source": 1,
    "n_plates_per_batch": 2,
    "plate_format": 96,
    "n_compounds": 60,
    "n_moas": 8,
    "n_features": 300,
}


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return cpe.datasets.simulate_cell_populations(**SMALL, seed=0)


def normalised(adata: ad.AnnData) -> ad.AnnData:
    """Drop non-finite features, then normalise every plate to its DMSO wells (robust z-scores)."""
    adata = adata.copy()
    cpe.pp.drop_nonfinite(adata)
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon")
    return adata


def is_treated(obs: pd.DataFrame) -> np.ndarray:
    return (~obs["Metadata_is_negcon"] & ~obs["Metadata_is_poscon"]).to_numpy()


def source_accuracy(adata: ad.AnnData) -> float:
    """Accuracy of a logistic regression that predicts the source of treated wells of compounds and plates it never saw.

    Trained on the first plate of every source, scored on the second, with the compounds split into two folds.
    """
    treated = is_treated(adata.obs)
    features = np.clip(adata.X[treated], -5, 5)
    sources = adata.obs["Metadata_Source"].to_numpy()[treated]
    compounds = adata.obs["Metadata_Compound"].to_numpy()[treated]
    first_plate = adata.obs["Metadata_Plate"].astype(str).str.endswith("plate1").to_numpy()[treated]
    scores = []
    for train, test in GroupKFold(n_splits=2).split(features, sources, compounds):
        train, test = train[first_plate[train]], test[~first_plate[test]]
        classifier = LogisticRegression(max_iter=2000).fit(features[train], sources[train])
        scores.append(classifier.score(features[test], sources[test]))
    return float(np.mean(scores))


def mean_correlations(adata: ad.AnnData, source: str) -> dict[str, float]:
    """Mean correlation between treated wells of one source: same or other compound, same or other MoA."""
    rows = np.flatnonzero(is_treated(adata.obs) & (adata.obs["Metadata_Source"] == source).to_numpy())
    correlation = np.corrcoef(np.clip(adata.X[rows], -10, 10))
    compound = adata.obs["Metadata_Compound"].to_numpy()[rows]
    moa = adata.obs["Metadata_moa"].to_numpy()[rows]
    pairs = np.triu(np.ones_like(correlation, dtype=bool), 1)
    same_compound = compound[:, None] == compound[None, :]
    same_moa = moa[:, None] == moa[None, :]
    return {
        "same_compound": correlation[pairs & same_compound].mean(),
        "other_compound": correlation[pairs & ~same_compound].mean(),
        "same_moa_other_compound": correlation[pairs & same_moa & ~same_compound].mean(),
        "other_moa": correlation[pairs & ~same_moa].mean(),
    }


def test_layout_equals_simulate_profiles(small):
    profiles = cpe.datasets.simulate_profiles(**SMALL, seed=0)
    pd.testing.assert_frame_equal(small.obs, profiles.obs)
    pd.testing.assert_frame_equal(small.var, profiles.var)
    assert small.X.dtype == np.float32
    assert small.obsm["true_biology"].shape == (small.n_obs, 16)
    params = small.uns["simulate_cell_populations"]["params"]
    assert params["n_states"] == 8
    assert params["seed"] == 0
    assert params["n_features"] == 300


def test_controls_on_every_plate_and_compounds_in_some_sources(small):
    per_plate = small.obs.groupby("Metadata_Plate", observed=True)
    assert (per_plate["Metadata_is_negcon"].sum() == 8).all()
    poscons = small.obs[small.obs["Metadata_is_poscon"]].groupby("Metadata_Plate", observed=True)["Metadata_Compound"]
    assert len(poscons) == small.obs["Metadata_Plate"].nunique()
    assert (poscons.nunique() == 8).all()
    treated = small.obs[is_treated(small.obs)]
    sources_per_compound = treated.groupby("Metadata_Compound", observed=True)["Metadata_Source"].nunique()
    assert sources_per_compound.size == SMALL["n_compounds"]
    assert (sources_per_compound == 1).sum() > SMALL["n_compounds"] / 2
    assert (sources_per_compound > 1).any()


def test_reproducible_by_seed(small):
    again = cpe.datasets.simulate_cell_populations(**SMALL, seed=0)
    np.testing.assert_array_equal(again.X, small.X)
    np.testing.assert_array_equal(again.obsm["true_biology"], small.obsm["true_biology"])
    other = cpe.datasets.simulate_cell_populations(**SMALL, seed=1)
    assert not np.array_equal(other.X, small.X, equal_nan=True)
    profiles = cpe.datasets.simulate_profiles(**SMALL, seed=0)
    assert not np.allclose(profiles.X, small.X, equal_nan=True)


def test_raw_values_positive_and_correlations_bounded(small):
    finite = np.isfinite(small.X)
    bounded = (small.var["measurement"] == "Correlation").to_numpy()
    correlations = small.X[:, bounded][finite[:, bounded]]
    others = small.X[:, ~bounded][finite[:, ~bounded]]
    assert (others > 0).all()
    assert ((correlations > 0) & (correlations < 1)).all()
    # Levels span CellProfiler's range, from intensities on a 0-1 scale to areas in pixels.
    medians = np.nanmedian(np.where(finite, small.X, np.nan), axis=0)[~bounded]
    assert medians.min() < 0.2
    assert medians.max() > 100


def test_nonfinite_fraction():
    adata = cpe.datasets.simulate_cell_populations(**SMALL, nonfinite_fraction=0.01)
    broken = ~np.isfinite(adata.X)
    tolerance = 4 * np.sqrt(adata.X.size * 0.01 * 0.99)
    assert abs(broken.sum() - 0.01 * adata.X.size) < tolerance
    assert np.isnan(adata.X).sum() > np.isinf(adata.X).sum() > 0
    clean = cpe.datasets.simulate_cell_populations(**SMALL, nonfinite_fraction=0.0)
    assert np.isfinite(clean.X).all()


def test_replicates_and_moas_agree_after_normalisation(small):
    normalised_small = normalised(small)
    sources = normalised_small.obs["Metadata_Source"].cat.categories
    correlations = pd.DataFrame([mean_correlations(normalised_small, source) for source in sources], index=sources)
    assert (correlations["same_compound"] > correlations["other_compound"] + 0.05).all()
    assert correlations["same_compound"].mean() > correlations["other_compound"].mean() + 0.1
    assert (correlations["same_moa_other_compound"] > correlations["other_moa"]).all()
    assert correlations["same_moa_other_compound"].mean() > correlations["other_moa"].mean() + 0.05


def test_source_survives_per_plate_normalisation():
    # 384-well plates: the 8 DMSO wells of a 96-well plate estimate its normalisation too noisily for a classifier
    # trained on one plate and scored on another.
    study = {**SMALL, "plate_format": 384, "n_compounds": 120}
    chance = 1 / study["n_sources"]
    with_sources = cpe.datasets.simulate_cell_populations(**study, seed=0)
    assert source_accuracy(normalised(with_sources)) > 0.6
    without_sources = cpe.datasets.simulate_cell_populations(**study, seed=0, source_effect=0.0)
    assert source_accuracy(normalised(without_sources)) < chance + 0.15


def test_true_biology(small):
    biology = small.obsm["true_biology"]
    negcon = small.obs["Metadata_is_negcon"].to_numpy()
    poscon = small.obs["Metadata_is_poscon"].to_numpy()
    assert (biology[negcon] == 0).all()
    strength = np.linalg.norm(biology, axis=1)
    assert np.median(strength[poscon]) > 1.5 * np.median(strength[~negcon & ~poscon])
    # A compound has the same biology in every source, batch and well.
    compound = small.obs["Metadata_Compound"].to_numpy()
    for rows in pd.Series(compound).groupby(compound).indices.values():
        np.testing.assert_array_equal(biology[rows], np.broadcast_to(biology[rows[0]], biology[rows].shape))


def test_biology_moves_non_linearly_with_potency(small):
    stronger = cpe.datasets.simulate_cell_populations(**SMALL, seed=0, effect_size=3.0)
    treated = is_treated(small.obs)
    weak, strong = small.obsm["true_biology"][treated], stronger.obsm["true_biology"][treated]
    cosine = np.sum(weak * strong, axis=1) / np.linalg.norm(weak, axis=1) / np.linalg.norm(strong, axis=1)
    # A linear model would scale the effect by 3 along the same direction; the cell-state mixture turns it.
    assert np.median(cosine) < 0.95
    assert not np.allclose(np.linalg.norm(strong, axis=1), 3 * np.linalg.norm(weak, axis=1), rtol=0.05)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_states", 1),
        ("n_sources", 0),
        ("n_latent", 0),
        ("n_moas", 0),
        ("effect_size", -1.0),
        ("source_effect", -0.5),
        ("batch_effect", float("nan")),
        ("shared_compound_fraction", 1.5),
        ("nonfinite_fraction", 1.0),
        ("plate_format", 100),
        ("n_poscon_per_plate", -1),
    ],
)
def test_invalid_arguments_name_the_argument(argument, value):
    with pytest.raises(ValueError, match=argument):
        cpe.datasets.simulate_cell_populations(**{**SMALL, argument: value})
