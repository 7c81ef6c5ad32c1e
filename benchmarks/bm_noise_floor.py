"""How much the leak-free benchmark scores move for reasons other than the method: the PCA baseline on BBBC021.

Two differences that say nothing about batch correction are measured over the seeds of the leak-free split of
``cellpaintr_quality.py`` (each seed holds out other compounds):

- the same 50-component PCA computed by three solvers: scanpy's default ARPACK, scikit-learn's exact full SVD and
  its randomized solver, which approximates the same components (what ``PCA(svd_solver="auto")`` picks for large
  matrices). A difference in score between them says how much a small change of an embedding moves the benchmark;
- the number of components of the PCA (16 to 100), a setting every PCA-based embedding shares. Beside Overall, the
  BBBC021 NSCB of the held-out compounds is reported, since the two move in opposite directions with it;
- the projection the ``anchored`` CellPainTR starts from when the controls are known: the PCA whitened by the DMSO
  wells' Ledoit-Wolf covariance (16 to 64 components), what the model scores before it trains, and, tried beside
  it, the leading principal components of the 64 whitened ones (directions where the wells vary most against the
  controls).

Each embedding's paired difference from the 50-component ARPACK PCA (the benchmark's baseline) is summarised over the
seeds: mean, its standard error, the seeds at or above the baseline, and the sum of the two mean differences (Overall
and NSCB), which, averaged over both preprocessings (``--preprocessing paper`` and ``jump``, as in
``cellpaintr_quality.py``), picked the width of the ``anchored`` preset's whitened projection. A difference between
two methods smaller than the spread of the first kind is not a difference the benchmark can see.
Run: ``python benchmarks/bm_noise_floor.py --seeds 0 1 2 3 4 5 6 7 8 9 10 11`` (about a minute).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scanpy as sc
from cellpaintr_quality import load, nsc_nscb, score
from sklearn.decomposition import PCA

import cpembed as cpe
from cpembed.model._cellpaintr import _pca_projection

SOLVERS = ("arpack", "full", "randomized")
COMPONENTS = (16, 32, 50, 64, 100)
WHITENED_COMPONENTS = (16, 20, 24, 28, 32, 40, 64)
#: Leading principal components kept of the 64 whitened ones.
REDUCED_COMPONENTS = (16, 24)
BASELINE = "50 components, arpack"


def embeddings(matrix: np.ndarray, controls: np.ndarray) -> dict[str, np.ndarray]:
    """The 50-component PCA by each solver, scanpy's PCA with each number of components, and the projection
    CellPainTR fits with ``projection="control_whitened"``."""
    found = {f"50 components, {solver}": _pca(matrix, 50, solver) for solver in SOLVERS}
    found |= {f"{n} components, arpack": _pca(matrix, n, "arpack") for n in COMPONENTS if n != 50}
    for n in WHITENED_COMPONENTS:
        center, loadings, _ = _pca_projection(matrix, n, seed=0, controls=controls)
        found[f"{n} components, whitened by the controls"] = ((matrix - center) @ loadings).astype(np.float32)
    whitened = found[f"{max(WHITENED_COMPONENTS)} components, whitened by the controls"]
    for n in REDUCED_COMPONENTS:
        found[f"{n} components of the {whitened.shape[1]} whitened"] = _pca(whitened, n, "full")
    return found


def paired_margins(scores: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per embedding and score: mean paired difference from the baseline over seeds, its standard error, the seeds
    at or above the baseline (of those where both are defined); then the sum of the mean differences."""
    columns = {}
    for name, table in scores.items():
        difference = table.sub(table.loc[BASELINE], axis=1)
        defined = difference.notna().sum(axis=1)
        columns[(name, "difference")] = difference.mean(axis=1)
        columns[(name, "standard error")] = difference.std(axis=1) / np.sqrt(defined)
        columns[(name, "seeds >= baseline")] = (difference >= 0).sum(axis=1).astype(str) + " of " + defined.astype(str)
    margins = pd.DataFrame(columns)
    margins["sum of differences"] = sum(margins[(name, "difference")] for name in scores)
    return margins.drop(index=BASELINE)


def _pca(matrix: np.ndarray, n_components: int, solver: str) -> np.ndarray:
    if solver == "arpack":
        return sc.pp.pca(matrix, n_comps=n_components)
    return PCA(n_components, svd_solver=solver, random_state=0).fit_transform(matrix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(12)), help="leak-free splits")
    parser.add_argument("--preprocessing", choices=["paper", "jump"], default="paper", help="as cellpaintr_quality.py")
    args = parser.parse_args()
    adata, batch_key = load("bbbc021", seed=0, quick=False, preprocessing=args.preprocessing)
    print(f"BBBC021, {args.preprocessing} preprocessing: {adata.n_obs} wells x {adata.n_vars} features\n")
    controls = adata.obs["Metadata_is_negcon"].to_numpy(dtype=bool)
    for name, embedding in embeddings(np.asarray(adata.X, dtype=np.float32), controls).items():
        adata.obsm[name] = embedding
    overall, nscb = {}, {}
    methods = {name: name for name in adata.obsm}
    for seed in args.seeds:
        split = cpe.bm.leak_free_split(
            adata, "Metadata_Compound", "Metadata_is_negcon", stratify_key="Metadata_moa", seed=seed
        )
        overall[seed] = score(adata, batch_key, methods, split.scored)["overall_score"]
        nscb[seed] = nsc_nscb(adata, methods, split.heldout)["NSCB"]
    table = pd.DataFrame(overall)
    print("Leak-free Overall on BBBC021, one column per seed:")
    print(table.round(3).to_string())
    print("\nNSCB of the held-out compounds, one column per seed:")
    print(pd.DataFrame(nscb).round(3).to_string())
    print("\nMean NSCB over seeds:")
    print(pd.DataFrame(nscb).mean(axis=1).round(4).to_string())
    solvers = table.loc[[f"50 components, {solver}" for solver in SOLVERS]]
    print("\nMean over seeds:")
    print(table.mean(axis=1).round(4).to_string())
    print(f"\nPaired difference from {BASELINE} over seeds:")
    margins = paired_margins({"Overall": table, "NSCB": pd.DataFrame(nscb)})
    print(margins.to_string(float_format=lambda value: f"{value:.4f}"))
    spread = solvers.max() - solvers.min()
    print(
        f"\nSame PCA, three solvers: largest difference on one seed {spread.max():.3f}, mean difference "
        f"{spread.mean():.4f}; difference of the seed means {np.ptp(solvers.mean(axis=1)):.4f}"
    )


if __name__ == "__main__":
    main()
