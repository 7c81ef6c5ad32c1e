"""Read and write per-well profiles: tables with ``Metadata_*`` columns and one column per CellProfiler feature.

This is the layout pycytominer, cytominer-eval and the JUMP Cell Painting data use: one row per well (or per
cell), metadata columns marked by a prefix, every other column a numeric feature. In AnnData the features become
``X`` (float32), the metadata ``obs`` and the parsed feature names ``var``.
"""

from __future__ import annotations

import csv
import gzip
import re
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from ._feature_names import parse_feature_names

if TYPE_CHECKING:
    import pyarrow.parquet as pq

_SUFFIXES = (".csv", ".csv.gz", ".parquet")
# Columns pandas adds to a parquet file for a non-default index; they are neither metadata nor features.
_PANDAS_INDEX_COLUMN = re.compile(r"^__index_level_\d+__$")
_VALUES_PER_READ = 2**20
# Show a progress bar from this many row groups on (pandas writes 1 Mi rows per group by default).
_PROGRESS_FROM_ROW_GROUPS = 8


def read_profiles(source: str | PathLike | pd.DataFrame, metadata_prefix: str = "Metadata_") -> AnnData:
    """Read a profile table into AnnData.

    Parameters
    ----------
    source
        A ``.csv``, ``.csv.gz`` or ``.parquet`` file, or a DataFrame already in memory.
    metadata_prefix
        Columns whose name starts with this prefix are metadata; all others are features. ``"Metadata_"`` is the
        CellProfiler / pycytominer convention.

    Returns
    -------
    AnnData with

    - ``X``: the features as a float32 array, in the column order of the table;
    - ``obs``: the metadata columns under their own names; text columns become categoricals, numeric and
      boolean columns keep their type. ``obs_names`` are the DataFrame's index as strings (``"0"``, ``"1"``, ...
      for files);
    - ``var``: :func:`~cpembed.io.parse_feature_names` of the feature names.

    Raises
    ------
    ValueError
        When a column name occurs twice, when a feature column is not numeric (both name the columns), when no
        feature column is left, or when the file suffix is not supported.

    Notes
    -----
    Parquet files are read without building a DataFrame of the features: the metadata columns are read with
    pyarrow, then the feature columns are decoded a row group and a block of columns at a time and copied into a
    preallocated float32 array, so peak memory stays near the size of the result instead of several float64
    copies of the whole matrix (``benchmarks/read_profiles_memory.py`` measures it).
    CSV files are parsed by pandas.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "Cells_AreaShape_Area": [310.0, 295.5]})
    >>> read_profiles(table)
    AnnData object with n_obs × n_vars = 2 × 1
        obs: 'Metadata_Well'
        var: 'compartment', 'measurement', 'channel', 'channel_2'
    """
    if isinstance(source, pd.DataFrame):
        return _profiles_from_dataframe(source, metadata_prefix)
    path = Path(source)
    suffix = _profile_suffix(path)
    if suffix == ".parquet":
        return _read_parquet(path, metadata_prefix)
    _check_unique_columns(_csv_header(path))
    return _profiles_from_dataframe(pd.read_csv(path), metadata_prefix)


def write_profiles(adata: AnnData, path: str | PathLike, metadata_prefix: str = "Metadata_") -> None:
    """Write AnnData as a profile table that :func:`read_profiles` reads back.

    Parameters
    ----------
    adata
        Profiles: ``obs`` columns become the metadata columns (names unchanged), ``X`` the feature columns named
        by ``var_names``.
    path
        Where to write; ``.csv``, ``.csv.gz`` (gzip-compressed) or ``.parquet``.
    metadata_prefix
        Every ``obs`` column must start with it and no feature name may, so that :func:`read_profiles` with the
        same prefix splits the table back into the same metadata and features.

    Raises
    ------
    ValueError
        When an ``obs`` column lacks the prefix or a feature name carries it (both are named), or when the file
        suffix is not supported.

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
    if suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)


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


def _csv_header(path: Path) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        return next(csv.reader(handle), [])


def _check_unique_columns(columns: list[str]) -> None:
    duplicated = sorted({str(name) for name in pd.Index(columns)[pd.Index(columns).duplicated()]})
    if duplicated:
        raise ValueError(f"Column names occur more than once: {', '.join(map(repr, duplicated))}. Rename them first.")


def _split_columns(columns: list[str], metadata_prefix: str) -> tuple[list[str], list[str]]:
    metadata = [name for name in columns if name.startswith(metadata_prefix)]
    features = [name for name in columns if not name.startswith(metadata_prefix)]
    if not features:
        raise ValueError(f"No feature columns: every column starts with the metadata prefix {metadata_prefix!r}.")
    return metadata, features


def _raise_non_numeric(columns: list[str], metadata_prefix: str) -> None:
    if columns:
        shown = ", ".join(map(repr, columns[:10])) + (" ..." if len(columns) > 10 else "")
        raise ValueError(
            f"{len(columns)} feature columns are not numeric: {shown}. Give metadata columns the prefix "
            f"{metadata_prefix!r} (or pass `metadata_prefix=`), or drop these columns."
        )


def _tidy_obs(metadata: pd.DataFrame) -> pd.DataFrame:
    """Turn text columns into categoricals (values as str, missing values kept missing); leave the rest typed."""
    obs = metadata.copy()
    for name in obs.columns:
        column = obs[name]
        if pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column):
            obs[name] = column.map(lambda value: value if pd.isna(value) else str(value)).astype("category")
    obs.index = obs.index.astype(str)
    return obs


def _assemble(matrix: np.ndarray, metadata: pd.DataFrame, features: list[str]) -> AnnData:
    return AnnData(X=matrix, obs=_tidy_obs(metadata), var=parse_feature_names(features))


def _profiles_from_dataframe(table: pd.DataFrame, metadata_prefix: str) -> AnnData:
    columns = [str(name) for name in table.columns]
    _check_unique_columns(columns)
    table = table.set_axis(columns, axis=1)
    metadata, features = _split_columns(columns, metadata_prefix)
    _raise_non_numeric(
        [name for name in features if not _is_numeric_feature(table[name].dtype)],
        metadata_prefix,
    )
    matrix = table[features].to_numpy(dtype=np.float32, na_value=np.nan)
    return _assemble(matrix, table[metadata], features)


def _is_numeric_feature(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _read_parquet(path: Path, metadata_prefix: str) -> AnnData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    columns = [name for name in schema.names if not _PANDAS_INDEX_COLUMN.match(name)]
    _check_unique_columns(columns)
    metadata, features = _split_columns(columns, metadata_prefix)
    _raise_non_numeric(
        [
            name
            for name in features
            if not (pa.types.is_integer(schema.field(name).type) or pa.types.is_floating(schema.field(name).type))
        ],
        metadata_prefix,
    )
    matrix = _read_parquet_features(parquet, features)
    obs = parquet.read(columns=metadata).to_pandas() if metadata else pd.DataFrame(index=range(matrix.shape[0]))
    return _assemble(matrix, obs.reset_index(drop=True), features)


def _read_parquet_features(parquet: pq.ParquetFile, features: list[str]) -> np.ndarray:
    """Copy the feature columns into a preallocated float32 array, one row group and block of columns at a time.

    A block holds at most ``_VALUES_PER_READ`` values, so the decoded Arrow data alive at once stay small (8 MiB of
    float64) whatever the row-group size.
    """
    matrix = np.empty((parquet.metadata.num_rows, len(features)), dtype=np.float32)
    start = 0
    groups = range(parquet.num_row_groups)
    for group in tqdm(groups, desc="reading row groups", disable=len(groups) < _PROGRESS_FROM_ROW_GROUPS):
        n_rows = parquet.metadata.row_group(group).num_rows
        width = max(1, _VALUES_PER_READ // max(n_rows, 1))
        for first in range(0, len(features), width):
            block = parquet.read_row_group(group, columns=features[first : first + width])
            for offset, column in enumerate(block.columns):
                matrix[start : start + n_rows, first + offset] = column.to_numpy()
        start += n_rows
    return matrix
