"""Small validators shared by every public function, so bad input fails early with a message naming the fix."""

from __future__ import annotations

import csv
import os
import warnings
import zlib
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from os import PathLike
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData


def check_obs_keys(adata: AnnData, *keys: str | None) -> None:
    """Raise a KeyError naming each requested ``.obs`` column that does not exist.

    ``None`` entries are skipped, so optional keys can be passed as they are.
    """
    missing = [key for key in keys if key is not None and key not in adata.obs.columns]
    if missing:
        available = ", ".join(map(repr, adata.obs.columns[:30]))
        raise KeyError(f"{', '.join(map(repr, missing))} not found in adata.obs. Available columns: {available}.")


def check_obs_complete(adata: AnnData, *keys: str | None, advice: str = "") -> None:
    """Raise a ValueError naming the first ``.obs`` column among ``keys`` with missing values, and how many.

    ``None`` entries are skipped, as in :func:`check_obs_keys`; ``advice`` is appended to the message.
    """
    for key in keys:
        n_missing = 0 if key is None else int(adata.obs[key].isna().sum())
        if n_missing:
            raise ValueError(f"adata.obs[{key!r}] has {n_missing} missing values.{advice}")


def check_obsm_keys(adata: AnnData, *keys: str) -> None:
    """Raise a KeyError naming each requested ``.obsm`` key that does not exist ("X" means ``adata.X``)."""
    missing = [key for key in keys if key != "X" and key not in adata.obsm]
    if missing:
        raise KeyError(
            f"{', '.join(map(repr, missing))} not found in adata.obsm (available: {list(adata.obsm)}). "
            "Compute the embedding first, e.g. with the matching cpembed.tl function."
        )


def check_layer(adata: AnnData, layer: str | None) -> None:
    """Raise a KeyError naming ``layer`` and the available layers when it does not exist (``None`` is skipped)."""
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}).")


def control_flags(adata: AnnData, control_key: str, advice: str = "") -> np.ndarray:
    """``adata.obs[control_key]`` as a boolean array (``True`` = negative control, as ``Metadata_is_negcon``).

    Raises a KeyError when the column does not exist and a TypeError when it is not boolean; ``advice`` is appended
    to the TypeError's message.
    """
    check_obs_keys(adata, control_key)
    column = adata.obs[control_key]
    if column.dtype != bool:
        raise TypeError(
            f"adata.obs[{control_key!r}] must be boolean (True for negative controls), got {column.dtype}.{advice}"
        )
    return column.to_numpy(dtype=bool)


def get_matrix(adata: AnnData, *, layer: str | None = None, obsm_key: str | None = None) -> np.ndarray:
    """Return the dense matrix a function works on: ``adata.X``, a layer, or an ``.obsm`` entry.

    This is the one place that decides between X, layers and obsm.
    """
    if layer is not None and obsm_key is not None:
        raise ValueError("Pass either `layer` or `obsm_key`, not both.")
    if layer is not None:
        check_layer(adata, layer)
        matrix = adata.layers[layer]
    elif obsm_key is not None and obsm_key != "X":
        check_obsm_keys(adata, obsm_key)
        matrix = adata.obsm[obsm_key]
    else:
        matrix = adata.X
    if matrix is None:
        raise ValueError("adata.X is empty; pass `layer=` or `obsm_key=` to choose the data to use.")
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    matrix = np.asarray(matrix)
    if not np.issubdtype(matrix.dtype, np.number):
        raise TypeError(f"Expected a numeric matrix, got dtype {matrix.dtype}.")
    return matrix


def check_finite(matrix: np.ndarray, what: str = "adata.X") -> None:
    """Raise a ValueError when ``matrix`` holds NaN or infinite values, saying how many and where to clean them."""
    finite = np.isfinite(matrix)
    if not finite.all():
        n_bad = int(finite.size - finite.sum())
        bad_columns = np.flatnonzero(~finite.all(axis=0)) if matrix.ndim == 2 else np.array([], dtype=int)
        raise ValueError(
            f"{what} contains {n_bad} NaN or infinite values (in {bad_columns.size} columns). "
            "Clean them first with cpembed.pp.drop_nonfinite."
        )


def check_groups_present(labels: Iterable, groups: Iterable, what: str) -> None:
    """Raise a ValueError when some ``groups`` (e.g. plates) have no row flagged in ``labels`` (e.g. controls)."""
    present = set(labels)
    lacking = [group for group in groups if group not in present]
    if lacking:
        shown = ", ".join(map(str, lacking[:10])) + (" ..." if len(lacking) > 10 else "")
        raise ValueError(f"{len(lacking)} {what}: {shown}.")


def check_indices(indices: Iterable[int] | None, n_obs: int, what: str = "adata") -> np.ndarray:
    """Return ``indices`` as an int64 array of row positions, all of ``range(n_obs)`` when ``None``.

    Raises a TypeError for non-integer indices and an IndexError naming the offending values when some lie outside
    ``[0, n_obs)`` (negative positions are refused rather than counted from the end).
    """
    if indices is None:
        return np.arange(n_obs, dtype=np.int64)
    rows = np.asarray(indices)
    if rows.size == 0:
        return np.empty(0, dtype=np.int64)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(f"indices must be a 1-D sequence of integer row positions, got dtype {rows.dtype}.")
    outside = rows[(rows < 0) | (rows >= n_obs)]
    if outside.size:
        raise IndexError(
            f"indices must lie in [0, {n_obs}), the rows of {what}; got {outside.size} outside, e.g. "
            f"{outside[:5].tolist()}."
        )
    return rows.astype(np.int64, copy=False)


def matrix_name(*, layer: str | None = None, obsm_key: str | None = None) -> str:
    """How messages name the matrix :func:`get_matrix` returns: ``adata.X``, ``adata.layers[...]`` or ``.obsm[...]``."""
    if layer is not None:
        return f"adata.layers[{layer!r}]"
    if obsm_key is not None and obsm_key != "X":
        return f"adata.obsm[{obsm_key!r}]"
    return "adata.X"


def get_finite_matrix(adata: AnnData, *, layer: str | None = None, obsm_key: str | None = None) -> np.ndarray:
    """:func:`get_matrix` followed by :func:`check_finite`: the one input rule of every function needing finite values.

    Raises a ValueError naming the matrix when it holds NaN or infinite values.
    """
    matrix = get_matrix(adata, layer=layer, obsm_key=obsm_key)
    check_finite(matrix, matrix_name(layer=layer, obsm_key=obsm_key))
    return matrix


def check_result_finite(values: np.ndarray, what: str) -> None:
    """Raise a ValueError when a result computed from finite input holds NaN or infinite values.

    Such values come from an overflow: results beyond float32's range (about ±3.4e38) once stored as float32, or
    input values so large (beyond about 1e150) that their squares overflow. ``what`` names the result.
    """
    n_bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        raise ValueError(
            f"{what} would hold {n_bad} NaN or infinite values although its input is finite: the computation "
            "overflowed (float32 holds values up to about 3.4e38). Rescale the input first, e.g. with "
            "cpembed.pp.normalize_to_controls, or drop the features with extreme values."
        )


def check_in_memory(adata: AnnData, *, copy: bool) -> None:
    """Raise a ValueError when a function would change a backed AnnData in place (``copy=False``).

    Its ``X`` stays in the ``.h5ad`` file, which such changes do not reach; with ``copy=True`` the result is an
    in-memory copy and backed input is fine.
    """
    if adata.isbacked and not copy:
        raise ValueError(
            f"adata is backed by {str(adata.filename)!r} and cannot be changed in place. Load it with "
            "`adata = adata.to_memory()` first, or pass `copy=True` to get an in-memory result."
        )


def check_filter_loss(
    failing: np.ndarray,
    names: Sequence,
    *,
    group: str,
    items: str,
    step: str,
    advice: str,
    notes: Sequence[str] | None = None,
) -> None:
    """Refuse a filter that would keep no item, or of which a single group alone would drop most items.

    A filter drops every item (feature or well) that some group (a well, a plate, a rule) fails. It must not run
    when it would keep nothing, nor when one group alone drops more items than the filter keeps: that group, not
    the data, decides the result (a plate with a single control well, a well of NaN). A filter that would drop
    more than half of the items through many groups runs, with a warning naming the groups dropping the most.

    Parameters
    ----------
    failing
        Groups × items, ``True`` where the group makes the filter drop the item.
    names
        Name of each group, quoted in the message.
    group, items
        What a group and an item are called, e.g. ``"plate"`` and ``"features"``.
    step
        The filter's name.
    advice
        What the user can do instead, ending the message.
    notes
        Text after each group's name, e.g. ``" (1 control well)"``.

    Raises
    ------
    ValueError
        Naming the groups to blame (at most 5) and how many items each drops.

    Warns
    -----
    UserWarning
        When more than half of the items would be dropped, none by one group alone.
    """
    failing = np.asarray(failing, dtype=bool)
    n_items = failing.shape[1]
    n_kept = int(n_items - np.count_nonzero(failing.any(axis=0)))
    alone = np.count_nonzero(failing & (failing.sum(axis=0) == 1), axis=1)
    to_blame = np.flatnonzero(alone > n_kept)
    if n_items == 0 or (n_kept and not to_blame.size and 2 * n_kept >= n_items):
        return
    lone = to_blame.size > 0  # groups that alone drop more items than are kept, else all groups dropping any
    scores = alone if lone else np.count_nonzero(failing, axis=1)
    to_blame = to_blame if lone else np.flatnonzero(scores)
    to_blame = to_blame[np.argsort(-scores[to_blame], kind="stable")]
    named = {i: f"{str(names[i])!r}{'' if notes is None else notes[i]}" for i in to_blame[:5]}
    if lone:
        shown = "; ".join(f"{group} {name} alone drops {scores[i]} of them" for i, name in named.items())
    else:
        shown = f"the {group}s dropping the most: " + ", ".join(f"{name} ({scores[i]})" for i, name in named.items())
    more = f" (and {to_blame.size - 5} more {group}s)" if to_blame.size > 5 else ""
    message = f"{step} would keep {n_kept} of {n_items} {items}: {shown}{more}. {advice}"
    if n_kept and not lone:
        warnings.warn(message, UserWarning, stacklevel=3)
        return
    raise ValueError(message)


@contextmanager
def reading_file(path: str | PathLike, what: str) -> Iterator[None]:
    """Turn the low-level errors of reading ``path`` into a ValueError naming the file, what it should be and the fix.

    ``what`` says what the file should be, with its article: ``"a CSV file"``, ``"an HDF5 image store"``.

    Libraries report a truncated, corrupt or mistyped file as a bare ``EOFError``, ``OSError`` or parser error
    without its path; inside this block they become one message that names the file and keeps the original error as
    its cause. A missing file stays a FileNotFoundError.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, csv.Error) as error:
        raise ValueError(
            f"Cannot read {os.fspath(path)} as {what} ({type(error).__name__}: {error}). It may be truncated, "
            "corrupt or of another format: write or download it again."
        ) from error


def check_float32_range(values: np.ndarray, what: str) -> None:
    """Raise a ValueError when ``values`` (float64) hold finite numbers that float32 would store as infinite.

    Call it before casting to float32, where such values would otherwise turn into infinities (and then, for models
    that read non-finite values as missing, into zeros) without a word. ``what`` names the values in the message.
    """
    if values.dtype.kind != "f" or values.dtype.itemsize <= 4:
        return
    limit = float(np.finfo(np.float32).max)
    n_large = int(np.count_nonzero(np.isfinite(values) & (np.abs(values) > limit)))
    if n_large:
        raise ValueError(
            f"{what} hold {n_large} finite values beyond float32's range (about ±3.4e38), which float32 cannot "
            "store. Rescale them first, e.g. with cpembed.pp.normalize_to_controls, or drop the features holding them."
        )
