"""Write the benchmark results shown in docs/benchmarks.md (files under docs/_static/benchmarks/).

Runs the cpembed report (``cpembed run``, the same as ``make run``) on the bundled BBBC021 profiles: the JUMP
preprocessing recipe, then the preprocessed features, PCA, ComBat, Harmony, sphering and CellPainTR, all scored with
``cpe.bm.benchmark``. From the report folder it keeps what the documentation shows: the results table (rounded to
three decimals), a summary of its aggregate columns, the figures and the report's own summary (with its settings
and timings). The report takes a few minutes on a laptop CPU. Usage:

    .venv/bin/python docs/make_benchmark_tables.py            # then: make docs
    .venv/bin/python docs/make_benchmark_tables.py --quick    # tiny CellPainTR and mAP null: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from cpembed._report import HISTORY_PNG, RESULTS_CSV, SUMMARY_MD, TABLE_PNG, UMAP_PNG
from cpembed.cli import main as cpembed_cli

OUT = Path(__file__).parent / "_static" / "benchmarks"
#: Columns of the summary table: the aggregate scores, then the two mAPs (the rest are in the full table).
SUMMARY = ["batch_score", "bio_score", "overall_score", "total_score", "map_control", "map_no_rep"]
FIGURES = (TABLE_PNG, UMAP_PNG, HISTORY_PNG)
#: Widest figure kept, in pixels: the report saves at 150 dpi, more than a web page needs.
MAX_WIDTH = 1200


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the files the documentation shows")
    parser.add_argument("--quick", action="store_true", help="passed to `cpembed run`: a fast check, not results")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def run_report(folder: Path, args: argparse.Namespace) -> list[str]:
    """Run ``cpembed run`` on the bundled BBBC021 into ``folder``; return its command line."""
    argv = ["run", "--out", str(folder), "--seed", str(args.seed), "--no-progress", "--time-budget", "inf"]
    argv += ["--quick"] if args.quick else []
    status = cpembed_cli(argv)
    if status != 0:
        raise SystemExit(f"`cpembed {' '.join(argv)}` failed with status {status}.")
    return ["cpembed", *argv]


def shrink_png(source: Path, target: Path, max_width: int = MAX_WIDTH) -> None:
    """Copy a PNG, scaled down to ``max_width`` pixels when wider, with a 256-colour palette to keep it small."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        image.quantize(colors=256).save(target, optimize=True)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder)
        command = run_report(report, args)
        results = pd.read_csv(report / RESULTS_CSV, index_col=0)
        results.round(3).to_csv(args.out / "bbbc021_results.csv")
        results[SUMMARY].round(3).to_csv(args.out / "bbbc021_summary.csv")
        for figure in FIGURES:
            if (report / figure).exists():
                shrink_png(report / figure, args.out / f"bbbc021_{figure}")
        shutil.copyfile(report / SUMMARY_MD, args.out / "bbbc021_report.md")
    run = {
        "command": " ".join(command).replace(folder, "<report folder>"),
        "versions": {package: version(package) for package in ("cpembed", "scanpy", "harmonypy", "torch")},
        "python": platform.python_version(),
    }
    (args.out / "bbbc021_run.json").write_text(json.dumps(run, indent=2) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(results[SUMMARY].round(3))
    print(f"Wrote the benchmark files to {args.out}")


if __name__ == "__main__":
    main()
