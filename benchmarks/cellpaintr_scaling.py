"""How CellPainTR's leak-free quality grows with the number of training wells, against the baselines.

Runs ``cellpaintr_quality.py``'s protocol on simulated studies of 5 sources with more and more 96-well plates per
source (the compounds stay the same, so more plates mean more replicates and more cross-source pairs), and draws the
Overall score (CellPainTR paper, Table 1) of every method against the number of wells. The table is printed and,
with ``--out``, written as ``scaling.csv`` beside the figure ``scaling.png``.

Run: ``python benchmarks/cellpaintr_scaling.py --plates 2 6 20 --jobs 2 --out benchmarks/output`` (960, 2,880 and 9,600
wells at the README's CPU size; ``--size paper --accelerator gpu`` for the paper's model).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import torch
from cellpaintr_quality import SIMULATION, SIZES, run

SCORES = ["batch_score", "bio_score", "overall_score"]


def study(name: str, seed: int, plates: int, args: argparse.Namespace) -> pd.DataFrame:
    """The leak-free table of one simulated study, with the number of wells."""
    quality = argparse.Namespace(
        **vars(args), quick=False, leaky=False, out=None, settings=["auto"], preprocessing="paper"
    )
    quality.plates = plates
    table = run(name, seed, quality)["leak-free"][SCORES]
    wells = SIMULATION["n_sources"] * plates * 96
    return table.assign(data=name, seed=seed, wells=wells).rename_axis("method").reset_index()


def sweep(args: argparse.Namespace) -> pd.DataFrame:
    """One leak-free table per data set, seed and plate count (``args.jobs`` in parallel), stacked."""
    studies = [(name, seed, plates) for name in args.only for seed in args.seeds for plates in args.plates]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(study, *key, args) for key in studies]
        return pd.concat([future.result() for future in futures], ignore_index=True)


def draw(results: pd.DataFrame, path: Path) -> None:
    names = results["data"].unique()
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        data = results[results["data"] == name]
        means = data.groupby(["method", "wells"], sort=False)["overall_score"].mean().unstack("method")
        for method in means.columns:
            if method.startswith("CellPainTR("):
                continue  # the stage snapshots CellPainTR(1) and (2) are in the table, not the figure
            width = 2.5 if method.startswith("CellPainTR") else 1.0
            ax.plot(means.index, means[method], marker="o", label=method, linewidth=width)
        ax.set_xscale("log")
        ax.set_xlabel("training wells")
        ax.set_ylabel("Overall (leak-free)")
        ax.set_title(name)
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["profiles", "populations"], default=["profiles", "populations"])
    parser.add_argument("--plates", type=int, nargs="+", default=[2, 6, 20], help="96-well plates per source")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", choices=list(SIZES), default="cpu")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per study")
    parser.add_argument("--jobs", type=int, default=1, help="studies trained in parallel processes")
    parser.add_argument("--out", type=Path, help="folder for scaling.csv and scaling.png")
    args = parser.parse_args()
    out = args.__dict__.pop("out")
    results = sweep(args)
    print(results.round(3).to_string(index=False))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / "scaling.csv", index=False)
        draw(results, out / "scaling.png")


if __name__ == "__main__":
    main()
