import logging

import harmonypy
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData
from sklearn.metrics import silhouette_score

import cpembed as cpe

BATCH = "Metadata_Batch"
NEGCON = "Metadata_is_negcon"
METHODS = ["combat", "harmony", "sphering"]
KEYS = {"combat": "X_combat", "harmony": "X_harmony", "sphering": "X_sphering"}


def _normalize_per_plate(adata: AnnData) -> AnnData:
    """Robust z-score of every plate against its own DMSO wells (median, MAD × 1.4826), as pycytominer does."""
    values = adata.X.astype(np.float64)
    plates = adata.obs["Metadata_Plate"].to_numpy()
    controls = adata.obs[NEGCON].to_numpy()
    normalized = np.empty_like(values)
    for plate in np.unique(plates):
        rows = plates == plate
        reference = values[rows & controls]
        median = np.median(reference, axis=0)
        spread = 1.4826 * np.median(np.abs(reference - median), axis=0)
        normalized[rows] = (values[rows] - median) / np.maximum(spread, 1e-2)
    out = adata.copy()
    out.X = normalized.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def bbbc021_normalized() -> AnnData:
    return _normalize_per_plate(cpe.datasets.bbbc021())


@pytest.fixture(scope="module")
def bbbc021_pca() -> AnnData:
    """Raw BBBC021 standardised over all wells, so that the week-to-week batch effect stays in the PCA."""
    adata = cpe.datasets.bbbc021()
    adata.X = (adata.X - adata.X.mean(axis=0)) / adata.X.std(axis=0)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    return adata


def _simulate(seed: int = 0, n_batches: int = 3, wells_per_batch: int = 60, n_features: int = 12) -> AnnData:
    """Two biological groups measured in batches that shift and scale every feature; a quarter of wells are DMSO."""
    rng = np.random.default_rng(seed)
    n_wells = n_batches * wells_per_batch
    batch = np.repeat(np.arange(n_batches), wells_per_batch)
    group = rng.integers(0, 2, n_wells)
    biology = rng.normal(0, 2, (2, n_features))[group]
    shift = rng.normal(0, 3, (n_batches, n_features))[batch]
    scale = rng.uniform(0.5, 2.0, (n_batches, n_features))[batch]
    values = shift + scale * (biology + rng.normal(0, 1, (n_wells, n_features)))
    obs = pd.DataFrame(
        {
            BATCH: pd.Categorical([f"B{b}" for b in batch]),
            "group": pd.Categorical([f"g{g}" for g in group]),
            NEGCON: np.arange(n_wells) % 4 == 0,
        },
        index=[f"w{i}" for i in range(n_wells)],
    )
    names = [f"Cells_Intensity_MeanIntensity_DNA_{i}" for i in range(n_features)]
    return AnnData(values.astype(np.float32), obs=obs, var=pd.DataFrame(index=names))


def _batch_mean_spread(values: np.ndarray, batches: np.ndarray) -> float:
    means = np.stack([values[batches == b].mean(axis=0) for b in np.unique(batches)])
    return float(means.std(axis=0).mean())


# --- ComBat -----------------------------------------------------------------------------------------------------


def test_combat_equals_scanpy(bbbc021_normalized):
    adata = bbbc021_normalized.copy()
    cpe.tl.combat(adata, BATCH)
    reference = bbbc021_normalized.copy()
    sc.pp.combat(reference, BATCH)
    assert adata.obsm["X_combat"].dtype == np.float32
    np.testing.assert_allclose(adata.obsm["X_combat"], reference.X, rtol=1e-5, atol=1e-4)
    assert adata.uns["X_combat"]["params"] == {"batch_key": BATCH, "layer": None, "covariate_keys": []}


def test_combat_with_covariates_equals_scanpy():
    adata = _simulate()
    cpe.tl.combat(adata, BATCH, covariate_keys=["group", NEGCON], key_added="corrected")
    # scanpy codes categorical covariates with a column per level, collinear with the batches (scverse/scanpy#1606):
    # give it the treatment-coded indicators as numbers instead
    reference = _simulate()
    reference.obs["group_g1"] = (reference.obs["group"] == "g1").astype(float)
    reference.obs["negcon"] = reference.obs[NEGCON].astype(float)
    sc.pp.combat(reference, BATCH, covariates=["group_g1", "negcon"])
    np.testing.assert_allclose(adata.obsm["corrected"], reference.X, rtol=1e-5, atol=1e-5)
    assert adata.uns["corrected"]["params"]["covariate_keys"] == ["group", NEGCON]


def test_combat_covariate_errors():
    adata = _simulate()
    with pytest.raises(KeyError, match="'Metadata_dose' not found"):
        cpe.tl.combat(adata, BATCH, covariate_keys=["Metadata_dose"])
    adata.obs["dose"] = np.where(np.arange(adata.n_obs) == 5, np.nan, 1.0)
    with pytest.raises(ValueError, match="Covariates with missing values: 'dose'"):
        cpe.tl.combat(adata, BATCH, covariate_keys=["dose"])


def test_combat_removes_batch_shifts_and_keeps_biology():
    adata = _simulate()
    cpe.tl.combat(adata, BATCH, covariate_keys=["group"])
    batches = adata.obs[BATCH].to_numpy()
    before = _batch_mean_spread(adata.X, batches)
    after = _batch_mean_spread(adata.obsm["X_combat"], batches)
    assert after < before / 10
    groups = adata.obs["group"].to_numpy() == "g1"
    difference = adata.obsm["X_combat"][groups].mean(axis=0) - adata.obsm["X_combat"][~groups].mean(axis=0)
    assert np.abs(difference).mean() > 1.0


def test_combat_ignores_unused_batch_categories(bbbc021_normalized):
    two_weeks = bbbc021_normalized[bbbc021_normalized.obs[BATCH].isin(["Week1", "Week2"])].copy()
    two_weeks.obs[BATCH] = two_weeks.obs[BATCH].cat.set_categories(bbbc021_normalized.obs[BATCH].cat.categories)
    cpe.tl.combat(two_weeks, BATCH)
    reference = two_weeks.copy()
    reference.obs[BATCH] = reference.obs[BATCH].cat.remove_unused_categories()
    sc.pp.combat(reference, BATCH)
    np.testing.assert_allclose(two_weeks.obsm["X_combat"], reference.X, rtol=1e-5, atol=1e-4)


def test_combat_reads_a_layer(bbbc021_normalized):
    adata = bbbc021_normalized.copy()
    adata.layers["normalized"] = adata.X.copy()
    adata.X = np.zeros_like(adata.X)
    cpe.tl.combat(adata, BATCH, layer="normalized")
    expected = cpe.tl.combat(bbbc021_normalized, BATCH, copy=True).obsm["X_combat"]
    np.testing.assert_array_equal(adata.obsm["X_combat"], expected)


# --- Harmony ----------------------------------------------------------------------------------------------------


def test_harmony_equals_harmonypy(bbbc021_pca):
    adata = cpe.tl.harmony(bbbc021_pca, BATCH, random_state=3, theta=1.5, copy=True)
    direct = harmonypy.run_harmony(
        bbbc021_pca.obsm["X_pca"], bbbc021_pca.obs[[BATCH]], BATCH, theta=1.5, random_state=3, verbose=False
    )
    assert adata.obsm["X_harmony"].shape == bbbc021_pca.obsm["X_pca"].shape
    np.testing.assert_allclose(adata.obsm["X_harmony"], direct.Z_corr, rtol=1e-5, atol=1e-5)
    assert adata.uns["X_harmony"]["params"] == {"batch_key": BATCH, "basis": "X_pca", "random_state": 3, "theta": 1.5}


def test_harmony_is_reproducible(bbbc021_pca):
    first = cpe.tl.harmony(bbbc021_pca, BATCH, copy=True).obsm["X_harmony"]
    second = cpe.tl.harmony(bbbc021_pca, BATCH, copy=True).obsm["X_harmony"]
    np.testing.assert_array_equal(first, second)


def test_harmony_mixes_weeks(bbbc021_pca):
    adata = cpe.tl.harmony(bbbc021_pca, BATCH, copy=True)
    batches = adata.obs[BATCH].to_numpy()
    controls = adata.obs[NEGCON].to_numpy()

    def batch_lisi(key: str) -> float:
        return float(np.median(harmonypy.compute_lisi(adata.obsm[key], adata.obs[[BATCH]], [BATCH], perplexity=30)))

    assert batch_lisi("X_harmony") > 1.5 * batch_lisi("X_pca")
    # DMSO wells should not cluster by week once corrected
    before = silhouette_score(adata.obsm["X_pca"][controls], batches[controls])
    after = silhouette_score(adata.obsm["X_harmony"][controls], batches[controls])
    assert after < before


def test_harmony_needs_the_basis():
    adata = cpe.datasets.bbbc021()
    with pytest.raises(KeyError, match=r"sc\.pp\.pca"):
        cpe.tl.harmony(adata, BATCH)


def test_harmony_rejects_nonfinite_embedding(bbbc021_pca):
    adata = bbbc021_pca.copy()
    adata.obsm["X_pca"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        cpe.tl.harmony(adata, BATCH)


# --- sphering ---------------------------------------------------------------------------------------------------

N_SPHERING_FEATURES = 40  # fewer than the 330 DMSO wells, so the control covariance is full rank


@pytest.fixture(scope="module")
def sphering_input(bbbc021_normalized) -> AnnData:
    return bbbc021_normalized[:, :N_SPHERING_FEATURES].copy()


def _control_eigen(adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    controls = adata.X[adata.obs[NEGCON].to_numpy()].astype(np.float64)
    return np.linalg.eigh(np.cov(controls, rowvar=False))


@pytest.mark.parametrize("epsilon", [1e-6, 1e-1, 10.0])
def test_sphering_control_covariance(sphering_input, epsilon):
    adata = cpe.tl.sphering(sphering_input, NEGCON, epsilon=epsilon, copy=True)
    controls = adata.obs[NEGCON].to_numpy()
    whitened = adata.obsm["X_sphering"][controls].astype(np.float64)
    np.testing.assert_allclose(whitened.mean(axis=0), 0, atol=1e-4)
    eigenvalues, eigenvectors = _control_eigen(sphering_input)
    expected = (eigenvectors * (eigenvalues / (eigenvalues + epsilon))) @ eigenvectors.T
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), expected, atol=1e-4)
    well_measured = eigenvalues > 1e3 * epsilon
    whitened_variances = np.diag(eigenvectors.T @ np.cov(whitened, rowvar=False) @ eigenvectors)
    np.testing.assert_allclose(whitened_variances[well_measured], 1.0, atol=2e-3)


def test_sphering_agrees_with_pycytominer(sphering_input):
    from pycytominer.operations import Spherize

    values = pd.DataFrame(sphering_input.X.astype(np.float64))
    controls = sphering_input.obs[NEGCON].to_numpy()
    reference = Spherize(epsilon=1e-12, method="ZCA", return_numpy=True).fit(values[controls]).transform(values)
    ours = cpe.tl.sphering(sphering_input, NEGCON, epsilon=1e-12, copy=True).obsm["X_sphering"]
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_sphering_shrinks_towards_centring(sphering_input):
    controls = sphering_input.obs[NEGCON].to_numpy()
    centred = sphering_input.X - sphering_input.X[controls].mean(axis=0)
    weak = cpe.tl.sphering(sphering_input, NEGCON, epsilon=1e-6, copy=True).obsm["X_sphering"]
    strong = cpe.tl.sphering(sphering_input, NEGCON, epsilon=1e8, copy=True).obsm["X_sphering"]
    assert not np.allclose(weak, strong)
    np.testing.assert_allclose(strong * np.sqrt(1e8), centred, rtol=1e-3, atol=1e-3 * np.abs(centred).max())


def test_sphering_pca_is_a_rotation_of_zca(sphering_input):
    zca = cpe.tl.sphering(sphering_input, NEGCON, method="ZCA", copy=True).obsm["X_sphering"]
    pca = cpe.tl.sphering(sphering_input, NEGCON, method="PCA", copy=True).obsm["X_sphering"]
    np.testing.assert_allclose(np.linalg.norm(pca, axis=1), np.linalg.norm(zca, axis=1), rtol=1e-4)
    controls = sphering_input.obs[NEGCON].to_numpy()
    variances = pca[controls].var(axis=0, ddof=1)
    eigenvalues = np.sort(_control_eigen(sphering_input)[0])[::-1]
    np.testing.assert_allclose(variances, eigenvalues / (eigenvalues + 1e-6), atol=1e-3)


def test_sphering_simulated_controls_become_white():
    adata = _simulate(n_features=8)
    cpe.tl.sphering(adata, NEGCON)
    controls = adata.obs[NEGCON].to_numpy()
    np.testing.assert_allclose(np.cov(adata.obsm["X_sphering"][controls], rowvar=False), np.eye(8), atol=1e-4)


def test_sphering_warns_when_controls_are_too_few():
    adata = cpe.datasets.lincs_plate()  # 24 DMSO wells, 454 features
    with pytest.warns(UserWarning, match="24 control wells for 454 features"):
        cpe.tl.sphering(adata, NEGCON, epsilon=1.0)
    assert np.isfinite(adata.obsm["X_sphering"]).all()


def test_sphering_rejects_bad_controls_and_parameters(sphering_input):
    adata = sphering_input.copy()
    adata.obs["none"] = False
    with pytest.raises(ValueError, match="flags 0 control wells"):
        cpe.tl.sphering(adata, "none")
    with pytest.raises(TypeError, match="must be boolean"):
        cpe.tl.sphering(adata, "Metadata_Compound")
    with pytest.raises(ValueError, match="epsilon must be positive"):
        cpe.tl.sphering(adata, NEGCON, epsilon=0.0)
    with pytest.raises(ValueError, match="Unknown sphering method"):
        cpe.tl.sphering(adata, NEGCON, method="Cholesky")


# --- simulated multi-source screen ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_screen() -> AnnData:
    """Three sources of a small JUMP-like screen, standardised over all wells (source effects left in)."""
    adata = cpe.datasets.simulate_profiles(
        n_sources=3,
        n_batches_per_source=2,
        n_plates_per_batch=1,
        plate_format=96,
        n_compounds=24,
        n_moas=4,
        n_features=40,
        nonfinite_fraction=0.0,
        seed=1,
    )
    adata.X = (adata.X - adata.X.mean(axis=0)) / adata.X.std(axis=0)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    return adata


@pytest.mark.parametrize(("name", "before_key"), [("combat", "X"), ("harmony", "X_pca"), ("sphering", "X")])
def test_baselines_mix_simulated_sources(simulated_screen, name, before_key):
    source = "Metadata_Source"
    if name == "combat":
        adata = cpe.tl.combat(simulated_screen, source, copy=True)
    elif name == "harmony":
        adata = cpe.tl.harmony(simulated_screen, source, copy=True)
    else:
        adata = cpe.tl.sphering(simulated_screen, NEGCON, epsilon=1e-2, copy=True)
    before = adata.X if before_key == "X" else adata.obsm[before_key]
    after = adata.obsm[KEYS[name]]
    sources = adata.obs[source].to_numpy()
    controls = adata.obs[NEGCON].to_numpy()
    assert silhouette_score(after[controls], sources[controls]) < silhouette_score(before[controls], sources[controls])

    def source_lisi(embedding: np.ndarray) -> float:
        return float(np.median(harmonypy.compute_lisi(embedding, adata.obs[[source]], [source], perplexity=20)))

    assert source_lisi(after) > source_lisi(before)


# --- contract shared by all three -------------------------------------------------------------------------------


def _run(name: str, adata: AnnData, **kwargs):
    if name == "combat":
        return cpe.tl.combat(adata, BATCH, **kwargs)
    if name == "harmony":
        return cpe.tl.harmony(adata, BATCH, **kwargs)
    return cpe.tl.sphering(adata, NEGCON, **kwargs)


@pytest.fixture
def small() -> AnnData:
    adata = _simulate(n_features=6)
    adata.layers["raw"] = adata.X.copy()
    sc.pp.pca(adata, n_comps=4, random_state=0)
    return adata


@pytest.mark.parametrize("name", METHODS)
def test_copy_leaves_the_input_alone(small, name):
    before = small.copy()
    result = _run(name, small, copy=True)
    assert isinstance(result, AnnData)
    assert result is not small
    assert KEYS[name] in result.obsm
    assert KEYS[name] in result.uns
    assert set(small.obsm) == set(before.obsm)
    assert set(small.uns) == set(before.uns)
    np.testing.assert_array_equal(small.X, before.X)


@pytest.mark.parametrize("name", METHODS)
def test_in_place_writes_only_obsm_and_uns(small, name, caplog):
    before = small.copy()
    with caplog.at_level(logging.INFO, logger="cpembed"):
        assert _run(name, small, key_added="result") is None
    assert "'result'" in caplog.text
    assert set(small.obsm) == set(before.obsm) | {"result"}
    assert set(small.uns) == set(before.uns) | {"result"}
    assert small.obsm["result"].shape[0] == small.n_obs
    assert "params" in small.uns["result"]
    np.testing.assert_array_equal(small.X, before.X)
    np.testing.assert_array_equal(small.layers["raw"], before.layers["raw"])
    np.testing.assert_array_equal(small.obsm["X_pca"], before.obsm["X_pca"])
    pd.testing.assert_frame_equal(small.obs, before.obs)
    pd.testing.assert_frame_equal(small.var, before.var)


@pytest.mark.parametrize("correct", [cpe.tl.combat, cpe.tl.harmony])
def test_batch_errors(small, correct):
    with pytest.raises(KeyError, match="'Metadata_Nope' not found"):
        correct(small, "Metadata_Nope")
    small.obs["single"] = "week1"
    with pytest.raises(ValueError, match="nothing to correct"):
        correct(small, "single")
    small.obs["gaps"] = small.obs[BATCH].astype(object).where(np.arange(small.n_obs) > 0, None)
    with pytest.raises(ValueError, match="missing batch labels"):
        correct(small, "gaps")


def test_combat_rejects_single_well_batches(small):
    small.obs["lonely"] = small.obs[BATCH].astype(str).where(np.arange(small.n_obs) > 0, "B9")
    with pytest.raises(ValueError, match="single-well batches: 'B9'"):
        cpe.tl.combat(small, "lonely")


@pytest.mark.parametrize("name", ["combat", "sphering"])
def test_nonfinite_profiles_are_rejected(small, name):
    small.X[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        _run(name, small)
    with pytest.raises(KeyError, match="Layer 'missing' not found"):
        _run(name, small, layer="missing")


def test_missing_control_key(small):
    with pytest.raises(KeyError, match="'Metadata_nocontrol' not found"):
        cpe.tl.sphering(small, "Metadata_nocontrol")


# --- input ComBat, Harmony and sphering cannot use -----------------------------------------------------------------


@pytest.mark.parametrize("covariate", ["batch_copy", "batch_level", "constant"])
def test_combat_refuses_covariates_confounded_with_the_batch(small, covariate):
    small.obs["batch_copy"] = small.obs[BATCH]
    small.obs["batch_level"] = (small.obs[BATCH] == "B1").astype(float)
    small.obs["constant"] = 2.0
    with pytest.raises(ValueError, match=rf"covariate_keys \['{covariate}'\] are constant or confounded"):
        cpe.tl.combat(small, BATCH, covariate_keys=["group", covariate])
    assert "X_combat" not in small.obsm


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_combat_refuses_results_beyond_float32_range(small):
    small.X = small.X.astype(np.float64) * 1e39
    with pytest.raises(ValueError, match=r"adata.obsm\['X_combat'\] would hold \d+ NaN or infinite values"):
        cpe.tl.combat(small, BATCH)
    assert "X_combat" not in small.obsm


def test_harmony_on_few_wells_says_how_many_are_needed(small):
    few = small[[0, 1, 2, 60, 61, 62]].copy()
    with pytest.raises(ValueError, match="0 for 6 wells: use at least 16 wells, or pass `nclust=`"):
        cpe.tl.harmony(few, BATCH)
    with pytest.raises(ValueError, match="nclust=7 must lie between 1 and the number of wells"):
        cpe.tl.harmony(few, BATCH, nclust=7)
    cpe.tl.harmony(few, BATCH, nclust=1)
    assert few.obsm["X_harmony"].shape == few.obsm["X_pca"].shape
    assert np.isfinite(few.obsm["X_harmony"]).all()


def test_sphering_whitens_a_single_feature(small):
    one = small[:, :1].copy()
    cpe.tl.sphering(one, NEGCON, epsilon=1e-6)
    controls = one.X[one.obs[NEGCON].to_numpy(), 0].astype(np.float64)
    expected = (one.X[:, 0] - controls.mean()) / np.sqrt(controls.var(ddof=1) + 1e-6)
    np.testing.assert_allclose(one.obsm["X_sphering"][:, 0], expected, rtol=1e-5)
