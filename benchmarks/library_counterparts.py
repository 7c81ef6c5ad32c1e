"""Time every hand-written piece of cpe.bm against the maintained library that computes the same thing, in one process.

Each piece and its counterpart run on the same simulated wells (Gaussian clusters for the labels, shifted per batch)
or, for mAP, on map_speed.py's simulated plates. Each side is called once to compile (numba, jax) and then timed on a
second call, single-threaded (BLAS, torch and numba), so the ratio compares the algorithms rather than first-call
costs. Writes one CSV row per piece: both times, the speed-up (library seconds / cpembed seconds) and the largest
difference between the two results, which docs/implementation.md includes, and the settings and versions.

    python benchmarks/library_counterparts.py --n-wells 5000
"""

import argparse
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import torch
from map_speed import copairs_map, simulated_plates
from threadpoolctl import threadpool_limits

from cpembed import bm
from cpembed.bm._forest import random_forest_predict

OUT = Path(__file__).resolve().parents[1] / "docs" / "_static" / "benchmarks" / "implementation"
N_LABELS = 30
N_BATCHES = 8


def clustered_wells(n_wells: int, n_dims: int, seed: int = 0):
    """Wells of ``N_LABELS`` Gaussian clusters, each batch shifted by its own offset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_LABELS, n_wells)
    batches = rng.integers(0, N_BATCHES, n_wells)
    centres = rng.normal(scale=2.0, size=(N_LABELS, n_dims))
    offsets = rng.normal(scale=0.7, size=(N_BATCHES, n_dims))
    X = centres[labels] + offsets[batches] + rng.normal(size=(n_wells, n_dims))
    return X, labels.astype(str), batches.astype(str)


def second_call(function):
    """The result and wall time of ``function()``'s second call (the first compiles)."""
    function()
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def scib_neighbors(neighbors: bm.NeighborsResult):
    from scib_metrics.nearest_neighbors import NeighborsResults

    return NeighborsResults(indices=neighbors.indices, distances=neighbors.distances)


def pieces(n_wells: int, n_dims: int, null_size: int):
    """(piece, cpembed function, library function, cpembed call, library call, difference of the two results)."""
    import scib_metrics
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import silhouette_samples
    from sklearn.neighbors import NearestNeighbors
    from umap.umap_ import fuzzy_simplicial_set

    X, labels, batches = clustered_wells(n_wells, n_dims)
    train = np.arange(n_wells) % 5 != 0
    neighbors = bm.nearest_neighbors(X, 90, search="exact")

    def sklearn_forest():
        forest = RandomForestClassifier(n_estimators=100, random_state=42).fit(X[train], batches[train])
        return forest.predict(X[~train])

    def umap_graph():
        graph = fuzzy_simplicial_set(
            X, 15, 0, "euclidean", knn_indices=neighbors.indices[:, :15], knn_dists=neighbors.distances[:, :15]
        )[0]
        return graph.tocsr()

    def cpembed_graph():
        return bm.NeighborsResult(neighbors.indices[:, :15], neighbors.distances[:, :15]).connectivities

    plates = simulated_plates(n_wells, n_dims)
    yield (
        "Random forest (batch and bio classifiers)",
        "bm._forest.random_forest_predict",
        "sklearn RandomForestClassifier",
        lambda: random_forest_predict(X[train], batches[train], X[~train]),
        sklearn_forest,
        lambda ours, theirs: float(np.mean(ours != theirs)),
    )
    yield (
        "Exact k nearest neighbours (k = 90)",
        "bm.nearest_neighbors(search='exact')",
        "sklearn NearestNeighbors(algorithm='brute')",
        lambda: bm.nearest_neighbors(X, 90, search="exact"),
        lambda: NearestNeighbors(n_neighbors=90, algorithm="brute").fit(X).kneighbors(X),
        lambda ours, theirs: float(np.abs(ours.distances - theirs[0]).max()),
    )
    yield (
        "UMAP connectivity graph (k = 15)",
        "bm.NeighborsResult.connectivities",
        "umap-learn fuzzy_simplicial_set",
        cpembed_graph,
        umap_graph,
        lambda ours, theirs: float(abs(ours - theirs).max()),
    )
    yield (
        "Silhouette of every well",
        "bm.silhouette_samples",
        "sklearn silhouette_samples",
        lambda: bm.silhouette_samples(X, labels),
        lambda: silhouette_samples(X, labels),
        lambda ours, theirs: float(np.abs(ours - theirs).max()),
    )
    yield (
        "iLISI (k = 90)",
        "bm.ilisi",
        "scib-metrics ilisi_knn",
        lambda: bm.ilisi(neighbors, batches),
        lambda: scib_metrics.ilisi_knn(scib_neighbors(neighbors), batches),
        lambda ours, theirs: abs(ours - float(theirs)),
    )
    yield (
        "kBET per label (k = 50)",
        "bm.kbet_per_label",
        "scib-metrics kbet_per_label",
        lambda: bm.kbet_per_label(neighbors.subset(50), batches, labels),
        lambda: scib_metrics.kbet_per_label(scib_neighbors(neighbors.subset(50)), batches, labels),
        lambda ours, theirs: abs(ours - float(theirs)),
    )
    yield (
        "Leiden NMI over 10 resolutions (k = 15)",
        "bm.leiden_nmi_ari",
        "scib-metrics nmi_ari_cluster_labels_leiden",
        lambda: bm.leiden_nmi_ari(neighbors.subset(15), labels),
        lambda: scib_metrics.nmi_ari_cluster_labels_leiden(scib_neighbors(neighbors.subset(15)), labels),
        lambda ours, theirs: abs(ours.nmi - float(theirs["nmi"])),
    )
    yield (
        f"mAP against controls (null size {null_size})",
        "bm.map_control",
        "copairs average_precision + mean_average_precision",
        lambda: bm.map_control(*plates, null_size=null_size),
        lambda: copairs_map(*plates, control=True, null_size=null_size),
        lambda ours, theirs: float(
            np.abs(
                theirs.loc[ours.per_perturbation.index, "mean_average_precision"]
                - ours.per_perturbation["mean_average_precision"]
            ).max()
        ),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-wells", type=int, default=5_000)
    parser.add_argument("--n-dims", type=int, default=64)
    parser.add_argument("--null-size", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write counterparts.csv and setup.csv to")
    args = parser.parse_args()

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    rows = []
    with threadpool_limits(1):
        for piece, ours, library, run_ours, run_theirs, difference in pieces(args.n_wells, args.n_dims, args.null_size):
            mine, mine_s = second_call(run_ours)
            theirs, theirs_s = second_call(run_theirs)
            rows.append(
                {
                    "piece": piece,
                    "cpembed": ours,
                    "library": library,
                    "cpembed s": round(mine_s, 3),
                    "library s": round(theirs_s, 3),
                    "speed-up": round(theirs_s / mine_s, 1),
                    "largest difference": f"{difference(mine, theirs):.1e}",
                }
            )
            print(rows[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out / "counterparts.csv", index=False)
    setup = {
        "wells": args.n_wells,
        "dimensions": args.n_dims,
        "threads": 1,
        "cores of the machine": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        **{package: version(package) for package in ("scikit-learn", "umap-learn", "scib-metrics", "copairs", "torch")},
    }
    pd.Series(setup, name="value").rename_axis("setting").to_csv(args.out / "setup.csv")


if __name__ == "__main__":
    main()
