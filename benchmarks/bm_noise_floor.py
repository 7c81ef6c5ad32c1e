"""How much the leak-free benchmark scores move for reasons other than the method: the PCA baseline on BBBC021.

Two differences that say nothing about batch correction are measured over the seeds of the leak-free split of
``cellpaintr_quality.py`` (each seed holds out other compounds):

- the same 50-component PCA computed by three solvers: scanpy's default ARPACK, scikit-learn's exact full SVD and
  its randomized solver, which approximates the same components (what ``PCA(svd_solver="auto")`` picks for large
  matrices). A difference in score between them says how much a small change of an embedding moves the benchmark;
- the number of components of the PCA (16 to 100), a setting every PCA-based embedding shares. Beside Overall, the
  BBBC021 NSCB of the held-out compounds is reported, since the two move in opposite directions with it;
- the projection the ``anchored`` CellPainTR starts from when the controls are known: the PCA whitened by the DMSO
  wells' Ledoit-Wolf covariance (32 and 64 components), what the model scores before it trains.

A difference between two methods smaller than the spread of the first kind is not a difference the benchmark can
see. Run: ``python benchmarks/bm_noise_floor.py --seeds 0 1 2 3 4 5 6 7 8 9 10 11`` (about half a minute).
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
WHITENED_COMPONENTS = (32, 64)


def embeddings(matrix: np.ndarray, controls: np.ndarray) -> dict[str, np.ndarray]:
    """The 50-component PCA by each solver, scanpy's PCA with each number of components, and the projection
    CellPainTR fits with ``projection="control_whitened"``."""
    found = {f"50 components, {solver}": _pca(matrix, 50, solver) for solver in SOLVERS}
    found |= {f"{n} components, arpack": _pca(matrix, n, "arpack") for n in COMPONENTS if n != 50}
    for n in WHITENED_COMPONENTS:
        center, loadings, _ = _pca_projection(matrix, n, seed=0, controls=controls)
        found[f"{n} components, whitened by the controls"] = ((matrix - center) @ loadings).astype(np.float32)
    return found


def _pca(matrix: np.ndarray, n_components: int, solver: str) -> np.ndarray:
    if solver == "arpack":
        return sc.pp.pca(matrix, n_comps=n_components)
    return PCA(n_components, svd_solver=solver, random_state=0).fit_transform(matrix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(12)), help="leak-free splits")
    args = parser.parse_args()
    adata, batch_key = load("bbbc021", seed=0, quick=False)
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
    spread = solvers.max() - solvers.min()
    print(
        f"\nSame PCA, three solvers: largest difference on one seed {spread.max():.3f}, mean difference "
        f"{spread.mean():.4f}; difference of the seed means {np.ptp(solvers.mean(axis=1)):.4f}"
    )


if __name__ == "__main__":
    main()
