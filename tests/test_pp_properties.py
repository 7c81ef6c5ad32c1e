"""Properties of recipe_jump on random small screens: a finite, reported result or a clear error, input untouched."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import cpembed as cpe

PLATE, NEGCON = "Metadata_Plate", "Metadata_is_negcon"
#: What every error of recipe_jump on these inputs says: the plates without controls, or the step, the feature
#: count it would keep and the plate or well to blame, or the overflow.
CLEAR_ERRORS = ("plates have no negative-control well", "would keep", "overflowed")
#: Values a profile can take besides ordinary ones: missing, infinite, beyond float32's range, repeated.
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 1e39, -1e39, 0.0, 1.0]

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def screens(draw) -> ad.AnnData:
    """A few plates of a few wells, some controls, lognormal features with special values, constant or
    repeated columns and all-NaN wells mixed in."""
    n_plates = draw(st.integers(1, 3))
    wells_per_plate = draw(st.integers(2, 12))
    n_features = draw(st.integers(2, 8))
    n_wells = n_plates * wells_per_plate
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    matrix = np.exp(rng.normal(size=(n_wells, n_features)) + rng.normal(size=n_features))
    n_special = draw(st.integers(0, 4))
    rows, columns = rng.integers(0, n_wells, n_special), rng.integers(0, n_features, n_special)
    matrix[rows, columns] = draw(st.lists(st.sampled_from(SPECIAL_VALUES), min_size=n_special, max_size=n_special))
    if draw(st.booleans()):
        matrix[:, rng.integers(n_features)] = 3.0  # a constant feature
    if draw(st.integers(0, 3)) == 0:
        matrix[rng.integers(n_wells)] = np.nan  # a failed well
    controls = rng.random(n_wells) < draw(st.sampled_from([0.3, 0.6, 0.9]))
    obs = pd.DataFrame(
        {PLATE: np.repeat([f"P{p}" for p in range(n_plates)], wells_per_plate), NEGCON: controls},
        index=[f"w{i}" for i in range(n_wells)],
    )
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    with np.errstate(over="ignore"):  # float32 makes ±1e39 infinite, as reading such a file would
        matrix = matrix.astype(dtype)
    return ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=[f"Cells_Feature{j}_DNA" for j in range(n_features)]))


def run_recipe(adata: ad.AnnData, *, copy: bool) -> tuple[ad.AnnData | None, ValueError | None]:
    """The recipe's result, or the ValueError it raised (any other exception fails the test)."""
    try:
        return cpe.pp.recipe_jump(adata, PLATE, NEGCON, copy=copy), None
    except ValueError as error:
        return None, error


def assert_same(adata: ad.AnnData, original: ad.AnnData) -> None:
    np.testing.assert_array_equal(adata.X, original.X)
    assert list(adata.var_names) == list(original.var_names)
    pd.testing.assert_frame_equal(adata.obs, original.obs)
    assert set(adata.uns) == set(original.uns)


def assert_reported_and_finite(result: ad.AnnData, original: ad.AnnData) -> None:
    assert np.isfinite(result.X).all()
    assert result.n_obs == original.n_obs
    assert 0 < result.n_vars <= original.n_vars
    assert set(result.var_names) <= set(original.var_names)
    assert list(result.uns["cpembed_pp"]["recipe_jump"]["n_features"]) == [original.n_vars, result.n_vars]
    n = result.n_obs
    assert np.abs(result.X).max() <= norm.ppf((n - 3 / 8) / (n + 1 / 4)) + 1e-6  # Blom scores of n wells


@SETTINGS
@given(adata=screens())
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_recipe_gives_a_finite_reported_result_or_a_clear_error_and_never_changes_a_copied_input(adata):
    original = adata.copy()
    result, error = run_recipe(adata, copy=True)
    assert_same(adata, original)
    if error is not None:
        assert any(text in str(error) for text in CLEAR_ERRORS), str(error)
        return
    assert_reported_and_finite(result, original)


@SETTINGS
@given(adata=screens())
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_recipe_in_place_matches_the_copy_or_leaves_adata_unchanged(adata):
    original = adata.copy()
    copied, copy_error = run_recipe(original, copy=True)
    returned, error = run_recipe(adata, copy=False)
    assert (error is None) == (copy_error is None)
    if error is not None:
        assert str(error) == str(copy_error)
        assert_same(adata, original)
        return
    assert returned is None
    np.testing.assert_array_equal(adata.X, copied.X)
    assert list(adata.var_names) == list(copied.var_names)


@settings(max_examples=5, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), n_features=st.integers(2, 20))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_recipe_on_simulated_screens_keeps_features_and_reports_them(seed, n_features):
    adata = cpe.datasets.simulate_profiles(
        n_sources=1,
        n_batches_per_source=1,
        n_plates_per_batch=2,
        plate_format=96,
        n_compounds=10,
        n_moas=3,
        n_features=n_features,
        n_latent=4,
        seed=seed,
    )
    original = adata.copy()
    result, error = run_recipe(adata, copy=True)
    assert_same(adata, original)
    assert error is None, str(error)
    assert_reported_and_finite(result, original)
