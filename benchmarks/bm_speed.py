"""Time cpe.bm.benchmark against scib-metrics + copairs + scikit-learn computing the same table, in one process.

Four 64-d embeddings of simulated JUMP-like wells (cpe.datasets.simulate_profiles: sources, batches, plates,
compounds with MoAs, DMSO controls) are scored with every metric of the table. The baseline computes the same
metrics with the reference libraries, as a user of scib-metrics' ``Benchmarker`` would: pynndescent neighbours
(k = 90, subset to 15 and 50), graph connectivity, Leiden NMI/ARI, kBET per label, iLISI, cLISI and both silhouettes
from scib-metrics 0.5, mAP from copairs, and the CellPainTR reference code's random forests from scikit-learn
(cpembed grows the same trees with its own tree builder, so the forest scores agree exactly). Both sides run with
the same ``--n-jobs`` for the random forests and Leiden. First calls (numba and jax compilation) are included, as a
user would pay them.

Prints each side's wall time per step, the end-to-end ratio, and the peak resident memory above the starting
point (sampled every 20 ms; both sides share one process: cpembed runs second, from what the reference left).

``--neighbors exact approximate`` runs cpe.bm.benchmark in each neighbour mode and prints, besides each mode's time
and memory, the largest difference of every metric and aggregate score from the first mode, and each mode's time
extrapolated to 800,000 wells (``--out`` writes both as CSV). The steps that use neither neighbours nor silhouettes
(classifiers, mAP) run once and count in every mode.

    python benchmarks/bm_speed.py                    # 4 embeddings of 52,992 wells x 64 dimensions
    python benchmarks/bm_speed.py --plates 16        # ~6,000 wells, quick check
    python benchmarks/bm_speed.py --plates 544 --no-reference --neighbors approximate   # ~200,000 wells
"""

import argparse
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from map_speed import copairs_map
from sklearn.decomposition import PCA

import cpembed as cpe
from cpembed import bm
from cpembed.bm._neighbors import resolve_search

KEYS = {
    "batch_key": "Metadata_Batch",
    "label_key": "Metadata_moa",
    "perturbation_key": "Metadata_Compound",
    "plate_key": "Metadata_Plate",
    "control_key": "Metadata_is_negcon",
}
#: The steps that use the neighbour graph or all pairs of wells: those the neighbour mode changes.
NEIGHBOR_STEPS = ("graph_connectivity", "leiden", "kbet", "lisi", "silhouette_batch", "silhouette_label")
#: Wells of the extrapolated cost (JUMP's compound set is of this order).
EXTRAPOLATED_WELLS = 800_000


class PeakMemory:
    """Peak resident set size of this process while the block runs, sampled by a thread."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def simulated_embeddings(n_plates: int, n_dims: int):
    """Simulated wells with four embeddings: PCA, PCA centred per batch, per source, and a noisier PCA."""
    sources = 4
    adata = cpe.datasets.simulate_profiles(
        sources, 4, max(1, n_plates // 16), n_compounds=max(50, n_plates * 24), n_moas=30, n_features=120,
        nonfinite_fraction=0.0, seed=0,
    )  # fmt: skip
    adata = adata[~adata.obs["Metadata_is_poscon"].to_numpy()].copy()
    # The full JUMP recipe, not plain standardisation: with many plates some features have no spread among one
    # plate's controls, and dividing by that explodes them (enormous distances that break every kernel-based metric).
    cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    pcs = PCA(n_dims, random_state=0).fit_transform(np.asarray(adata.X, dtype=np.float64))
    adata.obsm["X_pca"] = pcs
    for name, key in [("X_batch_centred", "Metadata_Batch"), ("X_source_centred", "Metadata_Source")]:
        centred = pcs.copy()
        for group in adata.obs[key].unique():
            rows = (adata.obs[key] == group).to_numpy()
            centred[rows] -= pcs[rows].mean(axis=0)
        adata.obsm[name] = centred
    adata.obsm["X_noisy"] = pcs + np.random.default_rng(0).normal(scale=pcs.std(), size=pcs.shape)
    adata.obs["Metadata_moa"] = adata.obs["Metadata_moa"].astype(str)
    return adata


def reference_table(adata, embeddings, steps, *, n_jobs: int, null_size: int, timings: dict) -> dict:
    """The same metrics from scib-metrics, copairs and scikit-learn, one row per embedding."""
    obs = adata.obs
    control = obs["Metadata_is_negcon"].to_numpy()
    wells = {
        "control": control,
        "batch": obs["Metadata_Batch"].to_numpy().astype(str),
        "label": obs["Metadata_moa"].to_numpy().astype(str),
        "compound": obs["Metadata_Compound"].to_numpy().astype(str),
        "plate": obs["Metadata_Plate"].to_numpy().astype(str),
    }
    return {key: _reference_row(adata.obsm[key], wells, steps, n_jobs, null_size, timings) for key in embeddings}


def _reference_row(X, wells, steps, n_jobs, null_size, timings) -> dict:
    import scib_metrics
    from scib_metrics.nearest_neighbors import pynndescent

    treated = ~wells["control"]
    batch, label = wells["batch"], wells["label"]
    graph = {}

    def neighbors(k):
        if "nn" not in graph:  # scib-metrics' Benchmarker: one pynndescent search at k = 90, subset per metric
            graph["nn"] = pynndescent(X[treated], 90, random_state=0, n_jobs=n_jobs)
        return graph["nn"].subset_neighbors(k)

    def leiden():
        scores = scib_metrics.nmi_ari_cluster_labels_leiden(neighbors(15), label[treated], n_jobs=n_jobs)
        return {"leiden_nmi": scores["nmi"], "leiden_ari": scores["ari"]}

    def mean_average_precision(step, with_controls):
        per_perturbation = copairs_map(
            X, wells["compound"], wells["plate"], wells["control"], control=with_controls, null_size=null_size
        )
        return {
            step: per_perturbation["mean_average_precision"].mean(),
            f"{step}_fraction_retrieved": per_perturbation["below_corrected_p"].mean(),
        }

    computations = {
        "graph_connectivity": lambda: {
            "graph_connectivity": scib_metrics.graph_connectivity(neighbors(15), label[treated])
        },
        "leiden": leiden,
        "kbet": lambda: {"kbet": scib_metrics.kbet_per_label(neighbors(50), batch[treated], label[treated])},
        "lisi": lambda: {
            "ilisi": scib_metrics.ilisi_knn(neighbors(90), batch[treated]),
            "clisi": scib_metrics.clisi_knn(neighbors(90), label[treated]),
        },
        "silhouette_batch": lambda: {
            "silhouette_batch": scib_metrics.silhouette_batch(X[treated], label[treated], batch[treated])
        },
        "silhouette_label": lambda: {"silhouette_label": scib_metrics.silhouette_label(X[treated], label[treated])},
        "batch_classifiers": lambda: {
            "batch_classifier_control": 1 - _forest_f1(X, batch, n_jobs),
            "batch_classifier_no_control": 1 - _forest_f1(X[treated], batch[treated], n_jobs),
        },
        "bio_classifiers": lambda: {
            "bio_info_control": _forest_f1(X, np.where(wells["control"], "negative control", label), n_jobs),
            "bio_info_no_control": _forest_f1(X[treated], label[treated], n_jobs),
        },
        "map_control": lambda: mean_average_precision("map_control", True),
        "map_no_rep": lambda: mean_average_precision("map_no_rep", False),
    }
    row = {}
    for step in steps:
        start = time.perf_counter()
        row.update(computations[step]())
        timings[step] += time.perf_counter() - start
    return row


def _forest_f1(X, y, n_jobs):
    """The CellPainTR reference code's ``perform_classification``."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    forest = RandomForestClassifier(random_state=42, n_jobs=n_jobs).fit(X_train, y_train)
    return f1_score(y_test, forest.predict(X_test), average="weighted")


class StepTimer:
    """Time each metric step inside cpe.bm.benchmark, under the label set last (the neighbour search lands in the
    first graph step)."""

    def __init__(self):
        self.seconds = defaultdict(lambda: defaultdict(float))
        self.label = None
        run_step = bm._benchmark._run_step

        def timed(scorer, step):
            start = time.perf_counter()
            result = run_step(scorer, step)
            self.seconds[self.label][step] += time.perf_counter() - start
            return result

        bm._benchmark._run_step = timed


def cpembed_tables(adata, embeddings, steps, modes, *, n_jobs: int, null_size: int, timer: StepTimer) -> dict:
    """cpe.bm.benchmark's table in each neighbour mode, with its wall time and peak memory.

    The steps that use neither neighbours nor silhouettes (classifiers, mAP) give the same values in every mode: they
    run once, and their time and memory are added to each mode's.
    """
    options = {**KEYS, "n_jobs": n_jobs, "null_size": null_size, "progress": False}
    shared_steps = [step for step in steps if step not in NEIGHBOR_STEPS]
    runs = {}
    for label, mode, selected in [("shared", "exact", shared_steps)] + [(mode, mode, NEIGHBOR_STEPS) for mode in modes]:
        selected = [step for step in selected if step in steps]
        if not selected:
            continue
        timer.label = label
        with PeakMemory() as memory:
            start = time.perf_counter()
            metrics = [column for step in selected for column in bm._benchmark._STEPS[step]]
            table = bm.benchmark(adata, embeddings, **options, metrics=metrics, neighbors=mode)
            runs[label] = {"table": table, "seconds": time.perf_counter() - start, "mib": memory.mib}
    shared = runs.pop("shared", {"table": None, "seconds": 0.0, "mib": 0.0})
    for run in runs.values():
        if shared["table"] is not None:
            run["table"] = with_scores(run["table"].fillna(shared["table"]))
        run["own_seconds"] = run["seconds"]
        run["seconds"] += shared["seconds"]
        run["mib"] = max(run["mib"], shared["mib"])
    return runs


def with_scores(table: pd.DataFrame) -> pd.DataFrame:
    """The metric columns of ``table`` followed by the aggregate scores computed from them."""
    metrics = table[list(bm.METRIC_COLUMNS)]
    return pd.concat([metrics, bm.CELLPAINTR_SCORES.score(metrics), bm.JUMP_SCORES.score(metrics)], axis=1)


def mode_differences(runs: dict, reference_mode: str) -> pd.DataFrame:
    """Largest |mode - reference_mode| over the embeddings, per metric and aggregate score, for each other mode.

    Metrics not computed (left out with --skip) are the same in every mode, so they cancel out of the aggregate
    differences: they are held at 0 on both sides to compute them.
    """

    def scored(table):
        return with_scores(table.fillna(0.0))

    reference = scored(runs[reference_mode]["table"])
    computed = runs[reference_mode]["table"].columns[runs[reference_mode]["table"].notna().all()]
    columns = [column for column in reference.columns if column in computed or column in bm.SCORE_COLUMNS]
    return pd.DataFrame(
        {
            mode: (scored(run["table"]) - reference)[columns].abs().max()
            for mode, run in runs.items()
            if mode != reference_mode
        }
    )


def extrapolated_seconds(run: dict, mode: str, n_wells: int, target: int) -> float:
    """Seconds at ``target`` wells: the shared steps grow as n log n, the neighbour steps as n² (exact search and
    all-pairs silhouettes) or n log n (NN-descent; sampled silhouettes grow as n)."""
    n_log_n = target * np.log(target) / (n_wells * np.log(n_wells))
    neighbour_growth = (target / n_wells) ** 2 if mode == "exact" else n_log_n
    return (run["seconds"] - run["own_seconds"]) * n_log_n + run["own_seconds"] * neighbour_growth


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plates", type=int, default=144, help="384-well plates, a multiple of 16 (144: 52,992 wells)")
    parser.add_argument("--n-dims", type=int, default=64)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--null-size", type=int, default=10_000)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=list(bm._benchmark._STEPS), help="metric steps left out on both sides"
    )
    parser.add_argument(
        "--neighbors",
        nargs="+",
        default=["auto"],
        choices=["auto", "exact", "approximate"],
        help="neighbour modes of cpe.bm.benchmark to run; the others are compared with the first",
    )
    parser.add_argument("--no-reference", action="store_true", help="leave out scib-metrics, copairs, scikit-learn")
    parser.add_argument("--embeddings", type=int, default=4, choices=range(1, 5), help="how many of the 4 to score")
    parser.add_argument("--out", type=Path, help="folder to write bm_speed_<wells>.csv (per mode) and differences to")
    args = parser.parse_args()
    steps = [step for step in bm._benchmark._STEPS if step not in args.skip]

    adata = simulated_embeddings(args.plates, args.n_dims)
    embeddings = ["X_pca", "X_batch_centred", "X_source_centred", "X_noisy"][: args.embeddings]
    n_wells = adata.n_obs
    print(
        f"{n_wells} wells ({int(adata.obs['Metadata_is_negcon'].sum())} controls) x {args.n_dims} dims, "
        f"{len(embeddings)} embeddings, {adata.obs['Metadata_Batch'].nunique()} batches, "
        f"{adata.obs['Metadata_moa'].nunique()} MoAs, {adata.obs['Metadata_Compound'].nunique()} compounds"
    )

    reference_steps = defaultdict(float)
    if not args.no_reference:
        # The reference runs first, so that its numba/jax compilation is not paid for by a warm-up from cpembed.
        with PeakMemory() as reference_memory:
            start = time.perf_counter()
            reference = reference_table(
                adata, embeddings, steps, n_jobs=args.n_jobs, null_size=args.null_size, timings=reference_steps
            )
            reference_seconds = time.perf_counter() - start
    timer = StepTimer()
    runs = cpembed_tables(
        adata, embeddings, steps, args.neighbors, n_jobs=args.n_jobs, null_size=args.null_size, timer=timer
    )

    first = args.neighbors[0]
    print(f"\n{'step':<20}" + "".join(f"{'cpembed ' + mode + ' s':>24}" for mode in runs) + f"{'reference s':>14}")
    for step in steps:
        label = "shared" if step not in NEIGHBOR_STEPS else None
        times = "".join(f"{timer.seconds[label or mode][step]:>24.1f}" for mode in runs)
        print(f"{step:<20}{times}{reference_steps[step]:>14.1f}")
    print("(each side's neighbour search is counted in its first graph-metric row)")
    rows = []
    for mode, run in runs.items():
        extrapolated = extrapolated_seconds(run, resolve_search(mode, n_wells), n_wells, EXTRAPOLATED_WELLS)
        print(
            f"cpembed, neighbors={mode}: {run['seconds']:.1f} s end to end ({run['own_seconds']:.1f} s in the "
            f"neighbour and silhouette steps), peak memory above start {run['mib']:.0f} MiB; "
            f"about {extrapolated / 3600:.1f} h at {EXTRAPOLATED_WELLS:,} wells"
        )
        rows.append(
            {
                "wells": n_wells,
                "embeddings": len(embeddings),
                "neighbors": mode,
                "seconds": round(run["seconds"], 1),
                "neighbour_and_silhouette_seconds": round(run["own_seconds"], 1),
                "peak_MiB": round(run["mib"]),
                f"extrapolated_{EXTRAPOLATED_WELLS // 1000}k_wells_hours": round(extrapolated / 3600, 2),
            }
        )
    print(f"(a dense wells x wells float32 matrix would be {n_wells**2 * 4 / 2**20:.0f} MiB)")
    if not args.no_reference:
        print(
            f"reference: {reference_seconds:.1f} s, peak memory above start {reference_memory.mib:.0f} MiB; "
            f"speed-up of cpembed ({first}) {reference_seconds / runs[first]['seconds']:.2f}x"
        )
        print("\nlargest |cpembed - reference| per metric over the embeddings:")
        for column in reference[embeddings[0]]:
            gap = max(abs(runs[first]["table"].loc[key, column] - reference[key][column]) for key in embeddings)
            print(f"  {column:<28}{gap:.2e}")
    differences = mode_differences(runs, first) if len(runs) > 1 else None
    if differences is not None:
        print(f"\nlargest |mode - {first}| per metric and aggregate score over the embeddings:")
        print(differences.to_string(float_format="{:.4f}".format))
    for mode, run in runs.items():
        print(f"\nneighbors={mode}\n" + run["table"].round(3).to_string())  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out / f"bm_speed_{n_wells}.csv", index=False)
        if differences is not None:
            differences.index.name = "column"
            differences.add_prefix(f"|{first} - ").add_suffix("|").to_csv(
                args.out / f"bm_speed_{n_wells}_differences.csv", float_format="%.4f"
            )


if __name__ == "__main__":
    main()
