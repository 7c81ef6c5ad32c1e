"""CellPainTR quality against the baselines, leak-free, on real data and on two independent simulator families.

Data sets (each repeated per seed; the simulated studies are drawn anew for every seed):

- ``bbbc021``: the bundled real BBBC021 profiles (batch = imaging week; 38 compounds, 12 MoAs). BBBC021 NSC and NSCB
  1-NN MoA accuracies are reported beside the benchmark scores.
- ``profiles``: :func:`cpembed.datasets.simulate_profiles`, latent biology seen through source-specific loadings
  and sinh-arcsinh bends (batch = source).
- ``populations``: :func:`cpembed.datasets.simulate_cell_populations`, well means of cell-state mixtures whose
  proportions compounds shift, measured through source-specific response curves (batch = source).

Protocol (:func:`cpembed.bm.leak_free_split`): a third of the compounds of every MoA is held out. CellPainTR trains
its label stages on the other compounds' labels (the held-out wells are unlabelled there), and every method, the
baselines included, is scored on the held-out compounds plus the DMSO wells with the metrics of the CellPainTR
paper's Table 1 (Batch, Bio, Overall); MoA is never a training label. ``--leaky`` adds the paper's protocol (all
wells, compounds the model was trained on included), labelled as such.

Methods: PCA of the preprocessed profiles (Baseline), ComBat, Harmony, sphering, and CellPainTR after each stage in
two settings: ``auto`` (cpembed's default: the ``contrastive`` preset where sources share compounds, the PCA-anchored
``anchored`` preset where they do not) and ``paper`` (the paper's CLS embedding and supervised contrastive stages);
``--settings`` adds the presets themselves and the ablations of ``VARIANTS``, each one change of a preset.
``--size cpu`` is the README's CPU
configuration, ``--size paper`` the paper's model (d_model 256, 4 blocks; wants a GPU). ``--preprocessing jump``
preprocesses with :func:`cpembed.pp.recipe_jump`, as ``cpembed run`` does, instead of the paper's steps.

Run: ``python benchmarks/cellpaintr_quality.py --seeds 0 1 2`` (``--quick`` for a smoke run; ``--only`` one data set;
``--jobs`` data set x seed runs in parallel processes; ``--out DIR`` writes every table as CSV).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _seeds import at_least, summarise_seeds

import cpembed as cpe
from cpembed._report import CellPainTRSettings

#: Model size and stage schedules: the README's CPU configuration (the one ``cpembed run`` trains) and the paper's
#: model with the preset's own schedule.
SIZES = {
    "cpu": (CellPainTRSettings().model_kwargs(), CellPainTRSettings().train_kwargs()),
    "paper": ({"d_model": 256, "n_layers": 4}, {}),
}
#: The anchored preset's architecture without the controls: a plain PCA projection as wide as the model.
PCA_PROJECTION = {"projection": "pca", "n_latent": None}
#: CellPainTR settings: a preset, then changes of the architecture and of stages 2-3. "auto" is what
#: cpe.tl.cellpaintr does by default ("contrastive" where sources share compounds, else "anchored"); the settings
#: with a comma change one thing of a preset (the ablations behind the defaults).
VARIANTS = {
    "auto": ("auto", {}, {}),
    "paper": ("paper", {}, {}),
    "contrastive": ("contrastive", {}, {}),
    "anchored": ("anchored", {}, {}),
    "contrastive, structure 10": ("contrastive", {}, {"structure_weight": 10.0}),
    "paper, mean read-out": ("paper", {"readout": "mean"}, {}),
    "anchored, SupCon": ("anchored", {}, {"objective": "supcon"}),
    "anchored, CLS read-out": ("anchored", {"readout": "cls"}, {}),
    "anchored, align wells": ("anchored", {}, {"alignment": "wells"}),
    "anchored, align distributions": ("anchored", PCA_PROJECTION, {"stage3": {"alignment": "distributions"}}),
    "auto, d_model 32": ("auto", {"d_model": 32}, {}),
    "auto, d_model 16": ("auto", {"d_model": 16}, {}),
    "anchored, n_latent 16": ("anchored", {**PCA_PROJECTION, "n_latent": 16}, {}),
    "anchored, n_latent 32": ("anchored", {**PCA_PROJECTION, "n_latent": 32}, {}),
    "anchored, PCA projection": ("anchored", PCA_PROJECTION, {}),
    "anchored, whitened 32": ("anchored", {"n_latent": 32}, {}),
    "auto, no feature dropout": ("auto", {}, {"feature_dropout": (0.0, 0.0)}),
    "auto, feature dropout": ("auto", {}, {"feature_dropout": cpe.model.PRESET_FEATURE_DROPOUT}),
    "auto, paper learning rate": (
        "auto",
        {},
        {f"stage{stage}": {"lr": cpe.model.PAPER_STAGES[stage].lr} for stage in (2, 3)},
    ),
}
SHOWN = ["batch_score", "bio_score", "overall_score"]
TABLE1_METRICS = [*cpe.bm.CELLPAINTR_SCORES.batch_metrics, *cpe.bm.CELLPAINTR_SCORES.bio_metrics]
BASELINES = {"X_pca": "Baseline (PCA)", "X_combat": "ComBat", "X_harmony": "Harmony", "X_sphering": "Sphering"}
STAGE_NAMES = {1: "(1)", 2: "(2)", 3: ""}
SIMULATION = {
    "n_sources": 5, "n_batches_per_source": 1, "n_plates_per_batch": 2, "plate_format": 96, "n_compounds": 100,
    "n_moas": 10, "n_features": 300, "shared_compound_fraction": 0.5,
}  # fmt: skip
QUICK_SIMULATION = {**SIMULATION, "n_sources": 3, "n_plates_per_batch": 1, "n_compounds": 40, "n_moas": 5}


def load(
    name: str,
    seed: int,
    quick: bool,
    plates: int = SIMULATION["n_plates_per_batch"],
    preprocessing: str = "paper",
) -> tuple[sc.AnnData, str]:
    """A data set, preprocessed, and its batch key.

    ``plates``: plates per source of the simulated studies (96 wells each). ``preprocessing``: ``"paper"``, as the
    CellPainTR paper does (per-plate robust MAD to DMSO, clipping), or ``"jump"``, :func:`cpembed.pp.recipe_jump`
    (what ``cpembed run`` does; it also drops redundant features).
    """
    if name == "bbbc021":
        adata, batch_key = cpe.datasets.bbbc021(), "Metadata_Batch"
    else:
        simulate = {"profiles": cpe.datasets.simulate_profiles, "populations": cpe.datasets.simulate_cell_populations}
        design = QUICK_SIMULATION if quick else {**SIMULATION, "n_plates_per_batch": plates}
        adata = simulate[name](**design, seed=seed)
        adata.obs["Metadata_Concentration"] = 1.0
        batch_key = "Metadata_Source"
    # The simulators leave NaN in about 3% of the wells, scattered over the features: dropping the features would
    # keep ever fewer of them as the studies grow (13 of 300 at 30k wells), so the wells are dropped instead.
    cpe.pp.drop_nonfinite(adata, how="wells")
    if preprocessing == "jump":
        cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
        return adata, batch_key
    cpe.pp.control_variation_filter(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.clip_quantiles(adata)
    return adata, batch_key


def add_baselines(adata: sc.AnnData, batch_key: str) -> None:
    adata.obsm["X_pca"] = sc.pp.pca(np.asarray(adata.X, dtype=np.float32), n_comps=min(50, adata.n_vars - 1))
    cpe.tl.combat(adata, batch_key)
    cpe.tl.harmony(adata, batch_key)
    cpe.tl.sphering(adata, "Metadata_is_negcon", method="PCA")


def add_cellpaintr(
    adata: sc.AnnData, batch_key: str, setting: str, size: str, seed: int, quick: bool, accelerator: str
) -> float:
    """Train CellPainTR in one setting on the split's training labels; write its stage embeddings; the seconds."""
    model_kwargs = SIZES[size][0]
    preset, architecture, stage_changes = VARIANTS[setting]
    stages = stage_settings(size, quick, stage_changes)
    start = time.perf_counter()
    cpe.tl.cellpaintr(
        adata,
        batch_key,
        "train_label",
        unlabeled_category="unlabeled",
        control_key="Metadata_is_negcon",
        preset=preset,
        model_kwargs={**model_kwargs, **architecture, "seed": seed},
        key_added=_key(setting),
        stage_embeddings=True,
        seed=seed,
        accelerator=accelerator,
        enable_progress_bar=False,
        logger=False,
        **stages,
    )
    return time.perf_counter() - start


def stage_settings(size: str, quick: bool, stage_changes: dict) -> dict[str, dict]:
    """The stage schedules of ``size`` (one epoch each with ``quick``), with ``stage_changes`` in stages 2-3.

    Keys ``"stage2"`` / ``"stage3"`` of ``stage_changes`` hold changes of that stage alone.
    """
    stages = SIZES[size][1]
    if quick:
        stages = {f"stage{stage}": {"max_epochs": 1, "warmup_epochs": 0} for stage in (1, 2, 3)}
    per_stage = {key: value for key, value in stage_changes.items() if key.startswith("stage")}
    both = {key: value for key, value in stage_changes.items() if key not in per_stage}
    return {
        f"stage{stage}": {
            **stages.get(f"stage{stage}", {}),
            **(both if stage > 1 else {}),
            **per_stage.get(f"stage{stage}", {}),
        }
        for stage in (1, 2, 3)
    }


def _key(setting: str) -> str:
    return "X_cellpaintr_" + "".join(character if character.isalnum() else "_" for character in setting)


def method_names(settings: list[str]) -> dict[str, str]:
    names = dict(BASELINES)
    for setting in settings:
        for stage, suffix in STAGE_NAMES.items():
            key = _key(setting) + (f"_stage{stage}" if stage < 3 else "")
            names[key] = f"CellPainTR{suffix} [{setting}]"
    return names


def score(adata: sc.AnnData, batch_key: str, methods: dict[str, str], wells: np.ndarray | None) -> pd.DataFrame:
    """Table 1 scores; ``wells`` given: the leak-free protocol (those wells, controls kept), else the paper's."""
    table = cpe.bm.benchmark(
        adata,
        list(methods),
        batch_key=batch_key,
        label_key="Metadata_moa",
        perturbation_key="Metadata_Compound",
        plate_key="Metadata_Plate",
        control_key="Metadata_is_negcon",
        well_key="Metadata_Well",
        wells=wells,
        exclude_controls=wells is None,
        metrics=TABLE1_METRICS,
        progress=False,
    )
    return table.rename(index=methods)[SHOWN]


def nsc_nscb(adata: sc.AnnData, methods: dict[str, str], heldout: list[str]) -> pd.DataFrame:
    """BBBC021 NSC / NSCB MoA accuracy of the held-out compounds' treatments (neighbours: all other compounds)."""
    obs = adata.obs
    rows = {}
    for key, name in methods.items():
        result = cpe.bm.moa_accuracy(
            np.asarray(adata.obsm[key]),
            obs["Metadata_Compound"].to_numpy(),
            obs["Metadata_Concentration"].to_numpy(),
            moa=obs["Metadata_moa"].to_numpy(),
            batch=obs["Metadata_Batch"].to_numpy(),
            is_control=obs["Metadata_is_negcon"].to_numpy(),
        )
        queries = result.per_treatment[result.per_treatment["compound"].isin(heldout)]
        rows[name] = {"NSC": queries["nsc_correct"].mean(), "NSCB": queries["nscb_correct"].mean()}
    return pd.DataFrame.from_dict(rows, orient="index").astype(float)


def run(name: str, seed: int, args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Every method on one data set and seed: the leak-free table (and the paper's protocol with ``--leaky``).

    The baselines are scored first, then each CellPainTR setting as soon as it is trained; with ``--out`` the tables
    are written after each, so an interrupted sweep keeps what it finished.
    """
    torch.set_num_threads(args.threads)
    adata, batch_key = load(name, seed, args.quick, args.plates, args.preprocessing)
    split = cpe.bm.leak_free_split(
        adata, "Metadata_Compound", "Metadata_is_negcon", stratify_key="Metadata_moa", seed=seed
    )
    adata.obs["train_label"] = split.train_labels
    add_baselines(adata, batch_key)
    protocols = {"leak-free": split.scored, **({"paper protocol (leaky)": None} if args.leaky else {})}
    tables = {protocol: [] for protocol in protocols}
    for setting in [None, *args.settings]:
        methods = dict(BASELINES)
        if setting is not None:
            wall = add_cellpaintr(adata, batch_key, setting, args.size, seed, args.quick, args.accelerator)
            methods = method_names([setting])
            methods = {key: label for key, label in methods.items() if key not in BASELINES}
        for protocol, wells in protocols.items():
            table = score(adata, batch_key, methods, wells)
            if name == "bbbc021":
                table = table.join(nsc_nscb(adata, methods, split.heldout))
            if setting is not None:
                table.loc[f"CellPainTR [{setting}]", "train_s"] = wall
            tables[protocol].append(table)
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                slug = "leaky" if wells is None else "leakfree"
                stem = name if args.preprocessing == "paper" else f"{name}_{args.preprocessing}"
                pd.concat(tables[protocol]).to_csv(args.out / f"{stem}_{args.size}_{slug}_seed{seed}.csv")
    tables = {protocol: pd.concat(parts) for protocol, parts in tables.items()}
    held = len(split.heldout)
    print(f"\n{name}, seed {seed}: {adata.n_obs} wells x {adata.n_vars} features, {held} compounds held out")
    print(tables["leak-free"].round(3).to_string())
    return tables


def targets(name: str, setting: str) -> dict:
    model = f"CellPainTR [{setting}]"
    if name == "bbbc021":
        pca = BASELINES["X_pca"]
        return {
            f"overall({model}) >= overall(PCA)": lambda t: at_least(
                t.at[model, "overall_score"], t.at[pca, "overall_score"]
            ),
            f"NSCB({model}) >= NSCB(PCA)": lambda t: at_least(t.at[model, "NSCB"], t.at[pca, "NSCB"]),
        }
    return {
        f"overall({model}) > overall(Harmony)": lambda t: at_least(
            t.at[model, "overall_score"], t.at["Harmony", "overall_score"], strictly=True
        ),
        f"batch({model}) >= batch(Harmony)": lambda t: at_least(
            t.at[model, "batch_score"], t.at["Harmony", "batch_score"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per stage and small simulated studies")
    parser.add_argument("--only", nargs="+", choices=["bbbc021", "profiles", "populations"], help="data sets to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--size", choices=list(SIZES), default="cpu", help="CellPainTR size and schedule")
    parser.add_argument("--settings", nargs="+", choices=list(VARIANTS), default=["auto", "paper"])
    parser.add_argument("--leaky", action="store_true", help="also score with the paper's (leaky) protocol")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of CellPainTR")
    parser.add_argument("--jobs", type=int, default=1, help="data set x seed runs in parallel processes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per run")
    parser.add_argument("--plates", type=int, default=SIMULATION["n_plates_per_batch"], help="plates per source")
    parser.add_argument(
        "--preprocessing", choices=["paper", "jump"], default="paper", help="the paper's, or cpe.pp.recipe_jump"
    )
    parser.add_argument("--out", type=Path, help="folder for the tables as CSV")
    args = parser.parse_args()
    names = args.only or ["bbbc021", "profiles", "populations"]
    runs = [(name, seed) for name in names for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {key: pool.submit(run, *key, args) for key in runs}
        results = {key: future.result() for key, future in futures.items()}
    for name in names:
        for protocol in results[runs[0]]:
            tables = {seed: results[(name, seed)][protocol] for seed in args.seeds}
            checks = {}
            for setting in [setting for setting in ("auto", "paper") if setting in args.settings]:
                checks.update(targets(name, setting))
            summarise_seeds(
                tables, checks, f"({name}, {args.preprocessing} preprocessing, {args.size} size, {protocol})"
            )


if __name__ == "__main__":
    main()
