import gzip
import warnings

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
    with warnings.catch_warnings():
        warnings.simplefilter("error")
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


@pytest.mark.parametrize("index_name", [None, "well_id"])
def test_parquet_written_with_pandas_index(table, tmp_path, index_name):
    path = tmp_path / "indexed.parquet"
    wells = pd.Index([f"well{i}" for i in range(len(table))], name=index_name)
    table.set_axis(wells).to_parquet(path)
    adata = read_profiles(path)
    assert list(adata.var_names) == FEATURES
    assert list(adata.obs_names) == list(wells)


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
    with pytest.raises(ValueError, match="has no feature columns"):
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


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path``, gzip-compressed when the name ends in .gz."""
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize(
    ("lines", "bad_line"),
    [
        (["Metadata_Plate,Cells_A,Cells_B", "1,0.5,7", "2,0.25,8,"], 3),  # a trailing comma
        (["Metadata_Plate,Cells_A,Cells_B", "1,0.5,7,", "2,0.25,8,"], 2),  # on every row: pandas shifts the columns
        (["Metadata_Plate,Cells_A,Cells_B", "1,0.5,7", "2,0.25"], 3),  # a field missing
    ],
)
def test_read_profiles_refuses_ragged_rows(tmp_path, suffix, lines, bad_line):
    path = tmp_path / f"ragged{suffix}"
    write_text(path, "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"ragged{suffix}, line {bad_line}: \d fields where the header has 3"):
        read_profiles(path)


def test_read_profiles_allows_quoted_commas_and_newlines(tmp_path):
    path = tmp_path / "quoted.csv"
    write_text(path, 'Metadata_Compound,Cells_A\n"2,4-dinitrophenol",1.5\n"two\nlines",2.5\n')
    adata = read_profiles(path)
    assert list(adata.obs["Metadata_Compound"]) == ["2,4-dinitrophenol", "two\nlines"]
    np.testing.assert_array_equal(adata.X[:, 0], [1.5, 2.5])


def test_read_profiles_takes_an_unnamed_first_column_as_row_names(table, tmp_path):
    path = tmp_path / "with_index.csv"
    table.set_axis([f"w{i}" for i in range(len(table))]).to_csv(path)  # index=True by default
    adata = read_profiles(path)
    assert list(adata.var_names) == FEATURES
    assert list(adata.obs_names) == [f"w{i}" for i in range(len(table))]
    np.testing.assert_array_equal(adata.X, table[FEATURES].to_numpy(dtype=np.float32))


def test_read_profiles_refuses_unnamed_columns(table, tmp_path):
    with pytest.raises(ValueError, match=r"column 1 \('Unnamed: 0'\) has no name"):
        read_profiles(pd.read_csv(io_csv(table, tmp_path)))
    path = tmp_path / "blank_name.csv"
    write_text(path, "Metadata_Well,,Cells_A\nA01,1,2\n")
    with pytest.raises(ValueError, match=r"blank_name.csv: column 2 \(''\) has no name"):
        read_profiles(path)


def io_csv(table: pd.DataFrame, folder) -> str:
    """``table`` written with its index, as ``DataFrame.to_csv`` does by default."""
    path = folder / "indexed.csv"
    table.to_csv(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_read_profiles_keeps_metadata_text(tmp_path, suffix):
    path = tmp_path / f"text{suffix}"
    write_text(
        path,
        "Metadata_Plate,Metadata_Compound,Metadata_Code,Cells_A\n01,None,007,1\n1,NA,7,2\n001,nan,,3\n1,,0.50,4\n",
    )
    obs = read_profiles(path).obs
    assert list(obs["Metadata_Plate"]) == ["01", "1", "001", "1"]
    assert obs["Metadata_Plate"].nunique() == 3
    assert obs["Metadata_Compound"].tolist()[:3] == ["None", "NA", "nan"]
    assert obs["Metadata_Compound"].isna().tolist() == [False, False, False, True]
    assert obs["Metadata_Code"].tolist()[:2] == ["007", "7"]
    assert obs["Metadata_Code"].isna().tolist() == [False, False, True, False]


def test_read_profiles_types_metadata_only_when_the_text_is_unambiguous(tmp_path):
    path = tmp_path / "typed.csv"
    write_text(
        path,
        "Metadata_is_negcon,Metadata_is_poscon,Metadata_Site,Metadata_Count,Metadata_Dose,Metadata_Big,Cells_A\n"
        "True,True,1,3,0,99999999999999999999,1\nFalse,,2,,0.5,1,2\nTrue,False,-3,4,1e-05,2,3\n",
    )
    obs = read_profiles(path).obs
    assert obs["Metadata_is_negcon"].dtype == bool
    assert obs["Metadata_is_negcon"].tolist() == [True, False, True]
    assert obs["Metadata_is_poscon"].dtype == "boolean"
    assert obs["Metadata_is_poscon"].isna().tolist() == [False, True, False]
    assert obs["Metadata_Site"].dtype == np.int64
    assert obs["Metadata_Site"].tolist() == [1, 2, -3]
    assert obs["Metadata_Count"].dtype == "Int64"
    assert obs["Metadata_Count"].isna().tolist() == [False, True, False]
    assert obs["Metadata_Dose"].dtype == np.float64
    assert obs["Metadata_Dose"].tolist() == [0.0, 0.5, 1e-05]
    assert list(obs["Metadata_Big"]) == ["99999999999999999999", "1", "2"]  # beyond int64: kept as text


def test_read_profiles_dtype_overrides_metadata_types(tmp_path):
    path = tmp_path / "batches.csv"
    write_text(path, "Metadata_Batch,Metadata_Flag,Cells_A\n1,True,0.5\n2,False,0.25\n")
    adata = read_profiles(path, dtype={"Metadata_Batch": str, "Metadata_Flag": "boolean"})
    assert list(adata.obs["Metadata_Batch"]) == ["1", "2"]
    assert isinstance(adata.obs["Metadata_Batch"].dtype, pd.CategoricalDtype)
    assert adata.obs["Metadata_Flag"].dtype == "boolean"
    assert read_profiles(path, dtype={"Metadata_Batch": float}).obs["Metadata_Batch"].dtype == np.float64
    with pytest.raises(KeyError, match="'Cells_A'"):
        read_profiles(path, dtype={"Cells_A": str})
    table = pd.DataFrame({"Metadata_Plate": ["P1", "False"], "Cells_A": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"'Metadata_Plate' cannot be read as .*bool.*'P1'"):
        read_profiles(table, dtype={"Metadata_Plate": bool})


def test_read_profiles_reads_object_flags_with_missing_values_as_boolean():
    table = pd.DataFrame({"Metadata_is_negcon": [True, None, False], "Cells_A": [1.0, 2.0, 3.0]})
    flags = read_profiles(table).obs["Metadata_is_negcon"]
    assert flags.dtype == "boolean"
    assert flags.isna().tolist() == [False, True, False]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip_keeps_text_metadata_and_flags(tmp_path, suffix):
    table = pd.DataFrame(
        {
            "Metadata_Plate": ["01", "1", "001", "1"],
            "Metadata_Compound": ["None", "NA", None, "nan"],
            "Metadata_Code": ["007", "7", "x", "0.50"],
            "Metadata_is_negcon": [True, False, False, True],
            "Metadata_Dose": [0.1, np.nan, 3.0, 1e-05],
            "Metadata_Replicate": [1, 2, 3, 4],
            "Cells_A": [1.5, -2.0, np.nan, 3.25],
        }
    )
    adata = read_profiles(table)
    path = tmp_path / f"profiles{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_profiles(adata, path)
    back = read_profiles(path)
    pd.testing.assert_frame_equal(back.obs, adata.obs, check_categorical=False)
    np.testing.assert_array_equal(back.X, adata.X)


def test_write_profiles_warns_about_text_read_back_as_numbers(tmp_path):
    adata = read_profiles(
        pd.DataFrame({"Metadata_Batch": ["1", "2"], "Metadata_Well": ["A01", ""], "Cells_A": [1.0, 2]})
    )
    path = tmp_path / "profiles.csv"
    with pytest.warns(UserWarning, match=r"'Metadata_Batch', 'Metadata_Well' back with other values or types"):
        write_profiles(adata, path)
    assert read_profiles(path).obs["Metadata_Batch"].dtype == np.int64
    restored = read_profiles(path, dtype={"Metadata_Batch": str}).obs["Metadata_Batch"]
    assert list(restored) == ["1", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_profiles(adata, tmp_path / "profiles.parquet")
    pd.testing.assert_frame_equal(read_profiles(tmp_path / "profiles.parquet").obs, adata.obs)


def test_read_profiles_names_a_header_only_or_empty_csv(tmp_path):
    path = tmp_path / "header.csv"
    write_text(path, "Metadata_Well,Cells_A\n")
    with pytest.raises(ValueError, match=r"header\.csv has a header but no data rows"):
        read_profiles(path)
    path = tmp_path / "empty.csv"
    write_text(path, "")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        read_profiles(path)
    with pytest.raises(ValueError, match="The DataFrame has a header but no data rows"):
        read_profiles(pd.DataFrame({"Metadata_Well": [], "Cells_A": []}))


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab")])
def test_read_profiles_refuses_a_csv_with_another_delimiter(tmp_path, delimiter, name):
    path = tmp_path / "european.csv"
    write_text(path, f"Metadata_Well{delimiter}Cells_A\nA01{delimiter}1,5\n")
    with pytest.raises(ValueError, match=rf"european.csv looks {name}-separated"):
        read_profiles(path)


def test_read_profiles_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        read_profiles(tmp_path / "missing.csv")


@pytest.mark.parametrize("name", ["profiles.csv.gz", "profiles.parquet", "profiles.csv"])
def test_read_profiles_names_a_truncated_or_corrupt_file(table, tmp_path, name):
    whole = tmp_path / f"whole_{name}"
    write_profiles(read_profiles(pd.concat([table] * 200, ignore_index=True)), whole)
    path = tmp_path / name
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2] if not name.endswith(".csv") else b"\xff\xfe\x00garbage\x00" * 4)
    with pytest.raises(ValueError, match=rf"Cannot read .*{name} as a .* file .*truncated, corrupt"):
        read_profiles(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", None])
def test_read_profiles_refuses_values_beyond_float32(tmp_path, suffix):
    table = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "Cells_A": [1.0, 2.0], "Cells_B": [1e39, -np.inf]})
    if suffix is None:
        source = table
    else:
        source = tmp_path / f"huge{suffix}"
        table.to_parquet(source, index=False) if suffix == ".parquet" else table.to_csv(source, index=False)
    with pytest.raises(ValueError, match=r"1 feature columns hold values beyond float32's range .*'Cells_B'"):
        read_profiles(source)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_profiles_leaves_no_half_written_file(table, tmp_path, monkeypatch, suffix):
    path = tmp_path / f"profiles{suffix}"
    adata = read_profiles(table)
    write_profiles(adata, path)
    before = path.read_bytes()
    writer = "to_parquet" if suffix == ".parquet" else "to_csv"

    def fail_half_way(self, target, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"Metadata_Plate,Metadata_W")
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, writer, fail_half_way)
    with pytest.raises(OSError, match="No space left"):
        write_profiles(adata, path)
    assert path.read_bytes() == before
    assert [file.name for file in tmp_path.iterdir()] == [path.name]
