"""recipe_jump checked against the benchmark's steps rebuilt from pycytominer, pandas and scipy."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import median_abs_deviation, norm, rankdata

import cpembed as cpe

pycytominer = pytest.importorskip("pycytominer")
from pycytominer.operations import correlation_threshold, frequency_threshold  # noqa: E402

PLATE, NEGCON = "Metadata_Plate", "Metadata_is_negcon"
STEPS = [
    "drop_nonfinite",
    "control_variation_filter",
    "normalize_to_controls",
    "rank_inverse_normal",
    "variation_filter",
    "correlation_filter",
]


def reference_recipe(adata):
    """The benchmark's mad_int_featselect pipeline, step by step, with the libraries it used."""
    df = pd.DataFrame(adata.X.astype(np.float64), columns=list(adata.var_names)).replace([np.inf, -np.inf], np.nan)
    df = df.dropna(axis=1)
    features = list(df.columns)
    plates = adata.obs[PLATE].astype(str).to_numpy()
    controls = adata.obs[NEGCON].to_numpy()
    grouped = df[controls].groupby(plates[controls])
    median = grouped.median()
    mad = grouped.apply(lambda plate: pd.Series(median_abs_deviation(plate, axis=0), index=features))
    coef_var = (mad / median).abs().replace(np.inf, 0).fillna(0)
    features = [name for name in features if ((mad[name] != 0) & (coef_var[name] > 1e-3)).all()]
    df = df[features].assign(**{PLATE: plates, NEGCON: controls})
    normalized = pd.concat(
        pycytominer.normalize(
            plate, features=features, meta_features=[PLATE, NEGCON], samples=f"{NEGCON} == True", method="mad_robustize"
        )
        for _, plate in df.groupby(PLATE)
    ).loc[df.index, features]
    n = len(normalized)
    transformed = normalized.apply(lambda column: norm.ppf((rankdata(column) - 3 / 8) / (n - 3 / 4 + 1)))
    low_variation = set(frequency_threshold(transformed, features=features))
    features = [name for name in features if name not in low_variation]
    redundant = set(correlation_threshold(transformed[features], features))
    features = [name for name in features if name not in redundant]
    return transformed[features]


def small_screen(seed=0, n_plates=4, wells_per_plate=64, n_features=40):
    """Raw, positive, skewed profiles with plate effects, correlated features, 8 controls per plate and NaN/inf."""
    rng = np.random.default_rng(seed)
    n = n_plates * wells_per_plate
    plates = np.repeat([f"plate{p}" for p in range(n_plates)], wells_per_plate)
    controls = np.tile(np.arange(wells_per_plate) < 8, n_plates)
    latent = rng.normal(size=(n, 6))
    loadings = rng.normal(size=(6, n_features))
    plate_shift = np.repeat(rng.normal(scale=0.5, size=(n_plates, n_features)), wells_per_plate, axis=0)
    matrix = np.exp(0.3 * (latent @ loadings) / np.sqrt(6) + plate_shift + 0.2 * rng.normal(size=(n, n_features)))
    matrix[:, 1] = matrix[:, 0] * 2  # redundant
    matrix[:, 2] = 5.0  # constant
    matrix[:, 3] = np.round(matrix[:, 3])  # few distinct values
    matrix[7, 4] = np.nan
    matrix[9, 5] = np.inf
    names = [f"Cells_Intensity_Feature{j}_DNA" for j in range(n_features)]
    obs = pd.DataFrame(
        {PLATE: plates, NEGCON: controls, "Metadata_Compound": np.where(controls, "DMSO", "drug")},
        index=[f"well{i}" for i in range(n)],
    )
    return ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=names))


@pytest.mark.parametrize("dataset", ["small_screen", "lincs_plate"])
def test_recipe_matches_reference_pipeline(dataset):
    adata = small_screen() if dataset == "small_screen" else cpe.datasets.lincs_plate()
    adata.X = adata.X.astype(np.float64)
    expected = reference_recipe(adata)
    result = cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=True)
    assert list(result.var_names) == list(expected.columns)
    np.testing.assert_allclose(result.X, expected.to_numpy(), rtol=1e-12, atol=1e-12)
    assert list(result.uns["cpembed_pp"]) == [*STEPS, "recipe_jump"]


@pytest.mark.slow
def test_recipe_matches_reference_on_bbbc021_up_to_identical_features():
    """BBBC021 holds identical features, whose tie pycytominer breaks by rounding noise; compare them as one."""
    adata = cpe.datasets.bbbc021()
    adata.X = adata.X.astype(np.float64)
    expected = reference_recipe(adata)
    result = cpe.pp.recipe_jump(adata, PLATE, "Metadata_Compound", control_value="DMSO", copy=True)
    assert result.n_vars == expected.shape[1]
    shared = [name for name in result.var_names if name in expected.columns]
    assert len(shared) >= result.n_vars - 6
    np.testing.assert_allclose(result[:, shared].X, expected[shared].to_numpy(), rtol=1e-12, atol=1e-12)
    for name in set(result.var_names) - set(shared):  # each differing pick has an identical twin in the reference
        column = result[:, name].X.ravel()
        assert any(np.array_equal(column, expected[other].to_numpy()) for other in expected.columns)


def test_recipe_on_simulated_screen_gives_normal_scores():
    simulate = getattr(cpe.datasets, "simulate_profiles", None)
    if simulate is None:
        pytest.skip("cpembed.datasets.simulate_profiles is not available")
    adata = simulate(
        n_sources=2,
        n_batches_per_source=1,
        n_plates_per_batch=2,
        plate_format=96,
        n_compounds=40,
        n_moas=5,
        n_features=150,
        seed=0,
    )
    nonfinite = ~np.isfinite(adata.X).all(axis=0)
    cpe.pp.recipe_jump(adata, PLATE, NEGCON)
    assert not set(adata.var_names) & set(adata.uns["cpembed_pp"]["drop_nonfinite"]["dropped_features"])
    assert adata.uns["cpembed_pp"]["drop_nonfinite"]["dropped_features"].size == nonfinite.sum()
    assert adata.X.dtype == np.float32
    blom = norm.ppf((np.arange(1, adata.n_obs + 1) - 3 / 8) / (adata.n_obs + 1 / 4))
    tie_free = [j for j in range(adata.n_vars) if np.unique(adata.X[:, j]).size == adata.n_obs]
    assert tie_free
    for j in tie_free:
        np.testing.assert_allclose(np.sort(adata.X[:, j]), blom, rtol=1e-6, atol=1e-6)
    correlation = np.corrcoef(adata.X.T)
    assert (np.tril(correlation, -1) <= 0.9).all()


def test_recipe_clip_option_bounds_values():
    adata = small_screen()
    result = cpe.pp.recipe_jump(adata, PLATE, NEGCON, clip=(0.05, 0.95), copy=True)
    assert list(result.uns["cpembed_pp"])[-2:] == ["clip_quantiles", "recipe_jump"]
    unclipped = cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=True)
    low, high = np.quantile(unclipped.X, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(result.X, np.clip(unclipped.X, low, high), rtol=1e-6)
    assert list(result.uns["cpembed_pp"]["recipe_jump"]["params"]["clip"]) == [0.05, 0.95]


def test_recipe_copy_semantics():
    adata = small_screen()
    original = adata.copy()
    result = cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=True)
    np.testing.assert_array_equal(adata.X, original.X)
    assert list(adata.var_names) == list(original.var_names)
    assert "cpembed_pp" not in adata.uns
    assert cpe.pp.recipe_jump(adata, PLATE, NEGCON) is None
    np.testing.assert_array_equal(adata.X, result.X)
    assert list(adata.var_names) == list(result.var_names)


def test_recipe_rejects_bad_input_before_changing_anything():
    adata = small_screen()
    adata.obs.loc[adata.obs[PLATE] == "plate2", NEGCON] = False
    original = adata.copy()
    with pytest.raises(ValueError, match="plate2"):
        cpe.pp.recipe_jump(adata, PLATE, NEGCON)
    np.testing.assert_array_equal(adata.X, original.X)
    assert "cpembed_pp" not in adata.uns
    with pytest.raises(KeyError, match="Metadata_Well"):
        cpe.pp.recipe_jump(adata, "Metadata_Well", NEGCON)
    with pytest.raises(TypeError, match="control_value"):
        cpe.pp.recipe_jump(adata, PLATE, "Metadata_Compound")


def first_wells_ending_with_one_control(adata):
    """The first wells of ``adata`` up to the first control of the third plate, which keeps only that control."""
    plates = adata.obs[PLATE].to_numpy()
    third = pd.unique(plates)[2]
    first_control = np.flatnonzero((plates == third) & adata.obs[NEGCON].to_numpy())[0]
    return adata[: first_control + 1].copy(), third


def assert_unchanged(adata, original):
    np.testing.assert_array_equal(adata.X, original.X)
    assert list(adata.var_names) == list(original.var_names)
    assert "cpembed_pp" not in adata.uns


def test_recipe_refuses_a_plate_with_a_single_control_and_leaves_adata_unchanged():
    adata, plate = first_wells_ending_with_one_control(cpe.datasets.bbbc021())
    original = adata.copy()
    with pytest.raises(ValueError, match=rf"control_variation_filter .*plate '{plate}' \(1 control well\) alone"):
        cpe.pp.recipe_jump(adata, PLATE, NEGCON)
    assert_unchanged(adata, original)


def test_recipe_refuses_a_plate_with_constant_controls():
    adata = small_screen()
    rows = np.flatnonzero((adata.obs[PLATE] == "plate1").to_numpy() & adata.obs[NEGCON].to_numpy())
    adata.X[rows] = adata.X[rows[0]]
    with pytest.raises(ValueError, match=r"plate 'plate1' \(8 control wells\) alone drops"):
        cpe.pp.recipe_jump(adata, PLATE, NEGCON)


def test_recipe_refuses_wells_that_are_each_their_own_plate():
    adata = small_screen()
    adata.obs[PLATE] = adata.obs_names
    with pytest.raises(ValueError, match="plates have no negative-control well: well10"):
        cpe.pp.recipe_jump(adata, PLATE, NEGCON)


def test_recipe_refuses_an_all_nan_well_and_names_it():
    adata = small_screen()
    adata.X[12] = np.nan
    original = adata.copy()
    with pytest.raises(ValueError, match=r"drop_nonfinite would keep 0 of 40 features: well 'well12' .*how='wells'"):
        cpe.pp.recipe_jump(adata, PLATE, NEGCON)
    np.testing.assert_array_equal(adata.X, original.X)
    cpe.pp.drop_nonfinite(adata, how="wells")
    assert cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=True).n_vars > 0


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ({"clip": (0.9, 0.1)}, "lower=0.9, upper=0.1"),
        ({"clip": (0.1,)}, "pair of quantile levels"),
        ({"corr_threshold": 1.5}, "threshold=1.5"),
        ({"freq_cut": -0.1}, "freq_cut=-0.1"),
        ({"unique_cut": 2}, "unique_cut=2"),
        ({"min_coef_var": np.nan}, "min_coef_var=nan"),
    ],
)
def test_recipe_validates_every_argument_before_changing_the_data(argument, message):
    adata = small_screen()
    original = adata.copy()
    with pytest.raises(ValueError, match=message):
        cpe.pp.recipe_jump(adata, PLATE, NEGCON, **argument)
    assert_unchanged(adata, original)


def test_recipe_in_place_on_a_view_changes_only_the_view():
    adata = cpe.datasets.bbbc021()
    view = adata[:200]
    cpe.pp.recipe_jump(view, PLATE, NEGCON)
    assert not view.is_view
    assert 0 < view.n_vars < adata.n_vars
    assert adata.shape == (632, 516)
    assert "cpembed_pp" not in adata.uns


def test_recipe_reports_the_change_of_shape(caplog):
    adata = small_screen()
    with caplog.at_level("INFO", logger="cpembed"):
        result = cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=True)
    record = result.uns["cpembed_pp"]["recipe_jump"]
    assert list(record["n_features"]) == [adata.n_vars, result.n_vars]
    assert record["n_wells"] == adata.n_obs
    assert f"kept {result.n_vars} of {adata.n_vars} features" in caplog.text


def test_recipe_on_backed_anndata_needs_copy(tmp_path):
    adata = small_screen()
    adata.write_h5ad(tmp_path / "screen.h5ad")
    backed = ad.read_h5ad(tmp_path / "screen.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"to_memory\(\)"):
        cpe.pp.recipe_jump(backed, PLATE, NEGCON)
    result = cpe.pp.recipe_jump(backed, PLATE, NEGCON, copy=True)
    np.testing.assert_array_equal(result.X, cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=True).X)


def assert_same_records(records, expected):
    """The step records of two recipe runs are equal, arrays included."""
    assert list(records) == list(expected)
    for step, entry in expected.items():
        assert list(records[step]) == list(entry), step
        for key, value in entry.items():
            if isinstance(value, dict):
                assert records[step][key] == pytest.approx(value), step
            else:
                np.testing.assert_array_equal(records[step][key], value, err_msg=step)


@pytest.fixture
def small_blocks(monkeypatch):
    """Backed matrices read 7 features of 1,000 wells at a time, so every file spans several blocks."""
    from cpembed.pp import _recipe

    monkeypatch.setattr(_recipe, "BACKED_BLOCK_ELEMENTS", 7_000)


def test_recipe_on_backed_data_streams_blocks_of_features_to_the_in_memory_result(tmp_path, small_blocks):
    path = tmp_path / "screen.h5ad"
    backed = cpe.datasets.simulate_profiles(
        n_sources=2, n_batches_per_source=1, n_plates_per_batch=2, plate_format=96, n_compounds=40, n_moas=5,
        n_features=60, nonfinite_fraction=1e-3, seed=0, path=path,
    )  # fmt: skip
    expected = cpe.pp.recipe_jump(ad.read_h5ad(path), PLATE, NEGCON, copy=True)
    result = cpe.pp.recipe_jump(backed, PLATE, NEGCON, copy=True)
    assert not result.isbacked
    assert result.uns["cpembed_pp"]["drop_nonfinite"]["dropped_features"].size > 0
    assert result.X.dtype == expected.X.dtype == np.float32
    np.testing.assert_array_equal(result.X, expected.X)
    assert list(result.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(result.obs, expected.obs)
    assert_same_records(result.uns["cpembed_pp"], expected.uns["cpembed_pp"])


def test_recipe_on_backed_data_refuses_what_it_refuses_in_memory(tmp_path, small_blocks):
    adata = small_screen()
    adata.X[12] = np.nan
    adata.write_h5ad(tmp_path / "screen.h5ad")
    backed = ad.read_h5ad(tmp_path / "screen.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"drop_nonfinite would keep 0 of 40 features: well 'well12' .*how='wells'"):
        cpe.pp.recipe_jump(backed, PLATE, NEGCON, copy=True)
    adata = small_screen()
    adata.X[adata.obs[NEGCON].to_numpy() & (adata.obs[PLATE] == "plate1").to_numpy()] = 1.0  # constant controls
    adata.write_h5ad(tmp_path / "constant.h5ad")
    backed = ad.read_h5ad(tmp_path / "constant.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"control_variation_filter would keep 0 of \d+ features: plate 'plate1'"):
        cpe.pp.recipe_jump(backed, PLATE, NEGCON, copy=True)
