"""CellPainTR as a reusable model: trained once, then embedding a study with another feature set, without retraining.

A trained CellPainTR embeds a new study by matching its features to the model's by name (exactly, else by the
parsed CellProfiler identity, :func:`cpembed.io.match_features`): the model's features the study lacks are masked,
the study's features the model never saw are ignored, and wells of sources the model never saw get its
unknown-source token. This script measures what such a zero-shot embedding is worth.

Simulated studies (``profiles``: :func:`cpembed.datasets.simulate_profiles`; ``populations``:
:func:`cpembed.datasets.simulate_cell_populations`; preprocessed as ``benchmarks/cellpaintr_quality.py`` does, drawn
anew for every seed). Of the study's sources, sorted, the first three (A-C) are the training study and the fourth (D)
is the new study; the fifth is left out (with ``--quick``'s three sources: A-B train, C is new). Of the features,
a random 10% are *unseen* (dropped from the training study); the new study keeps a random 70% of the other, *seen*
features plus all the unseen ones, in shuffled order. The split of :func:`cpembed.bm.leak_free_split` over the wells
of A-D holds out a third of the compounds of every MoA: CellPainTR trains on A-C with the other compounds' labels,
then embeds A-C and, zero-shot, D. Rows of the table:

- the baselines of ``cellpaintr_quality.py`` (PCA, ComBat, Harmony, sphering), refit on the wells of A-D with the
  features the training study and D share;
- ``CellPainTR zero-shot [setting]``: A-C and D embedded by the model trained on A-C, D with its own features;
- ``CellPainTR zero-shot, shared features [setting]``: the same, with A-C too embedded from the features D has
  (the model masks the others), so that both studies are read through the same features;
- ``CellPainTR full features [setting]``: the same model, D with every seen feature (what the setting costs when
  nothing is missing).

Every method is scored on the held-out compounds plus DMSO of A-D, batch = source, with the Table 1 metrics of the
CellPainTR paper (Batch, Bio, Overall). Settings (``--settings``): ``default``, what :func:`cpembed.tl.cellpaintr`
trains (preset ``auto`` at the README's CPU schedule with ``--size cpu``: on these studies the ``contrastive``
preset, whose stages 2-3 mask a share of single features drawn per minibatch from U(0.2, 0.6) so that the model
learns to embed wells that lack features), and the ablations ``no feature dropout``, ``with feature dropout`` (the
same masking whatever the preset: the real studies train the ``anchored`` preset, which has none),
``feature dropout 0-0.5`` and ``source dropout 0.5`` (the unknown-source token shown for half the wells in training
instead of a tenth).

Real studies (``real``): BBBC021 (:func:`cpembed.datasets.bbbc021`, MCF-7, 516 features) and one LINCS plate
(:func:`cpembed.datasets.lincs_plate`, A549, 454 features), each normalised per plate to its DMSO wells and clipped.
CellPainTR trains on one (labels: compounds; batch: BBBC021's imaging week, none for the single LINCS plate) and
embeds the other zero-shot. Each direction reports the matched / missing / unknown feature counts and the replicate
retrieval of the target's compounds against its DMSO wells (:func:`cpembed.bm.map_control`: mean mAP, share of
compounds retrieved at corrected p < 0.05) beside a PCA of the target alone, with all its features and with only
the features the model matched.

Run: ``python benchmarks/cellpaintr_transfer.py --seeds 0 1 2`` (``--quick`` for a smoke run; ``--only`` some of
``profiles``, ``populations``, ``real``; ``--out DIR`` writes every table as CSV).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _seeds import summarise_seeds
from cellpaintr_quality import BASELINES, SIZES, add_baselines, load, score, stage_settings

import cpembed as cpe

#: Share of the study's features the model never sees (only the new study has them).
UNSEEN_SHARE = 0.1
#: Share of the seen features the new study keeps.
KEPT_SHARE = 0.7
#: Sources of the simulated training study; the next one (sorted) is the new study.
TRAINING_SOURCES = 3
#: Each CellPainTR setting: changes of stages 2-3, and training arguments. "default" is what cpe.tl.cellpaintr trains
#: (its presets' feature dropout included); the others change one thing of it.
SETTINGS = {
    "default": ({}, {}),
    "no feature dropout": ({"feature_dropout": (0.0, 0.0)}, {}),
    "with feature dropout": ({"feature_dropout": cpe.model.PRESET_FEATURE_DROPOUT}, {}),
    "feature dropout 0-0.5": ({"feature_dropout": (0.0, 0.5)}, {}),
    "source dropout 0.5": ({}, {"source_dropout": 0.5}),
}
#: Real studies: the batch key CellPainTR trains with (``None``: one plate, no batches) and the compound column.
REAL_STUDIES = {"BBBC021": ("Metadata_Batch", "Metadata_Compound"), "LINCS": (None, "Metadata_broad_sample")}
SIMULATED = ["profiles", "populations"]
#: Warnings of wells from sources the model never saw, expected for the new study.
UNKNOWN_SOURCES_WARNING = r"Sources not seen in training|adata.obs has no column"


def train(
    adata: sc.AnnData,
    batch_key: str | None,
    labels_key: str,
    unlabeled_category: str | None,
    setting: str,
    seed: int,
    args: argparse.Namespace,
) -> tuple[cpe.model.CellPainTR, float]:
    """CellPainTR trained in one setting (preset ``auto``) on ``adata``, and the seconds it took."""
    start = time.perf_counter()
    model = cpe.tl.train_cellpaintr(
        adata,
        batch_key,
        labels_key,
        unlabeled_category=unlabeled_category,
        preset="auto",
        model_kwargs={**SIZES[args.size][0], "seed": seed},
        seed=seed,
        accelerator=args.accelerator,
        enable_progress_bar=False,
        logger=False,
        **stage_settings(args.size, args.quick, SETTINGS[setting][0]),
        **SETTINGS[setting][1],
    )
    return model, time.perf_counter() - start


def embed(adata: sc.AnnData, model: cpe.model.CellPainTR, key: str) -> dict[str, int]:
    """Write ``model``'s embedding of ``adata`` to ``.obsm[key]``; the counts of matched, missing, unknown features.

    Wells of sources the model never saw are expected here (the new study's), so their warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=UNKNOWN_SOURCES_WARNING, category=UserWarning)
        cpe.tl.cellpaintr(adata, model=model, key_added=key)
    return adata.uns[key]["features"]


def obsm_key(row: str) -> str:
    return "X_" + "".join(character if character.isalnum() else "_" for character in row)


def split_features(features: pd.Index, rng: np.random.Generator) -> tuple[pd.Index, pd.Index, pd.Index]:
    """The seen features (the model's), the seen features the new study keeps, and the unseen ones."""
    order = rng.permutation(len(features))
    n_unseen = round(UNSEEN_SHARE * len(features))
    unseen, seen = features[np.sort(order[:n_unseen])], features[np.sort(order[n_unseen:])]
    kept = seen[np.sort(rng.choice(len(seen), round(KEPT_SHARE * len(seen)), replace=False))]
    return seen, kept, unseen


def run_simulated(name: str, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    """The transfer table of one simulated study and seed (baselines, CellPainTR zero-shot and with full features)."""
    adata, batch_key = load(name, seed, args.quick)
    sources = sorted(adata.obs[batch_key].unique())
    training_sources = sources[: min(TRAINING_SOURCES, len(sources) - 1)]
    new_source = sources[len(training_sources)]
    adata = adata[adata.obs[batch_key].isin([*training_sources, new_source])].copy()
    is_new = (adata.obs[batch_key] == new_source).to_numpy()
    split = cpe.bm.leak_free_split(
        adata, "Metadata_Compound", "Metadata_is_negcon", stratify_key="Metadata_moa", seed=seed
    )
    adata.obs["train_label"] = split.train_labels

    rng = np.random.default_rng(seed)
    seen, kept, unseen = split_features(adata.var_names, rng)
    new_features = kept.append(unseen)[rng.permutation(len(kept) + len(unseen))]
    training = adata[~is_new, seen].copy()
    new_studies = {"zero-shot": adata[is_new, new_features].copy(), "full features": adata[is_new, seen].copy()}
    shared = adata[:, kept].copy()
    add_baselines(shared, batch_key)

    methods, train_seconds, feature_counts = dict(BASELINES), {}, {}
    # How the training study is embedded beside the new one: with every feature, or with those the new study has.
    training_studies = {
        "zero-shot": training,
        "full features": training,
        "zero-shot, shared features": training[:, kept],
    }
    new_studies["zero-shot, shared features"] = new_studies["zero-shot"]
    for setting in args.settings:
        model, seconds = train(training, batch_key, "train_label", "unlabeled", setting, seed, args)
        for kind, new_study in new_studies.items():
            row = f"CellPainTR {kind} [{setting}]"
            reference = training_studies[kind].copy()
            embed(reference, model, obsm_key(row))
            feature_counts[kind] = embed(new_study, model, obsm_key(row))
            embedding = np.empty((shared.n_obs, reference.obsm[obsm_key(row)].shape[1]), dtype=np.float32)
            embedding[~is_new] = reference.obsm[obsm_key(row)]
            embedding[is_new] = new_study.obsm[obsm_key(row)]
            shared.obsm[obsm_key(row)] = embedding
            methods[obsm_key(row)] = row
            train_seconds[row] = seconds
    table = score(shared, batch_key, methods, split.scored)
    table["train_s"] = pd.Series(train_seconds)

    print(
        f"\n{name}, seed {seed}: train on {', '.join(map(str, training_sources))} ({int((~is_new).sum())} wells x "
        f"{len(seen)} features), embed {new_source} ({int(is_new.sum())} wells); {len(split.heldout)} compounds "
        f"held out; baselines on the {len(kept)} shared features"
    )
    for kind, counts in feature_counts.items():
        print(f"  {kind}: " + ", ".join(f"{what} {counts[what]}" for what in ("matched", "missing", "unknown")))
    print(table.round(3).to_string())
    if args.out is not None:
        table.to_csv(args.out / f"{name}_{args.size}_transfer_seed{seed}.csv")
    return table


def load_real_studies() -> dict[str, sc.AnnData]:
    """BBBC021 as ``load`` preprocesses it, and the LINCS plate preprocessed by the same calls."""
    bbbc021, _ = load("bbbc021", seed=0, quick=False)
    lincs = cpe.datasets.lincs_plate()
    cpe.pp.drop_nonfinite(lincs, how="wells")
    cpe.pp.control_variation_filter(lincs, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.normalize_to_controls(lincs, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.clip_quantiles(lincs)
    return {"BBBC021": bbbc021, "LINCS": lincs}


def replicate_retrieval(embedding: np.ndarray, adata: sc.AnnData, compound_key: str, seed: int) -> dict[str, float]:
    """Mean mAP of the compounds' replicates against the DMSO wells of their plate, and the share retrieved."""
    obs = adata.obs
    result = cpe.bm.map_control(
        np.asarray(embedding),
        obs[compound_key].astype(str).to_numpy(),
        obs["Metadata_Plate"].astype(str).to_numpy(),
        obs["Metadata_is_negcon"].to_numpy(dtype=bool),
        well=obs["Metadata_Well"].astype(str).to_numpy(),
        seed=seed,
    )
    return {"mAP": result.mean_average_precision, "retrieved": result.fraction_retrieved}


def pca(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    return sc.pp.pca(matrix, n_comps=min(50, matrix.shape[0] - 1, matrix.shape[1] - 1))


def run_real(studies: dict[str, sc.AnnData], seed: int, args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Each direction between BBBC021 and LINCS: CellPainTR zero-shot on the target beside PCAs of the target."""
    tables = {}
    for source_name, target_name in (("BBBC021", "LINCS"), ("LINCS", "BBBC021")):
        source, target = studies[source_name], studies[target_name].copy()
        batch_key, labels_key = REAL_STUDIES[source_name]
        target_compounds = REAL_STUDIES[target_name][1]
        rows = {}
        for setting in args.settings:
            model, seconds = train(source, batch_key, labels_key, None, setting, seed, args)
            key = obsm_key(f"zero-shot {setting}")
            counts = embed(target, model, key)
            rows[f"CellPainTR zero-shot [{setting}]"] = {
                **replicate_retrieval(target.obsm[key], target, target_compounds, seed),
                **{what: counts[what] for what in ("matched", "missing", "unknown")},
                "train_s": seconds,
            }
        match = cpe.io.match_features(source.var_names, target.var_names)
        matched_columns = np.sort(match.columns[match.columns >= 0])
        rows["PCA (all features)"] = replicate_retrieval(pca(target.X), target, target_compounds, seed)
        rows["PCA (matched features)"] = replicate_retrieval(
            pca(target.X[:, matched_columns]), target, target_compounds, seed
        )
        direction = f"{source_name} -> {target_name}"
        table = pd.DataFrame.from_dict(rows, orient="index")
        tables[direction] = table.astype({what: "Int64" for what in ("matched", "missing", "unknown")})
        print(f"\n{direction}, seed {seed}: {match.describe()}")
        print(tables[direction].round(3).to_string())
    if args.out is not None:
        pd.concat(tables, names=["direction", "method"]).to_csv(args.out / f"real_{args.size}_transfer_seed{seed}.csv")
    return tables


def transfer_targets() -> dict:
    """The targets of the default's zero-shot embeddings against Harmony refit on every source."""
    zero_shot, shared = "CellPainTR zero-shot [default]", "CellPainTR zero-shot, shared features [default]"

    def above(model: str, column: str, strictly: bool):
        def check(table: pd.DataFrame) -> bool:
            ours, theirs = table.loc[model, column], table.loc["Harmony", column]
            return ours > theirs if strictly else ours >= theirs

        return check

    return {
        f"overall({zero_shot}) > overall(Harmony)": above(zero_shot, "overall_score", strictly=True),
        f"overall({shared}) > overall(Harmony)": above(shared, "overall_score", strictly=True),
        f"batch({shared}) >= batch(Harmony)": above(shared, "batch_score", strictly=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per stage and small simulated studies")
    parser.add_argument("--only", nargs="+", choices=[*SIMULATED, "real"], help="studies to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    parser.add_argument("--size", choices=list(SIZES), default="cpu", help="CellPainTR size and schedule")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["default", "no feature dropout"])
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of CellPainTR")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--out", type=Path, help="folder for the tables as CSV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    studies = args.only or [*SIMULATED, "real"]
    simulated = {
        name: {seed: run_simulated(name, seed, args) for seed in args.seeds} for name in studies if name in SIMULATED
    }
    real = {}
    if "real" in studies:
        real_studies = load_real_studies()
        runs = {seed: run_real(real_studies, seed, args) for seed in args.seeds}
        real = {direction: {seed: runs[seed][direction] for seed in args.seeds} for direction in runs[args.seeds[0]]}
    summary = summarise(simulated, real, args.size, with_targets="default" in args.settings)
    print(summary)
    if args.out is not None:
        (args.out / f"summary_{args.size}.txt").write_text(summary)
        pd.concat(
            {name: seed_means(tables) for name, tables in {**simulated, **real}.items()}, names=["study", "method"]
        ).round(3).to_csv(args.out / f"summary_{args.size}_means.csv")


def seed_means(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Mean of every row and column over the seeds' tables."""
    return pd.concat(tables.values()).groupby(level=0, sort=False).mean()


def summarise(
    simulated: dict[str, dict[int, pd.DataFrame]],
    real: dict[str, dict[int, pd.DataFrame]],
    size: str,
    with_targets: bool,
) -> str:
    """Mean and spread over seeds of every table, and the seeds meeting the targets, as printed text."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        for name, tables in simulated.items():
            summarise_seeds(tables, transfer_targets() if with_targets else {}, f"({name}, {size} size, transfer)")
        for direction, tables in real.items():
            summarise_seeds(tables, {}, f"({direction})")
    return text.getvalue()


if __name__ == "__main__":
    main()
