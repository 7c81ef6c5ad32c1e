import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cpembed as cpe
from cpembed.io import read_profiles, write_profiles


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n_rows = 12
    return pd.DataFrame(
        {
            "Metadata_Plate": ["P1"] * 6 + ["P2"] * 6,
            "Metadata_Well": [f"A{i:02d}" for i in range(1, n_rows + 1)],
            "Metadata_Dose": rng.uniform(0, 10, n_rows),
            "Metadata_Replicate": np.arange(n_rows) % 3,
            "Metadata_is_negcon": np.arange(n_rows) % 4 == 0,
            "Metadata_moa": ["a", None, "b", "a", "c", None, "b", "a", "c", "a", "b", "c"],
            "Cells_AreaShape_Area": rng.normal(300, 20, n_rows),
            "Nuclei_Intensity_MeanIntensity_DNA": rng.normal(0.2, 0.01, n_rows),
            "Cells_Correlation_Correlation_DNA_ER": rng.normal(0.5, 0.1, n_rows),
            "Cytoplasm_Granularity_3_Mito": rng.integers(0, 50, n_rows),
        }
    )


FEATURES = [
    "Cells_AreaShape_Area",
    "Nuclei_Intensity_MeanIntensity_DNA",
    "Cells_Correlation_Correlation_DNA_ER",
    "Cytoplasm_Granularity_3_Mito",
]


def test_read_dataframe(table):
    adata = read_profiles(table)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, table[FEATURES].to_numpy(dtype=np.float32))
    assert list(adata.var_names) == FEATURES
    pd.testing.assert_frame_equal(adata.var, cpe.io.parse_feature_names(FEATURES))
    assert list(adata.obs.columns) == [name for name in table.columns if name.startswith("Metadata_")]
    assert isinstance(adata.obs["Metadata_Plate"].dtype, pd.CategoricalDtype)
    assert isinstance(adata.obs["Metadata_moa"].dtype, pd.CategoricalDtype)
    assert adata.obs["Metadata_moa"].isna().sum() == 2
    assert adata.obs["Metadata_is_negcon"].dtype == bool
    assert pd.api.types.is_integer_dtype(adata.obs["Metadata_Replicate"])
    assert pd.api.types.is_float_dtype(adata.obs["Metadata_Dose"])
    assert list(adata.obs_names) == [str(i) for i in range(len(table))]


def test_read_dataframe_does_not_modify_the_table(table):
    before = table.copy()
    read_profiles(table)
    pd.testing.assert_frame_equal(table, before)


def test_custom_metadata_prefix(table):
    renamed = table.rename(columns=lambda name: name.replace("Metadata_", "meta."))
    adata = read_profiles(renamed, metadata_prefix="meta.")
    assert list(adata.var_names) == FEATURES
    assert "meta.Plate" in adata.obs


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip(table, tmp_path, suffix):
    adata = read_profiles(table)
    path = tmp_path / f"profiles{suffix}"
    write_profiles(adata, path)
    back = read_profiles(path)
    np.testing.assert_array_equal(back.X, adata.X)
    assert list(back.var_names) == list(adata.var_names)
    pd.testing.assert_frame_equal(back.var, adata.var)
    pd.testing.assert_frame_equal(back.obs, adata.obs, check_categorical=False)
    for name in adata.obs.columns:
        assert back.obs[name].dtype.kind == adata.obs[name].dtype.kind, name


def test_round_trip_bundled_data(tmp_path):
    adata = cpe.datasets.lincs_plate()
    adata.obs = adata.obs.drop(columns="Metadata_is_negcon")
    path = tmp_path / "lincs.parquet"
    write_profiles(adata, path)
    back = read_profiles(path)
    np.testing.assert_array_equal(back.X, adata.X)
    pd.testing.assert_frame_equal(back.obs, adata.obs, check_categorical=False)


@pytest.mark.parametrize(("row_group_size", "values_per_read"), [(5, 7), (5, 2**20), (1000, 2**20)])
def test_parquet_reader_equals_pandas_path(table, tmp_path, monkeypatch, row_group_size, values_per_read):
    # a small read budget splits the feature columns into blocks as large tables would be
    monkeypatch.setattr("cpembed.io._profiles._VALUES_PER_READ", values_per_read)
    path = tmp_path / "profiles.parquet"
    table.to_parquet(path, index=False, row_group_size=row_group_size)
    assert pq.ParquetFile(path).num_row_groups == (3 if row_group_size == 5 else 1)
    from_file = read_profiles(path)
    from_pandas = read_profiles(pd.read_parquet(path))
    np.testing.assert_array_equal(from_file.X, from_pandas.X)
    pd.testing.assert_frame_equal(from_file.obs, from_pandas.obs)
    pd.testing.assert_frame_equal(from_file.var, from_pandas.var)


def test_parquet_reader_on_bundled_data(tmp_path, monkeypatch):
    monkeypatch.setattr("cpembed.io._profiles._VALUES_PER_READ", 5_000)
    source = cpe.datasets.lincs_plate()
    path = tmp_path / "lincs.parquet"
    table = pd.concat([source.obs.reset_index(drop=True), source.to_df().reset_index(drop=True)], axis=1)
    table.to_parquet(path, index=False, row_group_size=100)
    np.testing.assert_array_equal(read_profiles(path).X, read_profiles(pd.read_parquet(path)).X)
    np.testing.assert_array_equal(read_profiles(path).X, source.X)


def test_parquet_nulls_become_nan(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(
        pa.table({"Metadata_Well": ["A01", "A02"], "Cells_AreaShape_Area": pa.array([1.5, None]), "n": [1, None]}),
        path,
    )
    adata = read_profiles(path)
    assert np.isnan(adata.X[1]).all()
    np.testing.assert_array_equal(adata.X[0], [1.5, 1.0])


def test_parquet_written_with_pandas_index(table, tmp_path):
    path = tmp_path / "indexed.parquet"
    table.set_axis([f"well{i}" for i in range(len(table))]).to_parquet(path)
    adata = read_profiles(path)
    assert list(adata.var_names) == FEATURES


def test_non_numeric_feature_is_named(table, tmp_path):
    table["Image_FileName_DNA"] = "image.tiff"
    with pytest.raises(ValueError, match="Image_FileName_DNA"):
        read_profiles(table)
    path = tmp_path / "profiles.parquet"
    table.to_parquet(path, index=False)
    with pytest.raises(ValueError, match="Image_FileName_DNA"):
        read_profiles(path)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_duplicated_feature_names_are_named(table, tmp_path, suffix):
    duplicated = pd.concat([table, table[["Cells_AreaShape_Area"]]], axis=1)
    with pytest.raises(ValueError, match="Cells_AreaShape_Area"):
        read_profiles(duplicated)
    path = tmp_path / f"dup{suffix}"
    if suffix == ".parquet":
        pq.write_table(
            pa.Table.from_arrays(
                [pa.array(duplicated.iloc[:, i]) for i in range(6, 11)], names=[*FEATURES, "Cells_AreaShape_Area"]
            ),
            path,
        )
    else:
        duplicated.to_csv(path, index=False)
    with pytest.raises(ValueError, match="more than once: 'Cells_AreaShape_Area'"):
        read_profiles(path)


def test_no_features_and_bad_suffix(table, tmp_path):
    with pytest.raises(ValueError, match="No feature columns"):
        read_profiles(table[["Metadata_Plate", "Metadata_Well"]])
    with pytest.raises(ValueError, match="use one of"):
        read_profiles(tmp_path / "profiles.xlsx")
    with pytest.raises(ValueError, match="use one of"):
        write_profiles(read_profiles(table), tmp_path / "profiles.txt")


def test_write_refuses_columns_that_would_not_round_trip(table, tmp_path):
    adata = read_profiles(table)
    adata.obs["leiden"] = "0"
    with pytest.raises(ValueError, match=r"without the prefix 'Metadata_'.*'leiden'"):
        write_profiles(adata, tmp_path / "profiles.csv")
    adata = read_profiles(table)
    adata.var_names = ["Metadata_Area", *FEATURES[1:]]
    with pytest.raises(ValueError, match="'Metadata_Area'"):
        write_profiles(adata, tmp_path / "profiles.csv")
    assert not (tmp_path / "profiles.csv").exists()


def test_nullable_integer_features_become_nan():
    table = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "Cells_Number_Object_Number": pd.array([3, None], "Int64")})
    adata = read_profiles(table)
    assert adata.X[0, 0] == 3
    assert np.isnan(adata.X[1, 0])
