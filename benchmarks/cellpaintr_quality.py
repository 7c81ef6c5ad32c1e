"""CellPainTR quality (the paper's Table 1 scores) against the baselines, and the training time of its stages.

Scores CellPainTR(1), CellPainTR(2) and the final model against the preprocessed features (Baseline), ComBat,
Harmony and sphering with :func:`cpembed.bm.benchmark`, on

(a) the bundled BBBC021 (batch = imaging week, labels = compound, scored on MoA, plus NSC/NSCB 1-NN MoA accuracy
    from :func:`cpembed.bm.moa_accuracy`), and
(b) multi-source profiles from :func:`cpembed.datasets.simulate_profiles` (batch = source).

One CellPainTR configuration (``MODEL`` and ``STAGES`` below) serves both data sets. It is smaller and trains
with larger learning rates than the paper's JUMP settings, which are meant for millions of wells. The wall time
of the three stages on BBBC021 is printed; the machine may be shared, so compare it with the CPU time printed
beside it.

Run: ``python benchmarks/cellpaintr_quality.py`` (``--quick`` for a smoke run with fewer epochs and wells;
``--seeds 0 1 2`` repeats everything per seed, the simulated data included, and adds the mean and standard deviation
over seeds).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _seeds import summarise_seeds

import cpembed as cpe

MODEL = {"d_model": 64, "n_layers": 2, "d_mlp": 128, "filter_width": 16}
STAGES = {
    "stage1": {"max_epochs": 4, "batch_size": 32, "lr": 1e-3},
    "stage2": {"max_epochs": 4, "batch_size": 32, "lr": 2e-4, "warmup_epochs": 1},
    "stage3": {"max_epochs": 4, "batch_size": 64, "lr": 2e-4},
}
QUICK_STAGES = {name: {**settings, "max_epochs": 1, "warmup_epochs": 0} for name, settings in STAGES.items()}
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False}
SHOWN = ["batch_score", "bio_score", "overall_score", "graph_connectivity", "silhouette_batch", "map_control"]
METHODS = {
    "X": "Baseline",
    "X_combat": "ComBat",
    "X_harmony": "Harmony",
    "X_sphering": "Sphering",
    "X_cellpaintr_stage1": "CellPainTR(1)",
    "X_cellpaintr_stage2": "CellPainTR(2)",
    "X_cellpaintr": "CellPainTR",
}


def preprocess(adata: sc.AnnData) -> sc.AnnData:
    """The paper's model-side preprocessing, with cpembed.pp: per-plate robust MAD to DMSO, then clipping."""
    cpe.pp.drop_nonfinite(adata)
    cpe.pp.control_variation_filter(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.clip_quantiles(adata)
    return adata


def add_baselines(adata: sc.AnnData, batch_key: str) -> None:
    cpe.tl.combat(adata, batch_key)
    adata.obsm["X_pca"] = sc.pp.pca(np.asarray(adata.X, dtype=np.float32), n_comps=min(50, adata.n_vars - 1))
    cpe.tl.harmony(adata, batch_key)
    cpe.tl.sphering(adata, "Metadata_is_negcon", method="PCA")


def add_cellpaintr(adata: sc.AnnData, batch_key: str, stages: dict, seed: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    cpe.tl.cellpaintr(
        adata,
        batch_key,
        "Metadata_Compound",
        model_kwargs={**MODEL, "seed": seed},
        stage_embeddings=True,
        seed=seed,
        **stages,
        **TRAINER,
    )
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def score(adata: sc.AnnData, batch_key: str) -> pd.DataFrame:
    table = cpe.bm.benchmark(
        adata,
        list(METHODS),
        batch_key=batch_key,
        label_key="Metadata_moa",
        perturbation_key="Metadata_Compound",
        plate_key="Metadata_Plate",
        control_key="Metadata_is_negcon",
        well_key="Metadata_Well",
        progress=False,
    )
    return table.rename(index=METHODS)


def nsc_nscb(adata: sc.AnnData, matrix: np.ndarray) -> dict[str, float]:
    """BBBC021's NSC and NSCB MoA accuracies of ``matrix`` (rows = the wells of ``adata``), batch = week."""
    obs = adata.obs
    result = cpe.bm.moa_accuracy(
        matrix,
        obs["Metadata_Compound"].to_numpy(),
        obs["Metadata_Concentration"].to_numpy(),
        moa=obs["Metadata_moa"].to_numpy(),
        batch=obs["Metadata_Batch"].to_numpy(),
        is_control=obs["Metadata_is_negcon"].to_numpy(),
    )
    return {"NSC": result.nsc, "NSCB": result.nscb}


def moa_scores(adata: sc.AnnData) -> pd.DataFrame:
    rows = {
        name: nsc_nscb(adata, np.asarray(adata.X if key == "X" else adata.obsm[key])) for key, name in METHODS.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def bbbc021(stages: dict, seed: int) -> pd.DataFrame:
    adata = preprocess(cpe.datasets.bbbc021())
    add_baselines(adata, "Metadata_Batch")
    timing = add_cellpaintr(adata, "Metadata_Batch", stages, seed)
    print(f"\n(a) BBBC021, seed {seed}: {adata.n_obs} wells x {adata.n_vars} features, batch = week, labels = compound")
    print(
        f"three CellPainTR stages incl. embedding: {timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU "
        f"({torch.get_num_threads()} threads; target < 120 s on a 2-core CPU)"
    )
    table = score(adata, "Metadata_Batch").join(moa_scores(adata))[[*SHOWN, "NSC", "NSCB"]]
    print(table.round(3).to_string())
    return table


def simulated(stages: dict, n_plates_per_batch: int, seed: int) -> pd.DataFrame:
    adata = cpe.datasets.simulate_profiles(
        n_sources=4, n_batches_per_source=1, n_plates_per_batch=n_plates_per_batch, plate_format=96,
        n_compounds=60, n_moas=8, n_features=300, seed=seed,
    )  # fmt: skip
    adata = preprocess(adata)
    add_baselines(adata, "Metadata_Source")
    timing = add_cellpaintr(adata, "Metadata_Source", stages, seed)
    print(
        f"\n(b) simulated, seed {seed}: {adata.n_obs} wells x {adata.n_vars} features, batch = source, "
        "labels = compound"
    )
    print(f"three CellPainTR stages incl. embedding: {timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU")
    table = score(adata, "Metadata_Source")[SHOWN]
    print(table.round(3).to_string())
    return table


TARGETS = {
    "bbbc021": {
        "NSCB(CellPainTR) >= NSCB(Baseline)": lambda t: t.loc["CellPainTR", "NSCB"] >= t.loc["Baseline", "NSCB"],
    },
    "simulated": {
        "overall(CellPainTR) > overall(Harmony)": (
            lambda t: t.loc["CellPainTR", "overall_score"] > t.loc["Harmony", "overall_score"]
        ),
        "batch(CellPainTR) >= batch(Harmony)": (
            lambda t: t.loc["CellPainTR", "batch_score"] >= t.loc["Harmony", "batch_score"]
        ),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per stage and fewer simulated plates")
    parser.add_argument("--only", choices=["bbbc021", "simulated"], help="run one data set")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one run per seed (networks, sampling, simulated data)"
    )
    args = parser.parse_args()
    stages = QUICK_STAGES if args.quick else STAGES
    if args.only in (None, "bbbc021"):
        summarise_seeds({seed: bbbc021(stages, seed) for seed in args.seeds}, TARGETS["bbbc021"], "(bbbc021)")
    if args.only in (None, "simulated"):
        n_plates = 1 if args.quick else 2
        tables = {seed: simulated(stages, n_plates, seed) for seed in args.seeds}
        summarise_seeds(tables, TARGETS["simulated"], "(simulated)")


if __name__ == "__main__":
    main()
