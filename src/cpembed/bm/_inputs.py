"""Validation of the array inputs shared by the metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpembed._validation import check_finite


def power_of_two_scale(X: np.ndarray) -> float:
    """The power of two that brings the largest absolute value of ``X`` into [0.5, 1) (1 for an all-zero ``X``).

    Dividing by it is exact, so distances and similarities computed from ``X / scale`` are those of ``X`` scaled
    without rounding, while values beyond float32's range, or so large or small that their squares leave float64's,
    are brought back within reach.
    """
    largest = float(np.abs(X).max(initial=0.0))
    return float(2.0 ** np.frexp(largest)[1]) if largest > 0 else 1.0


def per_sample(values: np.ndarray, n_samples: int, name: str) -> np.ndarray:
    """``values`` as an array, after checking that it holds one entry per sample (a ValueError naming it if not)."""
    values = np.asarray(values)
    if values.shape != (n_samples,):
        raise ValueError(f"{name} has shape {values.shape}, expected ({n_samples},).")
    return values


def validated_arrays(
    X: np.ndarray, labels: dict[str, np.ndarray | None], flags: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """Check a wells × dimensions matrix and its per-well labels and boolean flags; return them as arrays.

    Raises a ValueError or TypeError naming the argument when X is not a finite numeric 2-D array, when a label
    or flag does not have one entry per row of X, when a label has missing values or a flag is not boolean.
    ``None`` labels (optional arguments) are passed through.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D wells × dimensions array, got shape {X.shape}.")
    if not np.issubdtype(X.dtype, np.number):
        raise TypeError(f"X must be numeric, got dtype {X.dtype}.")
    check_finite(X, "X")
    arrays: dict[str, np.ndarray | None] = {}
    for name, values in {**labels, **(flags or {})}.items():
        if values is None:
            arrays[name] = None
            continue
        values = np.asarray(values)
        if values.shape != (X.shape[0],):
            raise ValueError(f"{name} has shape {values.shape}, expected ({X.shape[0]},): one entry per row of X.")
        if name in (flags or {}) and values.dtype != bool:
            raise TypeError(f"{name} must be a boolean array, got dtype {values.dtype}.")
        missing = pd.isna(values)
        if missing.any():
            raise ValueError(f"{name} has {int(missing.sum())} missing values.")
        arrays[name] = values
    return X, arrays
