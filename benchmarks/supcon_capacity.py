"""Compound-labelled supervised contrastive learning and MoA retrieval across compounds on BBBC021, by encoder size.

CellPainTR's contrastive stages pull together the wells of a compound and push apart all other wells, those of other
compounds with the same MoA included. NSC and NSCB (:func:`cpembed.bm.moa_accuracy`) score the opposite: whether a
treatment's nearest neighbour among *other* compounds shares its MoA. This script isolates the objective from the
network: it trains a linear map and a 3-layer MLP to 64 dimensions with the same loss
(:func:`cpembed.module.supervised_contrastive_loss`, temperature 0.07, labels = compound, DMSO as one more label) on
the preprocessed BBBC021 features of ``cellpaintr_quality.py``, and prints NSC/NSCB after several numbers of steps,
beside the features themselves and their 64-component PCA. Scores that fall as training goes on, for both
encoders, mean that the objective itself trades the MoA neighbourhoods between compounds for the separation of
compounds (38 of them, about 8 treated wells each), whatever network is trained with it.

Run: ``python benchmarks/supcon_capacity.py --seeds 0 1 2`` (about 10 s per seed on a 2-core CPU).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _seeds import summarise_seeds
from cellpaintr_quality import nsc_nscb, preprocess
from torch import nn

import cpembed as cpe
from cpembed.module import supervised_contrastive_loss

DIM, BATCH_SIZE, LR, TEMPERATURE = 64, 64, 1e-3, 0.07
STEPS = (50, 200, 1000)


def encoders(n_features: int) -> dict[str, nn.Module]:
    return {
        "linear": nn.Linear(n_features, DIM),
        "MLP": nn.Sequential(
            nn.Linear(n_features, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, DIM)
        ),
    }


def train_and_score(adata: sc.AnnData, name: str, encoder: nn.Module, seed: int) -> dict[str, dict[str, float]]:
    """Train ``encoder`` with SupCon on compound labels; NSC/NSCB of its embedding after each of :data:`STEPS`."""
    x = torch.from_numpy(np.asarray(adata.X, dtype=np.float32))
    labels = torch.from_numpy(pd.factorize(adata.obs["Metadata_Compound"])[0])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=LR, weight_decay=0.0)
    rows = {}
    for step in range(1, max(STEPS) + 1):
        batch = torch.randint(len(x), (BATCH_SIZE,), generator=generator)
        loss = supervised_contrastive_loss(encoder(x[batch]), labels[batch], temperature=TEMPERATURE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in STEPS:
            with torch.no_grad():
                rows[f"{name} SupCon, {step} steps"] = nsc_nscb(adata, encoder(x).numpy())
    return rows


def run_seed(adata: sc.AnnData, seed: int) -> pd.DataFrame:
    torch.manual_seed(seed)
    matrix = np.asarray(adata.X, dtype=np.float32)
    rows = {
        "features (Baseline)": nsc_nscb(adata, matrix),
        f"PCA, {DIM} components": nsc_nscb(adata, sc.pp.pca(matrix, n_comps=DIM, random_state=seed)),
    }
    for name, encoder in encoders(adata.n_vars).items():
        rows.update(train_and_score(adata, name, encoder, seed))
    return pd.DataFrame.from_dict(rows, orient="index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (initial weights, batches)")
    args = parser.parse_args()
    adata = preprocess(cpe.datasets.bbbc021())
    print(f"BBBC021: {adata.n_obs} wells x {adata.n_vars} features; SupCon on compound labels, batch {BATCH_SIZE}")
    tables = {}
    for seed in args.seeds:
        tables[seed] = run_seed(adata, seed)
        print(f"\nseed {seed}")
        print(tables[seed].round(3).to_string())
    summarise_seeds(tables, {})


if __name__ == "__main__":
    main()
