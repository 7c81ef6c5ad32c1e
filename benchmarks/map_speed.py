"""Time cpembed's mAP (control and no rep) against copairs on the same simulated plates, in one process.

Prints the wall time and the peak traced (numpy / Python) memory of each implementation, their ratio, and the
largest difference in per-perturbation mAP. copairs does its pair search in duckdb, whose memory tracemalloc does
not see, so its peak is a lower bound.

    python benchmarks/map_speed.py                   # 50,000 wells x 64 dimensions
    python benchmarks/map_speed.py --n-wells 5000    # quick check
"""

import argparse
import tempfile
import time
import tracemalloc

import numpy as np
import pandas as pd

from cpembed.bm import map_control, map_no_rep

WELLS_PER_PLATE = 384
CONTROLS_PER_PLATE = 32
REPLICATES = 4


def simulated_plates(n_wells: int, n_dims: int, seed: int = 0):
    """Plates of 384 wells, 32 controls each; every perturbation has 4 wells on 4 different plates."""
    rng = np.random.default_rng(seed)
    n_plates = max(REPLICATES, round(n_wells / WELLS_PER_PLATE))
    n_perturbations = n_plates * (WELLS_PER_PLATE - CONTROLS_PER_PLATE) // REPLICATES
    treated = np.repeat(np.arange(n_perturbations), REPLICATES)
    effect_index = np.concatenate([treated, np.full(n_plates * CONTROLS_PER_PLATE, n_perturbations)])
    plate = np.concatenate([np.arange(treated.size) % n_plates, np.repeat(np.arange(n_plates), CONTROLS_PER_PLATE)])
    is_control = effect_index == n_perturbations
    perturbation = np.where(is_control, "DMSO", effect_index.astype(str))
    effects = rng.normal(size=(n_perturbations + 1, n_dims)) * rng.uniform(0, 1.5, size=(n_perturbations + 1, 1))
    effects[-1] = 0
    plate_effects = rng.normal(scale=0.5, size=(n_plates, n_dims))
    X = effects[effect_index] + plate_effects[plate] + rng.normal(size=(effect_index.size, n_dims))
    return X, perturbation, plate.astype(str), is_control


def measure(function):
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def copairs_map(X, perturbation, plate, is_control, *, control: bool, null_size: int):
    from copairs.map import average_precision, mean_average_precision

    meta = pd.DataFrame({"perturbation": perturbation, "plate": plate, "is_control": is_control})
    if control:
        meta.loc[is_control, "perturbation"] = [f"control_{i}" for i in range(int(is_control.sum()))]
        rules = {"pos_diffby": [], "neg_sameby": ["plate"], "neg_diffby": ["is_control", "perturbation"]}
    else:
        keep = ~is_control
        meta, X = meta[keep].reset_index(drop=True), X[keep]
        rules = {"pos_diffby": [], "neg_sameby": ["plate"], "neg_diffby": ["perturbation"]}
    scores = average_precision(meta, X, pos_sameby=["perturbation"], progress_bar=False, **rules)
    scores = scores[~scores["is_control"]]
    with tempfile.TemporaryDirectory() as cache:
        return mean_average_precision(
            scores, ["perturbation"], null_size=null_size, threshold=0.05, seed=0, progress_bar=False, cache_dir=cache
        ).set_index("perturbation")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-wells", type=int, default=50_000)
    parser.add_argument("--n-dims", type=int, default=64)
    parser.add_argument("--null-size", type=int, default=10_000)
    args = parser.parse_args()

    X, perturbation, plate, is_control = simulated_plates(args.n_wells, args.n_dims)
    print(f"{X.shape[0]} wells x {X.shape[1]} dimensions, {np.unique(plate).size} plates, null size {args.null_size}")
    for name, ours, control in [("control", map_control, True), ("no rep", map_no_rep, False)]:
        mine, mine_s, mine_mib = measure(lambda f=ours: f(X, perturbation, plate, is_control, null_size=args.null_size))
        theirs, theirs_s, theirs_mib = measure(
            lambda c=control: copairs_map(X, perturbation, plate, is_control, control=c, null_size=args.null_size)
        )
        table = mine.per_perturbation
        difference = np.abs(theirs.loc[table.index, "mean_average_precision"] - table["mean_average_precision"]).max()
        print(
            f"mAP ({name}): cpembed {mine_s:.2f} s, peak {mine_mib:.0f} MiB | copairs {theirs_s:.2f} s, "
            f"peak {theirs_mib:.0f} MiB | speed-up {theirs_s / mine_s:.1f}x | "
            f"mAP {mine.mean_average_precision:.4f} vs {theirs['mean_average_precision'].mean():.4f}, "
            f"max per-perturbation difference {difference:.1e} | fraction retrieved {mine.fraction_retrieved:.3f} "
            f"vs {theirs['below_corrected_p'].mean():.3f}"
        )


if __name__ == "__main__":
    main()
