"""Peak memory of reading a parquet profile table: cpembed.io.read_profiles(path) against the pandas route.

The baseline is what one would write without the column-wise reader: ``pd.read_parquet(path)`` and then
``read_profiles(dataframe)`` (float64 DataFrame, then a float32 copy). cpembed reads the feature columns of each
row group straight into a preallocated float32 array. Each route runs in a fresh Python process; the script prints
how far its resident memory peaks above the level after the imports (Linux: the peak is reset through
/proc/self/clear_refs and read as VmHWM), and the ratio baseline / cpembed.

Example (about a minute on two cores; the baseline peaks near 1.6 GiB above the imports):
    python benchmarks/read_profiles_memory.py --rows 20000 --features 2000
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROUTES = {
    "pandas route": "adata = read_profiles(pd.read_parquet(PATH))",
    "read_profiles(path)": "adata = read_profiles(PATH)",
}
CHILD = """
import pandas as pd
from cpembed.io import read_profiles
read_profiles(pd.read_parquet({warmup!r}))  # libraries load before the measurement
read_profiles({warmup!r})
def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field))
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the high-water mark, so VmHWM is the peak of what follows
PATH = {path!r}
{statement}
print(status("VmHWM:") - before)
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=2_000)
    parser.add_argument("--row-group-size", type=int, default=4_096)
    return parser.parse_args()


def write_table(path: Path, n_rows: int, n_features: int, row_group_size: int) -> None:
    rng = np.random.default_rng(0)
    features = pd.DataFrame(
        rng.normal(size=(n_rows, n_features)),
        columns=[f"Cells_Intensity_MeanIntensity_DNA_{i}" for i in range(n_features)],
    )
    metadata = pd.DataFrame(
        {"Metadata_Plate": [f"P{i // 384}" for i in range(n_rows)], "Metadata_Row": np.arange(n_rows)}
    )
    pd.concat([metadata, features], axis=1).to_parquet(path, index=False, row_group_size=row_group_size)


def peak_rss_increase_mib(path: Path, warmup: Path, statement: str) -> tuple[float, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(path=str(path), warmup=str(warmup), statement=statement)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(result.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profiles.parquet"
        write_table(path, args.rows, args.features, args.row_group_size)
        warmup = Path(folder) / "warmup.parquet"
        write_table(warmup, 10, 10, args.row_group_size)
        float32_mib = args.rows * args.features * 4 / 2**20
        disk_mib = path.stat().st_size / 2**20
        print(f"table: {args.rows} wells x {args.features} features (float64, {disk_mib:.0f} MiB on disk)")
        print(f"result: float32 matrix of {float32_mib:.0f} MiB")
        peaks = {name: peak_rss_increase_mib(path, warmup, statement) for name, statement in ROUTES.items()}
    for name, (peak, seconds) in peaks.items():
        share = peak / float32_mib
        print(f"{name:>22}: peak {peak:6.0f} MiB above the imports ({share:.2f}x the result), {seconds:.1f} s")
    ratio = peaks["pandas route"][0] / peaks["read_profiles(path)"][0]
    print(f"peak memory ratio pandas route / read_profiles(path): {ratio:.2f}")


if __name__ == "__main__":
    main()
