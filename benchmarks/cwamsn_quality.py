"""Cross-well CWA-MSN vs single-well MSN vs handcrafted features on simulated images with plate effects.

As the CWA-MSN paper's Table 3 (single- vs cross-well) and Table 8 (plate-prediction probe): each method's per-field
embedding is averaged per well (cpembed.pp.aggregate) and scored with cpembed.bm: plate-prediction macro-F1 (linear
and kNN, 5-fold; lower = less batch effect) on the well means z-scored over all wells, and, on wells centre-scaled
on the DMSO wells of their plate, perturbation mAP against controls (map_control) and MoA nearest-neighbour accuracy
among other compounds (moa_accuracy, NSC). The handcrafted baseline is measured twice: on the simulator's true
masks (an upper bound no lab has) and on masks segmented from the images (cpembed.tl.segment_cells, what a lab's
CellProfiler pipeline would give). Both networks standardise every view with the DMSO images of its plate by
default; ``--normalization image`` gives the paper's per-view self-standardisation.

The simulated effects are half the simulator's default size: at full size every method retrieves nearly every
compound (mAP 0.96-0.99), and the mAP comparisons are decided by noise.

Runs on CPU in a few minutes per seed with a small ViT (sizes printed). Each seed draws its own simulated plates
and initialises its own networks; with several seeds the script prints every seed's table, then the mean and
standard deviation over seeds and how many seeds meet each target (single simulations of 112 wells vary a lot).
``--out`` writes that summary (mean ± standard deviation per method and score; with one seed, its values) to a CSV
file, the table the benchmarks page includes. Example:
    python benchmarks/cwamsn_quality.py --seeds 0 1 2 3 4 --out docs/_static/benchmarks/cwamsn/quality.csv
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _seeds import summarise_seeds

import cpembed as cpe

OBS = {"perturbation": "Metadata_Perturbation", "well": "Metadata_Well", "plate": "Metadata_Plate"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="simulated field side")
    parser.add_argument("--crop-size", type=int, default=32, help="ViT input (random/target views)")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--n-focal", type=int, default=6)
    parser.add_argument("--pool", choices=["cls", "mean"], default="cls", help="image embedding: CLS or patch mean")
    parser.add_argument(
        "--normalization",
        choices=["image", "plate_controls"],
        default="plate_controls",
        help="standardise views on their own pixels or on their plate's DMSO images (both networks)",
    )
    parser.add_argument("--plate-effect", type=float, default=1.5)
    parser.add_argument(
        "--effect-size",
        type=float,
        default=0.5,
        help="scale of the perturbations' effects (at 1.0 every method's mAP is 0.96-0.99, at its ceiling)",
    )
    parser.add_argument("--n-moas", type=int, default=6)
    parser.add_argument("--per-moa", type=int, default=4, help="compounds per MoA")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (data and networks)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--out", type=Path, default=None, help="CSV file to write the summary over seeds to")
    return parser.parse_args()


def model_kwargs(args, seed):
    return {
        "image_size": args.crop_size,
        "patch_size": args.patch_size,
        "embed_dim": args.width,
        "depth": args.depth,
        "num_heads": max(1, args.width // 16),
        "hidden_dim": 4 * args.width,
        "out_dim": args.width,
        "n_prototypes": 64,
        "focal_size": args.crop_size // 2,
        "n_focal_views": args.n_focal,
        "pool": args.pool,
        "seed": seed,
    }


def well_profiles(fields, obsm_key, normalize):
    return cpe.pp.aggregate(
        fields,
        OBS["well"],
        obsm_key=obsm_key,
        normalize=normalize,
        control_key="Metadata_is_negcon",
        plate_key=OBS["plate"],
    )


def score(fields, obsm_key):
    """Plate probe on the well means (z-scored over all wells, as in Table 8); retrieval on DMSO-centre-scaled wells."""
    means = well_profiles(fields, obsm_key, normalize=None)
    X = means.X
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)
    obs = means.obs
    is_control = obs["Metadata_is_negcon"].to_numpy().astype(bool)
    plate = obs[OBS["plate"]].astype(str).to_numpy()
    probe = cpe.bm.plate_prediction_probe(X, plate, is_control).set_index(["classifier", "controls"])["macro_f1"]
    wells = well_profiles(fields, obsm_key, normalize="center_scale")
    obs = wells.obs
    perturbation = obs[OBS["perturbation"]].astype(str).to_numpy()
    mean_ap = cpe.bm.map_control(wells.X, perturbation, plate, is_control, well=obs[OBS["well"]].astype(str).to_numpy())
    moa = cpe.bm.moa_accuracy(
        wells.X,
        perturbation,
        np.ones(len(obs)),
        moa=obs["Metadata_moa"].astype(str).to_numpy(),
        batch=perturbation,  # every compound is on every plate, so only NSC applies (NSCB would equal it)
        is_control=is_control,
    )
    return {
        "plate F1 linear (lower)": probe[("linear", "with")],
        "plate F1 kNN (lower)": probe[("knn", "with")],
        "mAP vs controls (higher)": mean_ap.mean_average_precision,
        "MoA NSC acc. (higher)": moa.nsc,
    }


HANDCRAFTED, SINGLE, CROSS = "handcrafted, true masks", "single-well MSN", "cross-well CWA-MSN"
SEGMENTED = "handcrafted, segmented"
PLATE_F1, MAP = "plate F1 linear (lower)", "mAP vs controls (higher)"


def run_seed(args, seed):
    """Simulate one set of plates and score the three methods on it; returns the table with a seconds column."""
    with tempfile.TemporaryDirectory() as folder:
        fields = cpe.datasets.simulate_images(
            Path(folder) / "sim.h5",
            n_moas=args.n_moas,
            perturbations_per_moa=args.per_moa,
            n_plates=4,
            n_batches=2,
            n_sites=2,
            control_wells_per_plate=4,
            image_size=args.image_size,
            effect_size=args.effect_size,
            plate_effect=args.plate_effect,
            seed=seed,
        )
        results, timings = {}, {}
        start = time.perf_counter()
        cpe.tl.handcrafted_features(fields)
        timings[HANDCRAFTED] = time.perf_counter() - start
        results[HANDCRAFTED] = score(fields, "X_handcrafted")
        start = time.perf_counter()
        # The simulator's control nuclei are 2/21 of the field across; perturbations shrink or grow them about 2x.
        # Nuclei on the border are kept, as in the true masks: the fields are small crops, not whole sites.
        diameter = 2 * args.image_size / 21
        cpe.tl.segment_cells(
            fields, nucleus_diameter=(diameter / 2, 2.5 * diameter), exclude_border=False, key_added="segmentation"
        )
        cpe.tl.handcrafted_features(fields, masks="segmentation", key_added="X_segmented")
        timings[SEGMENTED] = time.perf_counter() - start
        results[SEGMENTED] = score(fields, "X_segmented")
        for name, cross_well in [(SINGLE, False), (CROSS, True)]:
            key = "X_cwamsn" if cross_well else "X_msn"
            start = time.perf_counter()
            cpe.tl.cwamsn(
                fields,
                OBS["perturbation"],
                OBS["well"],
                plate_key=OBS["plate"],
                control_key="Metadata_is_negcon",
                cross_well=cross_well,
                normalization=args.normalization,
                max_epochs=args.epochs,
                batch_size=args.batch_size,
                model_kwargs=model_kwargs(args, seed),
                train_kwargs={"steps_per_epoch": args.steps_per_epoch, "warmup_epochs": max(1, args.epochs // 7)},
                key_added=key,
            )
            timings[name] = time.perf_counter() - start
            results[name] = score(fields, key)
        n_fields, n_wells = fields.n_obs, fields.obs[OBS["well"]].nunique()
    table = pd.DataFrame(results).T
    table["seconds"] = pd.Series(timings)
    return table, n_fields, n_wells


TARGETS = {
    "cross-well < single-well on plate F1": lambda t: t.loc[CROSS, PLATE_F1] < t.loc[SINGLE, PLATE_F1],
    "cross-well > single-well on mAP": lambda t: t.loc[CROSS, MAP] > t.loc[SINGLE, MAP],
    "cross-well > handcrafted (true masks) on mAP": lambda t: t.loc[CROSS, MAP] > t.loc[HANDCRAFTED, MAP],
    "cross-well > handcrafted (segmented) on mAP": lambda t: t.loc[CROSS, MAP] > t.loc[SEGMENTED, MAP],
}


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    tables = {}
    for seed in args.seeds:
        tables[seed], n_fields, n_wells = run_seed(args, seed)
    views = "plate on its DMSO images" if args.normalization == "plate_controls" else "view"
    print(
        f"\nSimulated per seed: {n_fields} fields ({args.image_size} px, 5 channels), {n_wells} wells, 4 plates in 2"
        f" batches, {args.n_moas * args.per_moa} compounds in {args.n_moas} MoAs + DMSO, effect size"
        f" {args.effect_size}, plate effect {args.plate_effect}.\nViT ({args.pool} pooling): patch {args.patch_size},"
        f" width {args.width}, depth {args.depth}, {args.crop_size} px views + {args.n_focal} focal"
        f" {args.crop_size // 2} px; {args.epochs} epochs x {args.steps_per_epoch} steps, batch {args.batch_size};"
        f" views standardised per {views}. Plate probe on z-scored well means; retrieval on wells centre-scaled on"
        " DMSO per plate."
    )
    for seed, table in tables.items():
        print(f"\nseed {seed}")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    scores = {seed: table.drop(columns="seconds") for seed, table in tables.items()}
    summarise_seeds(scores, TARGETS)
    if args.out is not None:
        summary_table(scores).to_csv(args.out)
        print(f"summary written to {args.out}")


def summary_table(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each method's scores over seeds as ``"mean ± sd"`` (three decimals; one seed: its value), methods as rows."""
    stacked = pd.concat(tables, names=["seed", "method"])
    grouped = stacked.groupby(level="method", sort=False)
    if len(tables) == 1:
        return grouped.mean().map(lambda value: f"{value:.3f}")
    means, deviations = grouped.mean(), grouped.std()
    return means.map(lambda value: f"{value:.3f}") + " ± " + deviations.map(lambda value: f"{value:.3f}")


if __name__ == "__main__":
    main()
