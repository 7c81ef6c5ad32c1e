"""Peak memory of ``recipe_jump`` on a backed .h5ad (read a block of features at a time), against in memory.

The study is simulated straight to an .h5ad file (``simulate_profiles(path=...)``, plate by plate). Then, in the
same process, ``recipe_jump`` runs on the file opened with ``backed="r"`` (``copy=True``: an in-memory result of the
kept features), and, unless ``--skip-in-memory``, on the whole file read into memory, as the baseline. For each run
the script prints the peak of memory allocated through Python and numpy (``tracemalloc``), the peak resident set
size above the level before the run (sampled every 10 ms), the wall time, the ratios in-memory / backed, and whether
both give the same matrix and features.

Default: 4 sources × 4 batches × 34 plates of 384 wells = 208,896 wells × 3,255 features (2.5 GiB of float32).
Quick check:
    python benchmarks/recipe_memory.py --plates-per-batch 1 --features 300
"""

import argparse
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from simulate_profiles_memory import measure, mib

import cpembed as cpe

PLATE, NEGCON = "Metadata_Plate", "Metadata_is_negcon"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--batches-per-source", type=int, default=4)
    parser.add_argument("--plates-per-batch", type=int, default=34)
    parser.add_argument("--features", type=int, default=3255)
    parser.add_argument("--compounds", type=int, default=20_000)
    parser.add_argument(
        "--nonfinite-fraction",
        type=float,
        default=1e-8,
        help="share of NaN/inf values (the simulator's 1e-4 would put one in nearly every feature of 200,000 wells)",
    )
    parser.add_argument("--skip-in-memory", action="store_true", help="run the backed recipe alone")
    parser.add_argument("--out", type=Path, help="CSV file to append the figures to")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    study = {
        "n_sources": args.sources,
        "n_batches_per_source": args.batches_per_source,
        "n_plates_per_batch": args.plates_per_batch,
        "n_features": args.features,
        "n_compounds": args.compounds,
        "nonfinite_fraction": args.nonfinite_fraction,
        "seed": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.h5ad"
        cpe.datasets.simulate_profiles(**study, path=path).file.close()
        backed = ad.read_h5ad(path, backed="r")
        shape = backed.shape
        runs = {}
        runs["backed"] = measure(lambda: cpe.pp.recipe_jump(backed, PLATE, NEGCON, copy=True))
        backed.file.close()
        if not args.skip_in_memory:

            def in_memory():
                adata = ad.read_h5ad(path)
                cpe.pp.recipe_jump(adata, PLATE, NEGCON)
                return adata

            runs["in memory"] = measure(in_memory)

    dense = shape[0] * shape[1] * 4
    result = runs["backed"][0]
    print(f"study: {shape[0]:,} wells x {shape[1]:,} features; dense float32 X = {mib(dense)}")
    print(f"kept {result.n_vars:,} features; the result's X = {mib(result.X.nbytes)}")
    rows = []
    for name, (_, traced, rss, seconds) in runs.items():
        print(f"{name}: traced peak {mib(traced)}, RSS peak increase {mib(rss)}, {seconds:.1f} s")
        rows.append(
            {
                "wells": shape[0],
                "features": shape[1],
                "kept_features": result.n_vars,
                "run": name,
                "seconds": round(seconds, 1),
                "traced_peak_MiB": round(traced / 2**20),
                "rss_peak_increase_MiB": round(rss / 2**20),
                "rss_peak_over_dense_X": round(rss / dense, 2),
            }
        )
    if "in memory" in runs:
        expected, traced, rss, _ = runs["in memory"]
        _, backed_traced, backed_rss, _ = runs["backed"]
        print(f"ratio in-memory / backed: traced {traced / backed_traced:.1f}x, RSS {rss / backed_rss:.1f}x")
        same = np.array_equal(result.X, expected.X) and list(result.var_names) == list(expected.var_names)
        print(f"backed result equals the in-memory result: {same}")
    if args.out is not None:
        table = pd.DataFrame(rows)
        table.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)


if __name__ == "__main__":
    main()
