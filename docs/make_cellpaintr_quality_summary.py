"""Summarise the per-seed tables of ``benchmarks/cellpaintr_quality.py`` shown in docs/benchmarks.md.

Reads ``docs/_static/benchmarks/cellpaintr_quality/{data}_{size}_leakfree_seed{n}.csv`` (written by the benchmark's
``--out``) and writes ``summary_{size}.csv``: per data set and method, the mean and standard deviation over seeds of
Batch, Bio and Overall (and BBBC021's NSC and NSCB), rounded to three decimals. Usage::

    .venv/bin/python docs/make_cellpaintr_quality_summary.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FOLDER = Path(__file__).parent / "_static" / "benchmarks" / "cellpaintr_quality"
DATA_SETS = ("bbbc021", "profiles", "populations")
SCORES = ["batch_score", "bio_score", "overall_score", "NSC", "NSCB"]


def summary(size: str) -> pd.DataFrame:
    rows = []
    for data in DATA_SETS:
        files = sorted(FOLDER.glob(f"{data}_{size}_leakfree_seed*.csv"))
        tables = pd.concat([pd.read_csv(path, index_col=0) for path in files], keys=range(len(files)))
        scores = tables[[column for column in SCORES if column in tables]]
        stats = scores.groupby(level=1, sort=False).agg(["mean", "std"])
        stats.columns = [f"{score} {stat}" for score, stat in stats.columns]
        stats.insert(0, "seeds", len(files))
        rows.append(pd.concat({data: stats}, names=["data", "method"]))
    return pd.concat(rows).round(3)


def main() -> None:
    for size in ("cpu", "paper"):
        summary(size).to_csv(FOLDER / f"summary_{size}.csv")


if __name__ == "__main__":
    main()
