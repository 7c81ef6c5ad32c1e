import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import GroupKFold, cross_val_score

import cpembed as cpe
from cpembed.io import parse_feature_names

SMALL = {
    "n_sources": 3,
    "n_batches_per_source": 2,
    "n_plates_per_batch": 1,
    "n_features": 120,
    "n_compounds": 90,
    "n_moas": 6,
}


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return cpe.datasets.simulate_profiles(**SMALL, seed=3)


def robust_mad_normalise(adata: ad.AnnData) -> np.ndarray:
    """Per-plate (x - median) / (1.4826 MAD) with median and MAD from the plate's DMSO wells; NaN/inf set to 0."""
    values = np.where(np.isfinite(adata.X), adata.X, np.nan).astype(np.float64)
    normalised = np.empty_like(values)
    negcon = adata.obs["Metadata_is_negcon"].to_numpy()
    for rows in adata.obs.groupby("Metadata_Plate", observed=True).indices.values():
        controls = values[rows[negcon[rows]]]
        median = np.nanmedian(controls, axis=0)
        mad = 1.4826 * np.nanmedian(np.abs(controls - median), axis=0)
        normalised[rows] = (values[rows] - median) / np.where(mad > 0, mad, 1.0)
    return np.clip(np.nan_to_num(normalised, nan=0.0, posinf=0.0, neginf=0.0), -50, 50)


def accuracy_across_batches(features: np.ndarray, labels: np.ndarray, obs: pd.DataFrame) -> float:
    """Linear classifier accuracy on values clipped to ±5, trained on one batch of every source, tested on another."""
    batch_in_source = obs["Metadata_Batch"].astype(str).str.rsplit("_", n=1).str[1].to_numpy()
    folds = GroupKFold(n_splits=2)
    return cross_val_score(RidgeClassifier(), np.clip(features, -5, 5), labels, cv=folds, groups=batch_in_source).mean()


def test_design_counts_and_obs_columns(small):
    obs = small.obs
    assert small.n_obs == 3 * 2 * 1 * 384
    assert obs["Metadata_Source"].nunique() == 3
    assert obs["Metadata_Batch"].nunique() == 6
    assert obs["Metadata_Plate"].nunique() == 6
    for column in ["Metadata_Source", "Metadata_Microscope", "Metadata_Batch", "Metadata_Plate", "Metadata_Well"]:
        assert isinstance(obs[column].dtype, pd.CategoricalDtype), column
    assert obs["Metadata_is_negcon"].dtype == bool
    assert obs["Metadata_is_poscon"].dtype == bool
    assert small.X.dtype == np.float32
    # 384-well names A01 ... P24, each once per plate, consistent with row and column.
    wells = obs.groupby("Metadata_Plate", observed=True)["Metadata_Well"].agg(lambda w: sorted(w.astype(str)))
    expected = sorted(f"{row}{column:02d}" for row in "ABCDEFGHIJKLMNOP" for column in range(1, 25))
    assert all(list(plate_wells) == expected for plate_wells in wells)
    rebuilt = obs["Metadata_Row"].astype(str) + obs["Metadata_Column"].map("{:02d}".format)
    assert (rebuilt == obs["Metadata_Well"].astype(str)).all()
    # Every source uses one microscope, named as in the JUMP microscope table.
    assert (obs.groupby("Metadata_Source", observed=True)["Metadata_Microscope"].nunique() == 1).all()
    assert dict(obs.groupby("Metadata_Source", observed=True)["Metadata_Microscope"].first()) == {
        "source_1": "Opera Phenix",
        "source_2": "CV8000",
        "source_3": "Opera Phenix",
    }
    # Plates nest in batches, batches in sources.
    assert (obs.groupby("Metadata_Plate", observed=True)["Metadata_Batch"].nunique() == 1).all()
    assert (obs.groupby("Metadata_Batch", observed=True)["Metadata_Source"].nunique() == 1).all()


def test_controls_on_every_plate(small):
    obs = small.obs
    per_plate = obs.groupby("Metadata_Plate", observed=True)
    assert (per_plate["Metadata_is_negcon"].sum() == 32).all()
    assert (per_plate["Metadata_is_poscon"].sum() == 16).all()
    negcon = obs[obs["Metadata_is_negcon"]]
    assert set(negcon["Metadata_Compound"]) == {"DMSO"}
    assert set(negcon["Metadata_moa"]) == {"DMSO"}
    poscon = obs[obs["Metadata_is_poscon"]]
    assert poscon["Metadata_Compound"].nunique() == 8
    assert (poscon.groupby("Metadata_Plate", observed=True)["Metadata_Compound"].nunique() == 8).all()
    assert not (obs["Metadata_is_negcon"] & obs["Metadata_is_poscon"]).any()
    # Each screened compound carries one MoA; DMSO labels are reserved for DMSO.
    treated = obs[~obs["Metadata_is_negcon"] & ~obs["Metadata_is_poscon"]]
    assert (treated.groupby("Metadata_Compound", observed=True)["Metadata_moa"].nunique() == 1).all()
    assert "DMSO" not in set(treated["Metadata_moa"])
    assert treated["Metadata_moa"].nunique() == SMALL["n_moas"]
    assert treated["Metadata_Compound"].nunique() == SMALL["n_compounds"]


def test_some_compounds_in_several_sources(small):
    treated = small.obs[~small.obs["Metadata_is_negcon"] & ~small.obs["Metadata_is_poscon"]]
    sources_per_compound = treated.groupby("Metadata_Compound", observed=True)["Metadata_Source"].nunique()
    assert (sources_per_compound == 1).sum() > len(sources_per_compound) / 2
    assert (sources_per_compound > 1).sum() >= 5
    only_one = cpe.datasets.simulate_profiles(**SMALL, shared_compound_fraction=0.0)
    treated = only_one.obs[~only_one.obs["Metadata_is_negcon"] & ~only_one.obs["Metadata_is_poscon"]]
    assert (treated.groupby("Metadata_Compound", observed=True)["Metadata_Source"].nunique() == 1).all()


def test_feature_names_parse_into_channels_and_compartments(small):
    parsed = parse_feature_names(small.var_names)
    pd.testing.assert_frame_equal(small.var, parsed)
    assert set(parsed["channel"]) - {""} == {"DNA", "ER", "RNA", "AGP", "Mito"}
    assert set(parsed["compartment"]) == {"Cells", "Cytoplasm", "Nuclei"}
    full = parse_feature_names(
        cpe.datasets.simulate_profiles(**{**SMALL, "n_features": 3423, "n_sources": 1}).var_names
    )
    assert set(full["measurement"]) == {
        "AreaShape",
        "Intensity",
        "Texture",
        "Granularity",
        "RadialDistribution",
        "Correlation",
    }
    assert (full.groupby(["compartment", "channel"]).size().drop("", level="channel") > 0).all()
    assert full.groupby(["compartment", "channel"]).ngroups == 3 * 6
    assert full.loc[full["measurement"] == "AreaShape", "channel"].eq("").all()
    correlation = full[full["measurement"] == "Correlation"]
    assert (correlation["channel_2"] != "").all()
    assert (correlation["channel"] != correlation["channel_2"]).all()
    assert full.index.str.contains("_1of4").any()
    assert full.index.is_unique


def test_custom_feature_names():
    names = ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA", "Cells_Correlation_Correlation_ER_RNA"]
    adata = cpe.datasets.simulate_profiles(**{**SMALL, "n_features": names, "n_sources": 1})
    assert list(adata.var_names) == names


def test_96_well_plates():
    adata = cpe.datasets.simulate_profiles(**{**SMALL, "n_compounds": 30}, plate_format=96)
    assert adata.n_obs == 6 * 96
    assert set(adata.obs["Metadata_Well"].astype(str)) == {f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)}
    assert (adata.obs.groupby("Metadata_Plate", observed=True)["Metadata_is_negcon"].sum() == 8).all()


def test_reproducible_by_seed(small):
    again = cpe.datasets.simulate_profiles(**SMALL, seed=3)
    np.testing.assert_array_equal(again.X, small.X)
    np.testing.assert_array_equal(again.obsm["true_biology"], small.obsm["true_biology"])
    pd.testing.assert_frame_equal(again.obs, small.obs)
    other = cpe.datasets.simulate_profiles(**SMALL, seed=4)
    assert not np.array_equal(other.X, small.X, equal_nan=True)
    assert not other.obs["Metadata_Compound"].equals(small.obs["Metadata_Compound"])


def test_raw_values_positive_skewed_and_correlated_like_bbbc021(small):
    finite = np.isfinite(small.X)
    assert (small.X[finite] > 0).all()
    real = cpe.datasets.bbbc021()
    real_dmso = real.X[real.obs["Metadata_is_negcon"].to_numpy()].astype(np.float64)
    first_plate = small.obs["Metadata_Plate"] == small.obs["Metadata_Plate"].cat.categories[0]
    dmso = small.X[(first_plate & small.obs["Metadata_is_negcon"]).to_numpy()].astype(np.float64)
    complete = np.isfinite(dmso).all(axis=0)
    dmso = dmso[:, complete]
    # Per-well CellProfiler means of DMSO wells are mostly right-skewed, in BBBC021 and here.
    real_right_skewed = np.nanmean(stats.skew(real_dmso, axis=0, nan_policy="omit") > 0)
    assert np.mean(stats.skew(dmso, axis=0) > 0) >= real_right_skewed > 0.5
    # Features are redundant: correlations within a dye/compartment group exceed those between groups.
    groups = (small.var["compartment"] + small.var["channel"]).to_numpy()[complete]
    correlation = np.abs(np.corrcoef(np.log(dmso).T))
    upper = np.triu(np.ones_like(correlation, dtype=bool), 1)
    same_group = groups[:, None] == groups[None, :]
    assert correlation[upper & same_group].mean() > 2 * correlation[upper & ~same_group].mean()
    real_correlation = np.abs(np.corrcoef(np.nan_to_num(real_dmso).T))
    real_mean = np.nanmean(real_correlation[np.triu_indices_from(real_correlation, 1)])
    assert 0.5 * real_mean < correlation[upper].mean() < 2 * real_mean


def test_nonfinite_fraction():
    adata = cpe.datasets.simulate_profiles(**SMALL, nonfinite_fraction=0.01)
    broken = ~np.isfinite(adata.X)
    n_entries = adata.X.size
    tolerance = 4 * np.sqrt(n_entries * 0.01 * 0.99)
    assert abs(broken.sum() - 0.01 * n_entries) < tolerance
    assert np.isnan(adata.X).sum() > np.isinf(adata.X).sum() > 0
    clean = cpe.datasets.simulate_profiles(**SMALL, nonfinite_fraction=0.0)
    assert np.isfinite(clean.X).all()


def test_true_biology(small):
    biology = small.obsm["true_biology"]
    negcon = small.obs["Metadata_is_negcon"].to_numpy()
    poscon = small.obs["Metadata_is_poscon"].to_numpy()
    assert (biology[negcon] == 0).all()
    strength = np.linalg.norm(biology, axis=1)
    assert np.median(strength[poscon]) > 2 * np.median(strength[~negcon & ~poscon])
    # Wells of one compound in one batch share the same latent effect.
    keys = small.obs["Metadata_Compound"].astype(str) + small.obs["Metadata_Batch"].astype(str)
    for rows in pd.Series(np.arange(small.n_obs)).groupby(keys.to_numpy()).indices.values():
        np.testing.assert_array_equal(biology[rows], np.broadcast_to(biology[rows[0]], biology[rows].shape))


def test_edge_wells_differ_from_interior():
    def edge_shift(position_effect: float) -> float:
        adata = cpe.datasets.simulate_profiles(**SMALL, position_effect=position_effect, nonfinite_fraction=0.0)
        normalised = robust_mad_normalise(adata)
        rows, columns = adata.obs["Metadata_Row"].astype(str), adata.obs["Metadata_Column"]
        edge = (rows.isin(["A", "P"]) | columns.isin([1, 24])).to_numpy()
        negcon = adata.obs["Metadata_is_negcon"].to_numpy()
        return np.abs(normalised[negcon & edge].mean(0) - normalised[negcon & ~edge].mean(0)).mean()

    assert edge_shift(1.0) > 2 * edge_shift(0.0)


def test_source_survives_per_plate_normalisation_and_moa_is_predictable():
    adata = cpe.datasets.simulate_profiles(**SMALL, seed=1)
    normalised = robust_mad_normalise(adata)
    obs = adata.obs
    sources = obs["Metadata_Source"].to_numpy()
    chance = 1 / SMALL["n_sources"]
    # The source signature learnt on one batch of every source recognises the source in its other batch.
    assert accuracy_across_batches(normalised, sources, obs) > 1.8 * chance
    # Without the source-specific distortions, per-plate normalisation leaves the source unpredictable.
    uniform = cpe.datasets.simulate_profiles(**SMALL, seed=1, source_effect=0.0)
    assert accuracy_across_batches(robust_mad_normalise(uniform), sources, obs) < chance + 0.12
    # MoA is predictable for compounds never seen in training.
    treated = (~obs["Metadata_is_negcon"] & ~obs["Metadata_is_poscon"]).to_numpy()
    moa_accuracy = cross_val_score(
        RidgeClassifier(),
        np.clip(normalised[treated], -5, 5),
        obs["Metadata_moa"].to_numpy()[treated],
        cv=GroupKFold(n_splits=3),
        groups=obs["Metadata_Compound"].to_numpy()[treated],
    ).mean()
    assert moa_accuracy > 3 / SMALL["n_moas"]


def test_chunked_file_equals_in_memory(small, tmp_path):
    path = tmp_path / "study.h5ad"
    backed = cpe.datasets.simulate_profiles(**SMALL, seed=3, path=path, chunk_size=800)
    assert backed.isbacked
    np.testing.assert_array_equal(backed.X[:], small.X)
    np.testing.assert_array_equal(backed.obsm["true_biology"][:], small.obsm["true_biology"])
    pd.testing.assert_frame_equal(backed.obs, small.obs)
    pd.testing.assert_frame_equal(backed.var.astype(str), small.var)
    assert backed.uns["simulate_profiles"]["params"]["seed"] == 3
    backed.file.close()

    reopened = ad.read_h5ad(path, backed="r")
    negcon = reopened[reopened.obs["Metadata_is_negcon"].to_numpy()]
    np.testing.assert_array_equal(negcon.X[:], small.X[small.obs["Metadata_is_negcon"].to_numpy()])
    reopened.file.close()
    np.testing.assert_array_equal(ad.read_h5ad(path).X, small.X)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_sources": 0}, "n_sources must be at least 1"),
        ({"n_plates_per_batch": 0}, "n_plates_per_batch must be at least 1"),
        ({"n_negcon_per_plate": 380}, "leave no well for compounds"),
        ({"n_negcon_per_plate": 0}, "n_negcon_per_plate must be at least 1"),
        ({"plate_format": 1536}, "plate_format must be one of"),
        ({"n_moas": 200}, "cannot exceed n_compounds"),
        ({"n_compounds": 5000}, "treated wells"),
        ({"n_features": 10_000}, "n_features must be between 1 and 3423"),
        ({"nonfinite_fraction": 1.0}, "nonfinite_fraction must lie in"),
        ({"source_effect": -1.0}, "source_effect must be non-negative"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        cpe.datasets.simulate_profiles(**{**SMALL, **arguments})


def test_more_sources_than_jump_reuse_its_microscopes():
    adata = cpe.datasets.simulate_profiles(
        n_sources=12,
        n_batches_per_source=1,
        n_plates_per_batch=1,
        plate_format=96,
        n_compounds=24,
        n_moas=4,
        n_features=10,
    )
    microscopes = adata.obs.groupby("Metadata_Source", observed=True)["Metadata_Microscope"].first()
    assert len(microscopes) == 12
    assert microscopes["source_16"] == microscopes["source_1"] == "Opera Phenix"
