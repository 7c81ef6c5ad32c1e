"""Read and write per-well profiles: tables with ``Metadata_*`` columns and one column per CellProfiler feature.

This is the layout pycytominer, cytominer-eval and the JUMP Cell Painting data use: one row per well (or per
cell), metadata columns marked by a prefix, every other column a numeric feature. In AnnData the features become
``X`` (float32), the metadata ``obs`` and the parsed feature names ``var``.
"""

from __future__ import annotations

import csv
import gzip
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from .._files import replacing
from .._validation import reading_file
from ._feature_names import parse_feature_names

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

_SUFFIXES = (".csv", ".csv.gz", ".parquet")
_VALUES_PER_READ = 2**20
# Show a progress bar from this many row groups on (pandas writes 1 Mi rows per group by default).
_PROGRESS_FROM_ROW_GROUPS = 8
# An empty column name, or the name pandas gives one: an index written with ``to_csv(index=True)``.
_UNNAMED_COLUMN = re.compile(r"^(Unnamed: \d+)?$")
# Metadata text that states a number without ambiguity: no leading zeros ("007"), no "+", no spaces, no words.
_INTEGER_TEXT = r"^(0|-?[1-9][0-9]*)$"
_NUMBER_TEXT = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_FLAG_TEXT = ("True", "False")
# Feature values that pandas also reads as missing, beside pyarrow's own list ("", "NA", "NaN", "null", ...).
_MORE_MISSING_NUMBERS = ("None", "<NA>")
_TEXT_DTYPES = (str, "str", "string", "category", object, "object")
_DELIMITER_NAMES = {";": "semicolon", "\t": "tab", "|": "pipe"}


def read_profiles(
    source: str | PathLike | pd.DataFrame,
    metadata_prefix: str = "Metadata_",
    *,
    dtype: Mapping[str, Any] | None = None,
) -> AnnData:
    """Read a profile table into AnnData.

    Parameters
    ----------
    source
        A ``.csv``, ``.csv.gz`` or ``.parquet`` file, or a DataFrame already in memory.
    metadata_prefix
        Columns whose name starts with this prefix are metadata; all others are features. ``"Metadata_"`` is the
        CellProfiler / pycytominer convention.
    dtype
        Types of metadata columns, by name, overriding those read (``str`` keeps a column as text, e.g.
        ``{"Metadata_Batch": str}`` for batches named ``1``, ``2``; other types are applied with
        :meth:`pandas.Series.astype`).

    Returns
    -------
    AnnData with

    - ``X``: the features as a float32 array, in the column order of the table;
    - ``obs``: the metadata columns under their own names; text columns become categoricals, numeric and
      boolean columns keep their type (see Notes for CSV files). ``obs_names`` are the table's index as strings:
      the DataFrame's index, a parquet file's pandas index, a CSV file's unnamed first column (what
      ``DataFrame.to_csv`` writes for the index), else ``"0"``, ``"1"``, ...;
    - ``var``: :func:`~cpembed.io.parse_feature_names` of the feature names.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    KeyError
        When ``dtype`` names a column that is not a metadata column.
    ValueError
        Naming the file and the columns or line at fault: when a column name occurs twice or is empty, when a
        line of a CSV file has more or fewer fields than its header, when the file is not comma-separated, has no
        data rows, is truncated or corrupt, when a feature column is not numeric or holds values beyond float32's
        range (about ±3.4e38, which would become infinite), when no feature column is left, when a metadata
        column cannot take its ``dtype``, or when the file suffix is not supported.

    Notes
    -----
    A CSV file stores text only. Its metadata are read as text, and a column is given another type only when
    every value states it without ambiguity: all ``True`` / ``False`` (boolean, as pandas writes ``bool``
    columns such as ``Metadata_is_negcon``), all integers without leading zeros (int64), or all decimal numbers
    without leading zeros (float64). So ``007``, ``01`` beside ``1``, ``None`` and ``NA`` stay text; only empty
    fields are missing values (a boolean or integer column with missing values becomes pandas' nullable
    ``boolean`` or ``Int64``). Text that looks like numbers, such as batches ``1``, ``2``, reads as numbers
    unless ``dtype`` says otherwise; :func:`write_profiles` warns when that would happen.

    Parquet files are read without building a DataFrame of the features: the metadata columns are read with
    pyarrow, then the feature columns are decoded a row group and a block of columns at a time and copied into a
    preallocated float32 array, so peak memory stays near the size of the result instead of several float64
    copies of the whole matrix (``benchmarks/read_profiles_memory.py`` measures it). CSV files are parsed by
    pyarrow, strictly: a line with an extra field (e.g. a trailing comma) is an error, not a shifted row.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "Cells_AreaShape_Area": [310.0, 295.5]})
    >>> read_profiles(table)
    AnnData object with n_obs × n_vars = 2 × 1
        obs: 'Metadata_Well'
        var: 'compartment', 'measurement', 'channel', 'channel_2'
    """
    dtype = dict(dtype or {})
    if isinstance(source, pd.DataFrame):
        return _profiles_from_dataframe(source, metadata_prefix, dtype)
    path = Path(source)
    suffix = _profile_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"Profile table {path} does not exist.")
    if suffix == ".parquet":
        return _read_parquet(path, metadata_prefix, dtype)
    return _read_csv(path, metadata_prefix, dtype)


def write_profiles(adata: AnnData, path: str | PathLike, metadata_prefix: str = "Metadata_") -> None:
    """Write AnnData as a profile table that :func:`read_profiles` reads back.

    Parameters
    ----------
    adata
        Profiles: ``obs`` columns become the metadata columns (names unchanged), ``X`` the feature columns named
        by ``var_names``.
    path
        Where to write; ``.csv``, ``.csv.gz`` (gzip-compressed) or ``.parquet``. The table is written to a
        temporary file beside it that replaces ``path`` only once complete, so a failure leaves no half-written
        file and any previous file intact.
    metadata_prefix
        Every ``obs`` column must start with it and no feature name may, so that :func:`read_profiles` with the
        same prefix splits the table back into the same metadata and features.

    Raises
    ------
    ValueError
        When an ``obs`` column lacks the prefix or a feature name carries it (both are named), or when the file
        suffix is not supported.

    Warns
    -----
    UserWarning
        Naming the ``obs`` columns that :func:`read_profiles` would not read back with the same values and types,
        e.g. text that looks like numbers (batches ``"1"``, ``"2"``) or empty strings in a CSV file; parquet
        keeps them, and ``read_profiles(..., dtype=)`` restores text columns.

    Notes
    -----
    ``obs_names`` are not written: profiles are identified by their metadata columns, and the table keeps the
    plain layout other Cell Painting tools expect.
    """
    path = Path(path)
    suffix = _profile_suffix(path)
    _check_prefixes(adata, metadata_prefix)
    features = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    table = pd.concat(
        [
            adata.obs.reset_index(drop=True),
            pd.DataFrame(features, columns=adata.var_names.astype(str)),
        ],
        axis=1,
    )
    writer = _table_writer(suffix)
    with replacing(path) as temporary:
        writer(table, temporary)
    changed = _columns_read_back_differently(adata.obs, suffix, metadata_prefix)
    if changed:
        warnings.warn(
            f"{path}: read_profiles would read the obs column(s) {', '.join(map(repr, changed))} back with other "
            "values or types (a CSV file cannot tell text that looks like numbers or True/False from them, nor "
            "an empty string from a missing value). Write .parquet to keep them, or read the file back with "
            f"read_profiles(..., dtype={{{', '.join(f'{name!r}: str' for name in changed)}}}) for text columns.",
            UserWarning,
            stacklevel=2,
        )


def _table_writer(suffix: str) -> Callable[[pd.DataFrame, Path], None]:
    if suffix == ".parquet":
        return lambda table, target: table.to_parquet(target, index=False)
    # RFC 4180 line ends: with them the csv module quotes values holding a carriage return, which it otherwise
    # writes bare, where every reader sees the end of a line.
    return lambda table, target: table.to_csv(target, index=False, lineterminator="\r\n")


def _columns_read_back_differently(obs: pd.DataFrame, suffix: str, metadata_prefix: str) -> list[str]:
    """The ``obs`` columns that writing to a ``suffix`` file and reading it back would change (type or values)."""
    if obs.shape[1] == 0 or len(obs) == 0:
        return []
    # One feature column, named without the prefix, makes the metadata a valid profile table.
    feature = next(name for name in ("Cells_Count", "_Cells_Count") if not name.startswith(metadata_prefix))
    table = obs.reset_index(drop=True).assign(**{feature: 0.0})
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"obs{'.parquet' if suffix == '.parquet' else '.csv'}"
        _table_writer(suffix)(table, target)
        back = read_profiles(target, metadata_prefix).obs
    expected = _tidy_obs(obs.reset_index(drop=True), {})
    return [str(name) for name in obs.columns if not _same_column(expected[name], back[name])]


def _same_column(expected: pd.Series, back: pd.Series) -> bool:
    """Same values (missing where missing) and type; categoricals compare by value, not by category order."""
    if isinstance(expected.dtype, pd.CategoricalDtype) and isinstance(back.dtype, pd.CategoricalDtype):
        return expected.astype(object).reset_index(drop=True).equals(back.astype(object).reset_index(drop=True))
    return expected.dtype == back.dtype and expected.reset_index(drop=True).equals(back.reset_index(drop=True))


def _check_prefixes(adata: AnnData, metadata_prefix: str) -> None:
    unmarked = [str(name) for name in adata.obs.columns if not str(name).startswith(metadata_prefix)]
    if unmarked:
        raise ValueError(
            f"obs columns without the prefix {metadata_prefix!r} would be read back as features: "
            f"{', '.join(map(repr, unmarked))}. Rename them (adata.obs.rename(columns=...)) or drop them."
        )
    marked = [name for name in adata.var_names.astype(str) if name.startswith(metadata_prefix)]
    if marked:
        raise ValueError(f"Feature names with the metadata prefix {metadata_prefix!r}: {', '.join(map(repr, marked))}.")


def _profile_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"Cannot read or write profiles as {path.name!r}: use one of {', '.join(_SUFFIXES)}.")


def _open_text(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", newline="", encoding="utf-8-sig")  # spreadsheets start CSV files with a BOM


def _csv_header(path: Path) -> list[str]:
    with reading_file(path, "a CSV file"), _open_text(path) as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"{path} is empty: a profile table needs a header line and one line per profile.")
    if len(header) == 1:
        for delimiter, name in _DELIMITER_NAMES.items():
            if delimiter in header[0]:
                raise ValueError(
                    f"{path} looks {name}-separated: its header has no comma but {header[0].count(delimiter)} "
                    f"{delimiter!r}. Save it comma-separated, or read it with pandas.read_csv(path, sep={delimiter!r}"
                    ", decimal=...) and pass the DataFrame."
                )
    return header


def _layout(columns: list[str], metadata_prefix: str, where: str, dtype: Mapping[str, Any]) -> tuple[list, list]:
    """Check the column names of a table and split them into metadata and feature columns."""
    duplicated = sorted({str(name) for name in pd.Index(columns)[pd.Index(columns).duplicated()]})
    if duplicated:
        raise ValueError(
            f"{where}: column names occur more than once: {', '.join(map(repr, duplicated))}. Rename them first."
        )
    unnamed = [f"column {i + 1} ({name!r})" for i, name in enumerate(columns) if _UNNAMED_COLUMN.match(name)]
    if unnamed:
        raise ValueError(
            f"{where}: {', '.join(unnamed)} has no name, probably an index written with the table "
            "(DataFrame.to_csv writes one unless index=False). Name or drop it; read_profiles takes a CSV file's "
            "unnamed first column as the row names."
        )
    metadata = [name for name in columns if name.startswith(metadata_prefix)]
    features = [name for name in columns if not name.startswith(metadata_prefix)]
    if not features:
        raise ValueError(
            f"{where} has no feature columns: every column starts with the metadata prefix {metadata_prefix!r}."
        )
    unknown = [name for name in dtype if name not in metadata]
    if unknown:
        raise KeyError(
            f"dtype names {', '.join(map(repr, unknown))}, not metadata columns of {where} "
            f"(metadata columns: {', '.join(map(repr, metadata[:30]))})."
        )
    return metadata, features


def _shown(columns: list[str]) -> str:
    """The first ten column names for a message."""
    return ", ".join(map(repr, columns[:10])) + (" ..." if len(columns) > 10 else "")


def _raise_non_numeric(columns: list[str], metadata_prefix: str, where: str) -> None:
    if columns:
        raise ValueError(
            f"{where}: {len(columns)} feature columns are not numeric: {_shown(columns)}. Give metadata columns the "
            f"prefix {metadata_prefix!r} (or pass `metadata_prefix=`), or drop these columns."
        )


def _check_rows(n_rows: int, where: str) -> None:
    if n_rows == 0:
        raise ValueError(f"{where} has a header but no data rows: there is no profile to read.")


def _fill_float32(matrix: np.ndarray, rows: slice, columns: Iterable[tuple[int, np.ndarray]], names: list[str]):
    """Copy float64 ``(column index, values)`` into ``matrix[rows]``; return the names of out-of-range columns."""
    too_large = []
    for position, values in columns:
        with np.errstate(over="ignore"):
            converted = values.astype(np.float32)
        if np.any(np.isinf(converted) & np.isfinite(values)):
            too_large.append(names[position])
        matrix[rows, position] = converted
    return too_large


def _raise_beyond_float32(columns: list[str], where: str) -> None:
    if columns:
        raise ValueError(
            f"{where}: {len(columns)} feature columns hold values beyond float32's range (about ±3.4e38), which "
            f"would become infinite: {_shown(columns)}. Rescale these features (e.g. take their logarithm) or drop "
            "them."
        )


def _as_text(column: pd.Series) -> pd.Series:
    """A categorical of the values as str, missing values kept missing."""
    return column.map(lambda value: value if pd.isna(value) else str(value)).astype("category")


def _as_dtype(column: pd.Series, dtype: Any, name: str) -> pd.Series:
    if any(dtype is text or (isinstance(dtype, str) and dtype == text) for text in _TEXT_DTYPES):
        return _as_text(column)
    try:
        if pd.api.types.is_bool_dtype(pd.api.types.pandas_dtype(dtype)):
            column = _flags(column, allow_missing=dtype not in (bool, "bool", np.bool_))
        return column.astype(dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Metadata column {name!r} cannot be read as {dtype!r}: {error}") from error


def _flags(column: pd.Series, *, allow_missing: bool) -> pd.Series:
    """``True`` / ``False`` (booleans or text) as booleans; ``astype(bool)`` would turn any text, even "False", True."""
    flags = column.astype(object).map({True: True, False: False, "True": True, "False": False})
    wrong = column[flags.isna() & column.notna()].astype(str).unique()
    if len(wrong):
        raise ValueError(f"values other than True / False: {', '.join(map(repr, wrong[:5]))}")
    if not allow_missing and flags.isna().any():
        raise ValueError("missing values, which bool cannot hold (pass 'boolean')")
    return flags


def _text_or_flags(column: pd.Series) -> pd.Series:
    """Text columns become categoricals; object columns of booleans with missing values become ``boolean``."""
    present = column.dropna()
    if len(present) and all(isinstance(value, bool | np.bool_) for value in present):
        return column.astype(bool if len(present) == len(column) else "boolean")
    return _as_text(column)


def _tidy_obs(metadata: pd.DataFrame, dtype: Mapping[str, Any]) -> pd.DataFrame:
    """Apply ``dtype``; turn other text columns into categoricals (missing values kept missing); leave the rest."""
    obs = metadata.copy()
    for name in obs.columns:
        column = obs[name]
        if name in dtype:
            obs[name] = _as_dtype(column, dtype[name], name)
        elif pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column):
            obs[name] = _text_or_flags(column)
    obs.index = obs.index.astype(str)
    return obs


def _assemble(matrix: np.ndarray, metadata: pd.DataFrame, features: list[str], dtype: Mapping[str, Any]) -> AnnData:
    return AnnData(X=matrix, obs=_tidy_obs(metadata, dtype), var=parse_feature_names(features))


def _profiles_from_dataframe(table: pd.DataFrame, metadata_prefix: str, dtype: Mapping[str, Any]) -> AnnData:
    columns = [str(name) for name in table.columns]
    where = "The DataFrame"
    table = table.set_axis(columns, axis=1)
    metadata, features = _layout(columns, metadata_prefix, where, dtype)
    _check_rows(len(table), where)
    _raise_non_numeric(
        [name for name in features if not _is_numeric_feature(table[name].dtype)],
        metadata_prefix,
        where,
    )
    matrix = np.empty((len(table), len(features)), dtype=np.float32)
    values = table[features].to_numpy(dtype=np.float64, na_value=np.nan)
    too_large = _fill_float32(matrix, slice(None), ((i, values[:, i]) for i in range(len(features))), features)
    _raise_beyond_float32(too_large, where)
    return _assemble(matrix, table[metadata], features, dtype)


def _is_numeric_feature(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _is_numeric_arrow(data_type: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_null(data_type)


def _float64(column: pa.ChunkedArray) -> np.ndarray:
    """An Arrow column of numbers (or only nulls) as float64, nulls as NaN."""
    import pyarrow as pa

    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _read_csv(path: Path, metadata_prefix: str, dtype: Mapping[str, Any]) -> AnnData:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    header = _csv_header(path)
    # DataFrame.to_csv writes the index as a first column with an empty name: take it as the row names.
    has_index = len(header) > 1 and header[0] == ""
    columns = header[1:] if has_index else header
    where = str(path)
    metadata, features = _layout(columns, metadata_prefix, where, dtype)
    keys = [f"column {i}" for i in range(len(header))]
    text = [keys[0]] * has_index + [keys[i + has_index] for i, name in enumerate(columns) if name in metadata]
    rejected = []

    def reject(row) -> str:
        rejected.append(row)
        return "error"

    try:
        with reading_file(path, "a CSV file"):
            table = pa_csv.read_csv(
                path,
                read_options=pa_csv.ReadOptions(column_names=keys, skip_rows=1),
                parse_options=pa_csv.ParseOptions(invalid_row_handler=reject, newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    column_types=dict.fromkeys(text, pa.string()),
                    null_values=[*pa_csv.ConvertOptions().null_values, *_MORE_MISSING_NUMBERS],
                    strings_can_be_null=False,
                ),
            )
    except ValueError:
        if rejected:
            _raise_ragged(path, len(header), rejected[0])
        raise
    _check_rows(table.num_rows, where)
    by_name = dict(zip(columns, table.columns[has_index:], strict=True))
    _raise_non_numeric([name for name in features if not _is_numeric_arrow(by_name[name].type)], metadata_prefix, where)
    matrix = np.empty((table.num_rows, len(features)), dtype=np.float32)
    too_large = _fill_float32(
        matrix, slice(None), ((i, _float64(by_name[name])) for i, name in enumerate(features)), features
    )
    _raise_beyond_float32(too_large, where)
    obs = pd.DataFrame({name: _typed_text(by_name[name], keep_text=name in dtype) for name in metadata})
    if has_index:
        obs.index = table.column(0).to_numpy(zero_copy_only=False)
    return _assemble(matrix, obs, features, dtype)


def _raise_ragged(path: Path, n_fields: int, row) -> None:
    """Raise the error for a CSV line with ``row.actual_columns`` fields where the header has ``n_fields``."""
    line = row.number
    if line is None:
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            line = next((reader.line_num for fields in reader if fields and len(fields) != n_fields), None)
    at = f"line {line}" if line is not None else "a line"
    raise ValueError(
        f"{path}, {at}: {row.actual_columns} fields where the header has {n_fields} ({row.text[:200]!r}). A trailing "
        "comma or an unquoted comma inside a value shifts every later column: fix the line, quoting values that "
        "contain commas."
    )


def _typed_text(column: pa.ChunkedArray, *, keep_text: bool) -> pd.Series:
    """A CSV metadata column: empty fields missing, and the type its text states without ambiguity (see Notes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = pc.not_equal(column, "")
    text = pc.if_else(present, column, pa.scalar(None, pa.string()))
    values = text.drop_null()
    if keep_text or len(values) == 0:
        return text.to_pandas()
    nullable = text.null_count > 0
    if pc.all(pc.is_in(values, value_set=pa.array(_FLAG_TEXT))).as_py():
        flags = pc.equal(text, "True").to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
        return flags if nullable else flags.astype(bool)
    for pattern, number_type, pandas_type in (
        (_INTEGER_TEXT, pa.int64(), pd.Int64Dtype()),
        (_NUMBER_TEXT, pa.float64(), None),
    ):
        if pc.all(pc.match_substring_regex(values, pattern)).as_py():
            try:
                numbers = text.cast(number_type)
            except pa.ArrowInvalid:  # beyond int64: keep the digits as text
                break
            if number_type == pa.float64() and not np.isfinite(numbers.drop_null().to_numpy()).all():
                break  # beyond float64
            mapper = {number_type: pandas_type}.get if pandas_type is not None and nullable else None
            return numbers.to_pandas(types_mapper=mapper)
    return text.to_pandas()


def _read_parquet(path: Path, metadata_prefix: str, dtype: Mapping[str, Any]) -> AnnData:
    import pyarrow.parquet as pq

    where = str(path)
    with reading_file(path, "a parquet file"):
        parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    # Columns pandas adds for a non-default index are the row names, neither metadata nor features.
    index = [name for name in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(name, str)]
    columns = [name for name in schema.names if name not in index]
    metadata, features = _layout(columns, metadata_prefix, where, dtype)
    _check_rows(parquet.metadata.num_rows, where)
    _raise_non_numeric(
        [name for name in features if not _is_numeric_arrow(schema.field(name).type)], metadata_prefix, where
    )
    with reading_file(path, "a parquet file"):
        matrix, too_large = _read_parquet_features(parquet, features)
        obs = parquet.read(columns=metadata).to_pandas() if metadata else pd.DataFrame(index=range(len(matrix)))
        levels = [column.to_pandas().astype(str) for column in parquet.read(columns=index).columns]
    _raise_beyond_float32(too_large, where)
    obs = obs.reset_index(drop=True)
    if levels:
        obs.index = pd.concat(levels, axis=1).agg("_".join, axis=1).to_numpy()
    return _assemble(matrix, obs, features, dtype)


def _read_parquet_features(parquet: pq.ParquetFile, features: list[str]) -> tuple[np.ndarray, list[str]]:
    """Copy the feature columns into a preallocated float32 array, one row group and block of columns at a time.

    A block holds at most ``_VALUES_PER_READ`` values, so the decoded Arrow data alive at once stay small (8 MiB of
    float64) whatever the row-group size. Also returns the names of the columns with values beyond float32's range.
    """
    matrix = np.empty((parquet.metadata.num_rows, len(features)), dtype=np.float32)
    too_large: set[str] = set()
    start = 0
    groups = range(parquet.num_row_groups)
    for group in tqdm(groups, desc="reading row groups", disable=len(groups) < _PROGRESS_FROM_ROW_GROUPS):
        n_rows = parquet.metadata.row_group(group).num_rows
        width = max(1, _VALUES_PER_READ // max(n_rows, 1))
        for first in range(0, len(features), width):
            block = parquet.read_row_group(group, columns=features[first : first + width])
            columns = ((first + offset, _float64(column)) for offset, column in enumerate(block.columns))
            too_large.update(_fill_float32(matrix, slice(start, start + n_rows), columns, features))
        start += n_rows
    return matrix, [name for name in features if name in too_large]
