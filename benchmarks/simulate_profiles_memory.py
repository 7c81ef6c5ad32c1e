"""Peak memory of ``simulate_profiles`` writing a study chunk by chunk to .h5ad, against generating it in memory.

Both runs simulate the same study (same seed) in the same process: first written to an .h5ad file with ``path=``,
then generated in memory. For each run the script prints the peak of memory allocated through Python and numpy
(``tracemalloc``), the peak resident set size above the level before the run (sampled every 10 ms), the wall time,
and the ratio in-memory / chunked. The size of the dense float32 matrix is printed for reference, and the file is
checked against the in-memory result.

Default: 11 sources × 3 batches × 8 plates of 384 wells = 101,376 wells × 3,255 features. Quick check:
    python benchmarks/simulate_profiles_memory.py --batches-per-source 1 --plates-per-batch 1 --features 300
"""

import argparse
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import psutil

import cpembed as cpe


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=11)
    parser.add_argument("--batches-per-source", type=int, default=3)
    parser.add_argument("--plates-per-batch", type=int, default=8)
    parser.add_argument("--features", type=int, default=3255)
    parser.add_argument("--compounds", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=4096, help="wells generated and written at a time")
    parser.add_argument("--output", type=Path, default=None, help="where to write the .h5ad (default: a temp dir)")
    return parser.parse_args()


class PeakRss:
    """Sample the resident set size of this process in a background thread and keep the peak."""

    def __init__(self, interval: float = 0.01):
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.start = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def increase(self) -> int:
        return self.peak - self.start


def measure(run: Callable[[], object]) -> tuple[object, int, int, float]:
    """Result, peak traced allocation (bytes), peak RSS increase (bytes) and seconds of ``run()``."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    with PeakRss() as rss:
        result = run()
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, traced_peak, rss.increase, seconds


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def main() -> None:
    args = parse_args()
    kwargs = {
        "n_sources": args.sources,
        "n_batches_per_source": args.batches_per_source,
        "n_plates_per_batch": args.plates_per_batch,
        "n_features": args.features,
        "n_compounds": args.compounds,
        "seed": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = args.output or Path(tmp) / "simulated_study.h5ad"
        # Warm-up: import and initialise everything both runs use, so neither pays for it.
        warm_up = {**kwargs, "n_batches_per_source": 1, "n_plates_per_batch": 1, "n_features": 10, "n_compounds": 100}
        cpe.datasets.simulate_profiles(**warm_up, path=path).file.close()
        cpe.datasets.simulate_profiles(**warm_up)
        backed, chunked_traced, chunked_rss, chunked_seconds = measure(
            lambda: cpe.datasets.simulate_profiles(**kwargs, path=path, chunk_size=args.chunk_size)
        )
        shape = backed.shape
        backed.file.close()
        in_memory, memory_traced, memory_rss, memory_seconds = measure(lambda: cpe.datasets.simulate_profiles(**kwargs))
        reopened = ad.read_h5ad(path, backed="r")
        rows = np.random.default_rng(0).choice(shape[0], size=min(2000, shape[0]), replace=False)
        rows.sort()
        identical = np.array_equal(reopened.X[rows], in_memory.X[rows], equal_nan=True)
        reopened.file.close()
        file_size = path.stat().st_size

    dense = shape[0] * shape[1] * 4
    print(f"study: {shape[0]:,} wells x {shape[1]:,} features; dense float32 X = {mib(dense)}; file {mib(file_size)}")
    print(f"chunked to .h5ad (chunk_size={args.chunk_size} wells):")
    print(f"  traced peak {mib(chunked_traced)}, RSS peak increase {mib(chunked_rss)}, {chunked_seconds:.1f} s")
    print("in memory:")
    print(f"  traced peak {mib(memory_traced)}, RSS peak increase {mib(memory_rss)}, {memory_seconds:.1f} s")
    print(
        f"ratio in-memory / chunked: traced {memory_traced / chunked_traced:.1f}x, RSS {memory_rss / chunked_rss:.1f}x"
    )
    print(f"chunked peak / dense X: traced {chunked_traced / dense:.3f}, RSS {chunked_rss / dense:.3f}")
    print(f"file equals in-memory result on {rows.size} sampled wells: {identical}")


if __name__ == "__main__":
    main()
