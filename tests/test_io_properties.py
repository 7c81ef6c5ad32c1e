"""Properties of the profile round trip: write_profiles then read_profiles keeps every value and type, or says not."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpembed.io import read_profiles, write_profiles

# Identifiers that readers tend to re-type: zero-padded numbers, words pandas takes for missing, flags, commas.
TRICKY_TEXT = ["007", "7", "01", "1", "001", "None", "NA", "nan", "NULL", "True", "false", "1.50", "1e3", "-0", " 1"]
TEXT = st.one_of(
    st.sampled_from(TRICKY_TEXT),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=6),
    st.none(),
)
SUFFIXES = [".csv", ".csv.gz", ".parquet"]
PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def profile_tables(draw) -> pd.DataFrame:
    """Small profile tables: text, integer, float and flag metadata columns beside float32 features."""
    n_rows = draw(st.integers(1, 5))

    def column(elements):
        return draw(st.lists(elements, min_size=n_rows, max_size=n_rows))

    table = pd.DataFrame(
        {
            "Metadata_Plate": column(st.sampled_from(["01", "1", "001", "P1"])),
            "Metadata_Compound": column(TEXT),
            "Metadata_Replicate": np.array(column(st.integers(-(2**63), 2**63 - 1)), dtype=np.int64),
            "Metadata_Dose": np.array(column(st.floats(allow_infinity=False)), dtype=np.float64),
            "Metadata_is_negcon": np.array(column(st.booleans()), dtype=bool),
        }
    )
    n_features = draw(st.integers(1, 3))
    for feature in range(n_features):
        table[f"Cells_Feature_{feature}"] = np.array(column(st.floats(width=32)), dtype=np.float32)
    return table


def write_and_read(table: pd.DataFrame, folder, suffix: str):
    """The profiles of ``table``, what a ``suffix`` file gives back, and the obs columns write_profiles warned of."""
    adata = read_profiles(table)
    path = folder / f"profiles{suffix}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_profiles(adata, path)
    messages = " ".join(str(warning.message) for warning in caught)
    listed = re.search(r"obs column\(s\) (.*?) back with", messages)
    warned = set(re.findall(r"'([^']+)'", listed.group(1))) if listed else set()
    return adata, read_profiles(path), warned


@pytest.mark.parametrize("suffix", SUFFIXES)
@PROPERTY_SETTINGS
@given(table=profile_tables())
def test_round_trip_keeps_values_and_types_or_warns(tmp_path_factory, suffix, table):
    adata, back, warned = write_and_read(table, tmp_path_factory.mktemp("round_trip"), suffix)
    np.testing.assert_array_equal(back.X, adata.X)
    assert list(back.var_names) == list(adata.var_names)
    for name in adata.obs.columns:
        if name not in warned:
            pd.testing.assert_series_equal(
                back.obs[name].reset_index(drop=True),
                adata.obs[name].reset_index(drop=True),
                check_categorical=False,
            )
    if suffix == ".parquet":
        assert not warned


@pytest.mark.parametrize("suffix", SUFFIXES)
@PROPERTY_SETTINGS
@given(table=profile_tables())
def test_round_trip_never_changes_plates_flags_or_numbers(tmp_path_factory, suffix, table):
    # Zero-padded plates stay distinct text; flags stay boolean; numbers keep their value and type.
    _, back, warned = write_and_read(table, tmp_path_factory.mktemp("round_trip"), suffix)
    # Only text that looks like numbers (plates all "1") or doses that are all missing may come back otherwise.
    assert warned <= {"Metadata_Plate", "Metadata_Compound", "Metadata_Dose"}
    assert list(back.obs["Metadata_Plate"].astype(str)) == list(table["Metadata_Plate"])
    assert back.obs["Metadata_is_negcon"].dtype == bool
    assert back.obs["Metadata_Replicate"].dtype == np.int64
    np.testing.assert_array_equal(back.obs["Metadata_Replicate"], table["Metadata_Replicate"])
    if "Metadata_Dose" not in warned:
        np.testing.assert_array_equal(back.obs["Metadata_Dose"], table["Metadata_Dose"])
