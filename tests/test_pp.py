"""Preprocessing steps checked against pycytominer 1.7 and brute-force versions, on bundled real data."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import median_abs_deviation, norm, rankdata

import cpembed as cpe
from cpembed.pp._aggregate import center_scale_to_controls
from cpembed.pp._correlation import correlation_mask, correlation_matrix
from cpembed.pp._normalize import normalize_to_controls_array
from cpembed.pp._rank import average_ranks, rank_inverse_normal_array
from cpembed.pp._variation import variation_mask

pycytominer = pytest.importorskip("pycytominer")
from pycytominer.operations import correlation_threshold, frequency_threshold  # noqa: E402

PLATE, NEGCON = "Metadata_Plate", "Metadata_is_negcon"


@pytest.fixture(scope="module")
def bbbc021_shared():
    return cpe.datasets.bbbc021()


@pytest.fixture
def bbbc021(bbbc021_shared):
    return bbbc021_shared.copy()


@pytest.fixture(scope="module")
def lincs_shared():
    return cpe.datasets.lincs_plate()


@pytest.fixture
def lincs(lincs_shared):
    return lincs_shared.copy()


@pytest.fixture(scope="module")
def bbbc021_normalized(bbbc021_shared):
    """BBBC021 MAD-normalised per plate, without the features whose control MAD is 0 on some plate."""
    adata = cpe.pp.control_variation_filter(bbbc021_shared, PLATE, NEGCON, copy=True)
    cpe.pp.normalize_to_controls(adata, PLATE, NEGCON)
    return adata


def frame(adata, dtype=None):
    """Features and plate/control metadata as the DataFrame pycytominer reads."""
    df = pd.DataFrame(adata.X if dtype is None else adata.X.astype(dtype), columns=list(adata.var_names))
    df[PLATE] = adata.obs[PLATE].astype(str).to_numpy()
    df[NEGCON] = adata.obs[NEGCON].to_numpy()
    return df


def pycytominer_normalize_per_plate(adata, method):
    """Reference: pycytominer.normalize against the negative controls, run on each plate separately."""
    df = frame(adata, np.float64)
    features = list(adata.var_names)
    normalized = [
        pycytominer.normalize(
            plate, features=features, meta_features=[PLATE, NEGCON], samples=f"{NEGCON} == True", method=method
        )
        for _, plate in df.groupby(PLATE)
    ]
    return pd.concat(normalized).loc[df.index, features].to_numpy()


@pytest.fixture(scope="module")
def pycytominer_normalized(bbbc021_shared):
    """pycytominer's per-plate normalisation of BBBC021, computed once per method (it takes seconds)."""
    methods = ("mad_robustize", "standardize")
    return {method: pycytominer_normalize_per_plate(bbbc021_shared, method) for method in methods}


def duplicate_groups(matrix):
    """Id of each column's group of exactly identical columns."""
    return pd.DataFrame(matrix.T).groupby(list(range(matrix.shape[0]))).ngroup().to_numpy()


# --------------------------------------------------------------------------------------------- drop_nonfinite


def with_nonfinite(adata, seed=0):
    rng = np.random.default_rng(seed)
    adata.X = adata.X.astype(np.float64)
    rows = rng.integers(0, adata.n_obs, 6)
    cols = rng.integers(0, adata.n_vars, 6)
    adata.X[rows[:3], cols[:3]] = np.nan
    adata.X[rows[3:], cols[3:]] = [np.inf, -np.inf, np.inf]
    return adata


def test_drop_nonfinite_features_and_wells_match_pandas(bbbc021):
    adata = with_nonfinite(bbbc021)
    df = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var_names).replace([np.inf, -np.inf], np.nan)
    by_features = cpe.pp.drop_nonfinite(adata, how="features", copy=True)
    assert list(by_features.var_names) == list(df.dropna(axis=1).columns)
    np.testing.assert_array_equal(by_features.X, df.dropna(axis=1).to_numpy())
    by_wells = cpe.pp.drop_nonfinite(adata, how="wells", copy=True)
    assert list(by_wells.obs_names) == list(df.dropna(axis=0).index)
    assert by_wells.obs[PLATE].tolist() == adata.obs.loc[df.dropna(axis=0).index, PLATE].tolist()
    recorded = by_features.uns["cpembed_pp"]["drop_nonfinite"]
    assert set(recorded["dropped_features"]) == set(df.columns[df.isna().any()])
    assert recorded["params"] == {"how": "features"}


def test_drop_nonfinite_imputes_like_pandas(bbbc021):
    adata = with_nonfinite(bbbc021)
    df = pd.DataFrame(adata.X, columns=adata.var_names).replace([np.inf, -np.inf], np.nan)
    median = cpe.pp.drop_nonfinite(adata, how="impute_median", copy=True)
    np.testing.assert_array_equal(median.X, df.fillna(df.median()).to_numpy())
    zero = cpe.pp.drop_nonfinite(adata, how="impute_zero", copy=True)
    np.testing.assert_array_equal(zero.X, df.fillna(0).to_numpy())
    assert median.uns["cpembed_pp"]["drop_nonfinite"]["n_imputed"] == 6


def test_drop_nonfinite_rejects_bad_input():
    adata = ad.AnnData(np.array([[np.nan, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match="no finite value"):
        cpe.pp.drop_nonfinite(adata, how="impute_median")
    with pytest.raises(ValueError, match="how='drop'"):
        cpe.pp.drop_nonfinite(adata, how="drop")


# ------------------------------------------------------------------------------------------- variation_filter


def discrete_profiles(seed=0):
    """Features with few distinct values, a dominating value, ties between the two commonest values, a constant."""
    rng = np.random.default_rng(seed)
    n = 300
    columns = {
        "Cells_A": rng.normal(size=n),
        "Cells_B": rng.integers(0, 2, n).astype(float),  # 2 distinct values: unique ratio 0.0067
        "Cells_C": np.where(rng.random(n) < 0.97, 1.0, rng.normal(size=n)),  # one dominating value
        "Cells_D": np.repeat([1.0, 2.0, 3.0, 4.0], n // 4) + np.r_[np.zeros(n - 4), rng.normal(size=4)],
        "Cells_E": np.full(n, 7.0),
        "Cells_F": np.round(rng.normal(size=n), 1),
        "Cells_G": np.r_[np.repeat([0.5, 1.5], 20), rng.normal(size=n - 40)],  # two tied commonest values
    }
    return pd.DataFrame(columns)


@pytest.mark.parametrize(("freq_cut", "unique_cut"), [(0.05, 0.01), (0.2, 0.05), (0.0, 0.0), (1.0, 0.5)])
def test_variation_mask_matches_pycytominer_frequency_rule(freq_cut, unique_cut):
    df = discrete_profiles()
    excluded = frequency_threshold(df, features=list(df.columns), freq_cut=freq_cut, unique_cut=unique_cut)
    keep = variation_mask(df.to_numpy(), freq_cut=freq_cut, unique_cut=unique_cut)
    assert set(df.columns[~keep]) == set(excluded)


@pytest.mark.parametrize("dataset", ["bbbc021", "lincs"])
def test_variation_filter_matches_pycytominer_on_real_data(dataset, request):
    adata = request.getfixturevalue(dataset)
    df = pd.DataFrame(adata.X, columns=list(adata.var_names))
    excluded = frequency_threshold(df, features=list(df.columns))
    filtered = cpe.pp.variation_filter(adata, copy=True)
    assert list(filtered.var_names) == [name for name in adata.var_names if name not in excluded]
    assert set(filtered.uns["cpembed_pp"]["variation_filter"]["dropped_features"]) == set(excluded)
    if dataset == "bbbc021":
        assert len(excluded) > 0  # the comparison is not vacuous


def test_variation_filter_rejects_bad_cut(lincs):
    with pytest.raises(ValueError, match="freq_cut"):
        cpe.pp.variation_filter(lincs, freq_cut=1.5)


# ----------------------------------------------------------------------------------- control_variation_filter


def test_control_variation_filter_matches_pandas_groupby(bbbc021):
    """Reference: the benchmark's rule written with pandas groupby and scipy's (unscaled) MAD."""
    df = frame(bbbc021, np.float64)
    features = list(bbbc021.var_names)
    controls = df[df[NEGCON]].groupby(PLATE)[features]
    median = controls.median()
    mad = controls.apply(lambda plate: pd.Series(median_abs_deviation(plate, axis=0), index=features))
    coef_var = (mad / median).abs().replace(np.inf, 0).fillna(0)
    expected = [name for name in features if ((mad[name] != 0) & (coef_var[name] > 1e-3)).all()]
    filtered = cpe.pp.control_variation_filter(bbbc021, PLATE, NEGCON, copy=True)
    assert list(filtered.var_names) == expected
    assert len(expected) < len(features)


# ---------------------------------------------------------------------------------------- normalize_to_controls


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mad_robustize", "standardize"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normalize_to_controls_matches_pycytominer_per_plate(bbbc021, pycytominer_normalized, method, dtype):
    expected = pycytominer_normalized[method]
    bbbc021.X = bbbc021.X.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # BBBC021 has features with zero control MAD
        normalized = cpe.pp.normalize_to_controls(bbbc021, PLATE, NEGCON, method=method, copy=True)
    assert normalized.X.dtype == dtype
    np.testing.assert_allclose(normalized.X, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("method", ["mad_robustize", "standardize"])
def test_normalize_to_controls_matches_pycytominer_on_simulated_plates(method):
    """Unequal plates, controls scattered over the plate, and a feature constant (0.1) among one plate's controls."""
    rng = np.random.default_rng(3)
    plates = rng.choice(["p1", "p2", "p3"], size=150, p=[0.5, 0.3, 0.2])
    controls = rng.random(150) < 0.3
    matrix = rng.lognormal(size=(150, 12))
    matrix[(plates == "p2") & controls, 4] = 0.1
    obs = pd.DataFrame({PLATE: plates, NEGCON: controls}, index=[f"w{i}" for i in range(150)])
    adata = ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=[f"Cells_F{j}" for j in range(12)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the constant feature has zero MAD on p2
        normalized = cpe.pp.normalize_to_controls(adata, PLATE, NEGCON, method=method, copy=True)
    np.testing.assert_allclose(normalized.X, pycytominer_normalize_per_plate(adata, method), rtol=1e-12, atol=1e-9)


def test_normalize_to_controls_single_plate_lincs(lincs):
    df = frame(lincs, np.float64)
    features = list(lincs.var_names)
    expected = pycytominer.normalize(
        df, features=features, meta_features=[PLATE, NEGCON], samples=f"{NEGCON} == True", method="mad_robustize"
    )[features].to_numpy()
    cpe.pp.normalize_to_controls(lincs, PLATE, NEGCON)
    np.testing.assert_allclose(lincs.X, expected, rtol=1e-5, atol=1e-6)


def test_normalize_to_controls_control_value_and_layer(bbbc021):
    bbbc021.layers["raw"] = bbbc021.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_flag = cpe.pp.normalize_to_controls(bbbc021, PLATE, NEGCON, copy=True)
        cpe.pp.normalize_to_controls(bbbc021, PLATE, "Metadata_Compound", control_value="DMSO", layer="raw")
    np.testing.assert_array_equal(bbbc021.layers["raw"], by_flag.X)
    np.testing.assert_array_equal(bbbc021.X, cpe.datasets.bbbc021().X)  # X untouched when a layer is chosen
    params = bbbc021.uns["cpembed_pp"]["normalize_to_controls"]["params"]
    assert params["control_value"] == "DMSO"
    assert params["layer"] == "raw"


def test_normalize_to_controls_array_agrees_with_anndata_function(bbbc021_normalized, bbbc021_shared):
    raw = bbbc021_shared[:, bbbc021_normalized.var_names]
    result = normalize_to_controls_array(raw.X, raw.obs[PLATE].to_numpy(), raw.obs[NEGCON].to_numpy())
    np.testing.assert_array_equal(result, bbbc021_normalized.X)


def test_normalize_to_controls_warns_on_zero_mad(bbbc021):
    with pytest.warns(RuntimeWarning, match="control_variation_filter"):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, NEGCON)


def test_normalize_to_controls_rejects_bad_input(bbbc021):
    bbbc021.obs.loc[bbbc021.obs[PLATE] == "Week1_22123", NEGCON] = False
    with pytest.raises(ValueError, match="Week1_22123"):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, NEGCON)
    with pytest.raises(KeyError, match="Metadata_Missing"):
        cpe.pp.normalize_to_controls(bbbc021, "Metadata_Missing", NEGCON)
    with pytest.raises(TypeError, match="control_value"):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, "Metadata_Compound")
    with pytest.raises(ValueError, match="no negative controls"):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, "Metadata_Compound", control_value="water")
    with pytest.raises(ValueError, match="method="):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, "Metadata_Compound", control_value="DMSO", method="zscore")
    bbbc021.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="drop_nonfinite"):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, "Metadata_Compound", control_value="DMSO")


# ----------------------------------------------------------------------------------------- rank_inverse_normal


def brute_force_int(matrix, c=3 / 8):
    """Reference: scipy's average ranks and normal quantile function, one column at a time."""
    n = matrix.shape[0]
    return np.column_stack([norm.ppf((rankdata(matrix[:, j]) - c) / (n - 2 * c + 1)) for j in range(matrix.shape[1])])


@pytest.mark.parametrize("c", [3 / 8, 0.5, 0.0])
def test_rank_inverse_normal_matches_brute_force_on_bbbc021(bbbc021_normalized, c):
    matrix = bbbc021_normalized.X.astype(np.float64)
    np.testing.assert_array_equal(rank_inverse_normal_array(matrix, c=c), brute_force_int(matrix, c))


def test_rank_inverse_normal_handles_ties_with_average_ranks():
    rng = np.random.default_rng(1)
    matrix = np.column_stack([rng.integers(0, 5, 400), np.round(rng.normal(size=400), 1), np.ones(400)])
    np.testing.assert_array_equal(rank_inverse_normal_array(matrix), brute_force_int(matrix))
    np.testing.assert_array_equal(average_ranks(matrix), np.column_stack([rankdata(col) for col in matrix.T]))


def test_rank_inverse_normal_writes_x_or_layer(lincs):
    expected = brute_force_int(lincs.X.astype(np.float64))
    transformed = cpe.pp.rank_inverse_normal(lincs, copy=True)
    assert transformed.X.dtype == np.float32
    np.testing.assert_allclose(transformed.X, expected, rtol=1e-6, atol=1e-6)
    lincs.layers["int"] = lincs.X.copy()
    cpe.pp.rank_inverse_normal(lincs, layer="int")
    np.testing.assert_array_equal(lincs.layers["int"], transformed.X)
    assert lincs.uns["cpembed_pp"]["rank_inverse_normal"]["params"] == {"c": 3 / 8, "layer": "int"}


def test_rank_inverse_normal_rejects_bad_input(lincs):
    with pytest.raises(ValueError, match=r"c=1\.5"):
        cpe.pp.rank_inverse_normal(lincs, c=1.5)
    lincs.X[3, 3] = np.inf
    with pytest.raises(ValueError, match="drop_nonfinite"):
        cpe.pp.rank_inverse_normal(lincs)
    with pytest.raises(TypeError, match="numeric"):
        cpe.pp.rank_inverse_normal(ad.AnnData(np.array([["a", "b"], ["c", "d"]], dtype=object)))


# ------------------------------------------------------------------------------------------ correlation_filter


def test_correlation_matrix_matches_numpy(bbbc021_normalized, lincs):
    for matrix in (bbbc021_normalized.X, lincs.X):
        np.testing.assert_allclose(correlation_matrix(matrix), np.corrcoef(matrix.T), rtol=0, atol=1e-12)
    spearman = pd.DataFrame(lincs.X).corr(method="spearman").to_numpy()
    np.testing.assert_allclose(correlation_matrix(lincs.X, method="spearman"), spearman, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "threshold"), [("pearson", 0.9), ("pearson", 0.5), ("spearman", 0.6)])
def test_correlation_filter_matches_pycytominer_on_lincs(lincs, method, threshold):
    df = pd.DataFrame(lincs.X, columns=list(lincs.var_names))
    excluded = correlation_threshold(df, features=list(df.columns), threshold=threshold, method=method)
    filtered = cpe.pp.correlation_filter(lincs, threshold=threshold, method=method, copy=True)
    assert list(filtered.var_names) == [name for name in lincs.var_names if name not in excluded]
    if threshold < 0.9:
        assert len(excluded) > 100  # the comparison is not vacuous


def test_correlation_filter_matches_pycytominer_on_raw_bbbc021(bbbc021):
    df = pd.DataFrame(bbbc021.X, columns=list(bbbc021.var_names))
    excluded = correlation_threshold(df, features=list(df.columns))
    assert len(excluded) > 100
    assert set(bbbc021.var_names[~correlation_mask(bbbc021.X)]) == set(excluded)


def test_correlation_filter_matches_pycytominer_on_normalized_bbbc021(bbbc021_normalized):
    """BBBC021 holds identical features (e.g. Neighbors at two distances); pycytominer orders their tied sums by
    rounding noise, this filter by position. The kept features agree once identical columns count as one."""
    matrix = bbbc021_normalized.X
    names = np.asarray(bbbc021_normalized.var_names)
    excluded = set(correlation_threshold(pd.DataFrame(matrix, columns=names), features=list(names)))
    keep = correlation_mask(matrix)
    groups = duplicate_groups(matrix)
    kept_by_pycytominer = np.bincount(groups[[name not in excluded for name in names]], minlength=groups.max() + 1)
    np.testing.assert_array_equal(np.bincount(groups[keep], minlength=groups.max() + 1), kept_by_pycytominer)
    unique = ~pd.Series(groups).duplicated().to_numpy()
    excluded_unique = correlation_threshold(pd.DataFrame(matrix[:, unique], columns=names[unique]))
    assert set(names[unique][~correlation_mask(matrix[:, unique])]) == set(excluded_unique)


def test_correlation_filter_absolute_drops_anticorrelated_pairs(lincs):
    """Reference: pycytominer's rule applied to |r|, written out with pandas."""
    df = pd.DataFrame(lincs.X, columns=list(lincs.var_names))
    absolute = df.corr().abs()
    order = absolute.sum().sort_values(kind="stable").index
    position = pd.Series(np.arange(len(order)), index=order)
    lower = absolute.where(np.tril(np.ones(absolute.shape, dtype=bool), k=-1)).stack()
    pairs = lower[lower > 0.8].index
    expected = {a if position[a] > position[b] else b for a, b in pairs}
    filtered = cpe.pp.correlation_filter(lincs, threshold=0.8, absolute=True, copy=True)
    assert set(filtered.uns["cpembed_pp"]["correlation_filter"]["dropped_features"]) == expected
    signed = cpe.pp.correlation_filter(lincs, threshold=0.8, copy=True)
    assert signed.n_vars > filtered.n_vars


def test_correlation_filter_rejects_bad_input(lincs):
    with pytest.raises(ValueError, match="kendall"):
        cpe.pp.correlation_filter(lincs, method="kendall")
    with pytest.raises(ValueError, match="threshold"):
        cpe.pp.correlation_filter(lincs, threshold=2)


# ---------------------------------------------------------------------------------------------- clip_quantiles


def test_clip_quantiles_matches_pandas(bbbc021_normalized):
    df = pd.DataFrame(bbbc021_normalized.X.astype(np.float64))
    expected = df.clip(lower=df.quantile(0.05), upper=df.quantile(0.95), axis=1).to_numpy()
    adata = bbbc021_normalized.copy()
    adata.X = adata.X.astype(np.float64)
    cpe.pp.clip_quantiles(adata, lower=0.05, upper=0.95)
    np.testing.assert_array_equal(adata.X, expected)
    low, high = np.quantile(df.to_numpy(), [0.01, 0.99])
    whole = cpe.pp.clip_quantiles(bbbc021_normalized, per_feature=False, copy=True)
    np.testing.assert_allclose(whole.X, np.clip(df.to_numpy(), low, high), rtol=1e-6)
    assert whole.X.dtype == np.float32


def test_clip_quantiles_rejects_bad_levels(lincs):
    with pytest.raises(ValueError, match="lower"):
        cpe.pp.clip_quantiles(lincs, lower=0.9, upper=0.1)


# ---------------------------------------------------------------------------------------------- feature_groups


def test_feature_groups_on_bbbc021(bbbc021):
    cpe.pp.feature_groups(bbbc021)
    groups = bbbc021.var["feature_group"]
    assert isinstance(groups.dtype, pd.CategoricalDtype)
    assert list(groups.cat.categories) == sorted(groups.cat.categories)
    assert groups["Nuclei_Intensity_MeanIntensity_CorrDAPI"] == "DAPI-Nuclei"
    assert groups["Cells_Texture_Correlation_CorrActin_10_0"] == "Actin-Cells"
    assert groups["Cells_AreaShape_Area"] == "Cells"
    expected = {
        f"{channel}-{compartment}" if channel else compartment
        for compartment, channel in zip(bbbc021.var["compartment"], bbbc021.var["channel"], strict=True)
    }
    assert set(groups.cat.categories) == expected


def test_feature_groups_after_an_h5ad_round_trip(bbbc021, tmp_path):
    """Written .h5ad files store the parsed name columns as categoricals; grouping must read them the same."""
    expected = cpe.pp.feature_groups(bbbc021, copy=True).var["feature_group"]
    bbbc021.write_h5ad(tmp_path / "profiles.h5ad")
    reread = ad.read_h5ad(tmp_path / "profiles.h5ad")
    assert isinstance(reread.var["channel"].dtype, pd.CategoricalDtype)
    cpe.pp.feature_groups(reread)
    pd.testing.assert_series_equal(reread.var["feature_group"], expected)


def test_feature_groups_on_jump_names():
    names = [
        "Nuclei_Correlation_Correlation_DNA_ER",
        "Nuclei_Correlation_RWC_ER_DNA",
        "Cells_Intensity_MeanIntensity_Mito",
        "Cytoplasm_Texture_AngularSecondMoment_AGP_10_00",
        "Cells_RadialDistribution_FracAtD_DNA_1of4",
        "Cells_Granularity_1_Mito",
        "Cells_AreaShape_Area",
        "Nuclei_Neighbors_NumberOfNeighbors_Adjacent",
        "PC1",
    ]
    adata = ad.AnnData(np.zeros((2, len(names))), var=pd.DataFrame(index=names))
    labelled = cpe.pp.feature_groups(adata, key_added="group", copy=True)
    assert "group" not in adata.var
    assert labelled.var["group"].tolist() == [
        "DNA_ER-Nuclei",
        "DNA_ER-Nuclei",
        "Mito-Cells",
        "AGP-Cytoplasm",
        "DNA-Cells",
        "Mito-Cells",
        "Cells",
        "Nuclei",
        "Other",
    ]
    assert labelled.var["group"].cat.categories.tolist() == sorted(set(labelled.var["group"]))
    labelled.var["compartment"], labelled.var["channel"], labelled.var["channel_2"] = "Cells", "RNA", ""
    cpe.pp.feature_groups(labelled, key_added="group")
    assert set(labelled.var["group"]) == {"RNA-Cells"}  # var columns win over the names


# ------------------------------------------------------------------------------------------------- copy rules

STEPS = {
    "drop_nonfinite": (cpe.pp.drop_nonfinite, (), {"how": "wells"}),
    "variation_filter": (cpe.pp.variation_filter, (), {}),
    "control_variation_filter": (cpe.pp.control_variation_filter, (PLATE, NEGCON), {}),
    "normalize_to_controls": (cpe.pp.normalize_to_controls, (PLATE, "Metadata_Compound"), {"control_value": "DMSO"}),
    "rank_inverse_normal": (cpe.pp.rank_inverse_normal, (), {}),
    "correlation_filter": (cpe.pp.correlation_filter, (), {}),
    "clip_quantiles": (cpe.pp.clip_quantiles, (), {}),
    "feature_groups": (cpe.pp.feature_groups, (), {}),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_copy_leaves_input_untouched_and_inplace_matches(bbbc021, step):
    function, args, kwargs = STEPS[step]
    bbbc021.X[5, 7] = np.nan if step == "drop_nonfinite" else bbbc021.X[5, 7]
    original = bbbc021.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        copied = function(bbbc021, *args, **kwargs, copy=True)
        assert copied is not bbbc021
        np.testing.assert_array_equal(bbbc021.X, original.X)
        pd.testing.assert_frame_equal(bbbc021.var, original.var)
        pd.testing.assert_frame_equal(bbbc021.obs, original.obs)
        assert "cpembed_pp" not in bbbc021.uns
        assert function(bbbc021, *args, **kwargs) is None
    np.testing.assert_array_equal(bbbc021.X, copied.X)
    pd.testing.assert_frame_equal(bbbc021.var, copied.var)
    assert list(bbbc021.uns["cpembed_pp"]) == [step]


def test_inplace_on_a_view_changes_only_the_view(bbbc021):
    view = bbbc021[:100]
    cpe.pp.rank_inverse_normal(view)
    assert not view.is_view
    np.testing.assert_array_equal(view.X, rank_inverse_normal_array(bbbc021.X[:100]))
    np.testing.assert_array_equal(bbbc021.X, cpe.datasets.bbbc021().X)


def test_records_can_be_written_to_h5ad(bbbc021_normalized, tmp_path):
    adata = bbbc021_normalized.copy()
    cpe.pp.correlation_filter(adata)
    cpe.pp.feature_groups(adata)
    adata.write_h5ad(tmp_path / "pp.h5ad")
    back = ad.read_h5ad(tmp_path / "pp.h5ad")
    assert set(back.uns["cpembed_pp"]) == {
        "control_variation_filter",
        "normalize_to_controls",
        "correlation_filter",
        "feature_groups",
    }
    assert back.uns["cpembed_pp"]["correlation_filter"]["params"]["threshold"] == 0.9


def test_feature_filters_subset_layers_and_var_together(lincs):
    lincs.layers["copy"] = lincs.X * 2
    lincs.varm["loadings"] = np.arange(lincs.n_vars * 2).reshape(-1, 2)
    original = lincs.copy()
    cpe.pp.correlation_filter(lincs, threshold=0.5)
    kept = original.var_names.get_indexer(lincs.var_names)
    assert 0 < lincs.n_vars < original.n_vars
    np.testing.assert_array_equal(lincs.X, original.X[:, kept])
    np.testing.assert_array_equal(lincs.layers["copy"], original.layers["copy"][:, kept])
    np.testing.assert_array_equal(lincs.varm["loadings"], original.varm["loadings"][kept])
    pd.testing.assert_frame_equal(lincs.var, original.var.iloc[kept])


# ----------------------------------------------------------------------------------- input that empties the data


def keep_one_control(adata, plate):
    """Unflag all negative controls of ``plate`` but its first."""
    rows = np.flatnonzero((adata.obs[PLATE] == plate).to_numpy() & adata.obs[NEGCON].to_numpy())
    adata.obs.iloc[rows[1:], adata.obs.columns.get_loc(NEGCON)] = False
    return adata


def test_drop_nonfinite_refuses_to_drop_every_feature_for_one_nan_well(bbbc021):
    bbbc021.X[3] = np.nan
    with pytest.raises(ValueError, match=r"keep 0 of 516 features: well '3' alone drops 516.*how='wells'"):
        cpe.pp.drop_nonfinite(bbbc021)
    assert "cpembed_pp" not in bbbc021.uns
    cleaned = cpe.pp.drop_nonfinite(bbbc021, how="wells", copy=True)
    assert cleaned.shape == (bbbc021.n_obs - 1, bbbc021.n_vars)


def test_drop_nonfinite_refuses_to_drop_most_features_for_one_well(bbbc021):
    bbbc021.X[3, :-10] = np.nan  # a failed well, finite in 10 features only
    with pytest.raises(ValueError, match="keep 10 of 516 features: well '3' alone drops 506"):
        cpe.pp.drop_nonfinite(bbbc021)


def test_drop_nonfinite_names_the_wells_when_several_empty_the_data(bbbc021):
    bbbc021.X[[3, 4]] = np.inf
    with pytest.raises(ValueError, match=r"the wells dropping the most: '3' \(516\), '4' \(516\)"):
        cpe.pp.drop_nonfinite(bbbc021)


def test_drop_nonfinite_warns_when_scattered_nan_drop_most_features(bbbc021):
    # one NaN in each of 300 wells, each in another feature: no well is to blame alone, yet most features go
    rows = np.arange(300)
    bbbc021.X[rows, rows] = np.nan
    with pytest.warns(UserWarning, match=r"keep 216 of 516 features: the wells dropping the most.*how='wells'"):
        cpe.pp.drop_nonfinite(bbbc021)
    assert bbbc021.n_vars == 216


def test_drop_nonfinite_wells_refuses_to_drop_every_well_for_one_feature(bbbc021):
    bbbc021.X[:, 5] = np.nan
    name = bbbc021.var_names[5]
    with pytest.raises(ValueError, match=rf"keep 0 of 632 wells: feature '{name}' alone.*how='features'"):
        cpe.pp.drop_nonfinite(bbbc021, how="wells")


def test_control_variation_filter_refuses_a_plate_with_one_control_well(bbbc021):
    keep_one_control(bbbc021, "Week1_22123")
    with pytest.raises(ValueError, match=r"plate 'Week1_22123' \(1 control well\) alone drops .*at least 2 negative"):
        cpe.pp.control_variation_filter(bbbc021, PLATE, NEGCON)
    assert "cpembed_pp" not in bbbc021.uns


def test_control_variation_filter_refuses_a_plate_with_constant_controls(bbbc021):
    rows = np.flatnonzero((bbbc021.obs[PLATE] == "Week2_24121").to_numpy() & bbbc021.obs[NEGCON].to_numpy())
    bbbc021.X[rows] = bbbc021.X[rows[0]]
    with pytest.raises(ValueError, match=r"plate 'Week2_24121' \(6 control wells\) alone drops"):
        cpe.pp.control_variation_filter(bbbc021, PLATE, NEGCON)


def test_control_variation_filter_rejects_a_negative_threshold(bbbc021):
    with pytest.raises(ValueError, match="min_coef_var=-1"):
        cpe.pp.control_variation_filter(bbbc021, PLATE, NEGCON, min_coef_var=-1)


def test_variation_filter_refuses_to_drop_every_feature_of_constant_data():
    adata = ad.AnnData(np.ones((20, 4)))
    with pytest.raises(ValueError, match=r"variation_filter would keep 0 of 4 features: rule 'freq_cut=0\.05' alone"):
        cpe.pp.variation_filter(adata)


# ------------------------------------------------------------------------------------ values beyond float range


@pytest.mark.filterwarnings("ignore:.*zero MAD")
def test_transform_refuses_a_result_beyond_float32_range(bbbc021):
    """A near-zero control MAD times float32's large values overflows float32: an error, not inf in X."""
    bbbc021.X[:, 0] = np.where(bbbc021.obs[NEGCON], 1.0, 1e38) + np.arange(bbbc021.n_obs) * 1e-6
    original = bbbc021.X.copy()
    with pytest.raises(ValueError, match=r"normalize_to_controls's result for adata.X would hold \d+ NaN or infinite"):
        cpe.pp.normalize_to_controls(bbbc021, PLATE, NEGCON)
    np.testing.assert_array_equal(bbbc021.X, original)
    assert "cpembed_pp" not in bbbc021.uns


def test_aggregate_refuses_values_beyond_float32_range():
    adata = ad.AnnData(np.array([[1.0, 2.0], [3.0, 1e39]]), obs=pd.DataFrame({"well": ["a", "a"]}, index=["0", "1"]))
    with pytest.raises(ValueError, match="aggregate's result would hold 1 NaN or infinite values"):
        cpe.pp.aggregate(adata, "well")


def test_statistics_of_huge_values_do_not_overflow(bbbc021_normalized):
    """Squares of values near 1e200 overflow float64; correlations and z-scores of the scaled data stay exact."""
    matrix = bbbc021_normalized.X.astype(np.float64)
    np.testing.assert_array_equal(correlation_matrix(matrix * 2.0**700), correlation_matrix(matrix))
    plates = bbbc021_normalized.obs[PLATE].to_numpy()
    controls = bbbc021_normalized.obs[NEGCON].to_numpy()
    standardized = normalize_to_controls_array(matrix, plates, controls, method="standardize")
    huge = normalize_to_controls_array(matrix * 2.0**700, plates, controls, method="standardize")
    np.testing.assert_array_equal(huge, standardized)
    centred = center_scale_to_controls(matrix, plates, controls, eps=0)
    np.testing.assert_array_equal(center_scale_to_controls(matrix * 2.0**700, plates, controls, eps=0), centred)


# -------------------------------------------------------------------------------------------- backed AnnData


@pytest.fixture(scope="module")
def bbbc021_file(bbbc021_shared, tmp_path_factory):
    path = tmp_path_factory.mktemp("backed") / "bbbc021.h5ad"
    bbbc021_shared.write_h5ad(path)
    return path


@pytest.mark.parametrize("step", list(STEPS))
def test_backed_anndata_is_copied_to_memory_or_refused_in_place(bbbc021_shared, bbbc021_file, step):
    function, args, kwargs = STEPS[step]
    backed = ad.read_h5ad(bbbc021_file, backed="r")
    with pytest.raises(ValueError, match=r"backed .* `adata = adata.to_memory\(\)`"):
        function(backed, *args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = function(backed, *args, **kwargs, copy=True)
        expected = function(bbbc021_shared, *args, **kwargs, copy=True)
    assert not result.isbacked
    np.testing.assert_array_equal(result.X, expected.X)
    assert backed.isbacked
    assert "cpembed_pp" not in backed.uns
