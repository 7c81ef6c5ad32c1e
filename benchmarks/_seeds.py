"""Results of a quality script repeated over seeds: mean and spread per method, and the seeds meeting each target.

Shared by the quality scripts (``--seeds``). Each seed's result is a table with one row per method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd


def summarise_seeds(
    tables: Mapping[int, pd.DataFrame],
    targets: Mapping[str, Callable[[pd.DataFrame], bool | None]],
    title: str = "",
) -> None:
    """Print the mean and standard deviation over seeds (with several) and on how many seeds each target holds.

    Parameters
    ----------
    tables
        One table per seed, methods as rows and scores as columns.
    targets
        Name of each target and the check of one seed's table: ``None`` where a score it compares is undefined (NaN),
        and the seed is then counted apart.
    title
        Prefix of every printed line, e.g. the data set.
    """
    prefix = f"{title} " if title else ""
    if len(tables) > 1:
        stacked = pd.concat(tables, names=["seed", "method"])
        summary = stacked.groupby(level="method", sort=False).agg(["mean", "std"])
        print(f"\n{prefix}mean and standard deviation over {len(tables)} seeds")
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    for name, check in targets.items():
        results = [check(table) for table in tables.values()]
        defined = [bool(result) for result in results if result is not None]
        undefined = len(results) - len(defined)
        left_out = f" (undefined on {undefined})" if undefined else ""
        print(f"{prefix}target {name}: met on {sum(defined)} of {len(defined)} seeds{left_out}")


def at_least(score: float, reference: float, strictly: bool = False) -> bool | None:
    """Whether ``score`` reaches ``reference`` (exceeds it with ``strictly``); ``None`` when either is NaN."""
    if pd.isna(score) or pd.isna(reference):
        return None
    return score > reference if strictly else score >= reference
