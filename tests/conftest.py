"""Fixtures shared by several test modules."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: cpembed's heavy dependencies: a GPU machine may lack them, so the GPU speed scripts must run without them.
HEAVY_MODULES = ["scanpy", "anndata", "scvi", "lightning", "pandas"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--runslow``, which runs the tests marked ``slow`` too."""
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (training, reports, notebooks)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``slow`` unless ``--runslow`` is given (the full suite), as scvi-tools' tests do."""
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def one_torch_thread():
    """Run the test with torch on one thread (tiny models run fastest so on a shared CPU), then restore the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_benchmark_torch_only():
    """Run ``benchmarks/<name>`` as ``python benchmarks/<name> ARGS`` does, with the heavy dependencies blocked.

    Returns a function ``run(name, args) -> subprocess.CompletedProcess`` (single-threaded, 5 minutes at most).
    """

    def run(name: str, args: list[str]) -> subprocess.CompletedProcess:
        script = BENCHMARKS / name
        code = (
            "import runpy, sys\n"
            f"for name in {HEAVY_MODULES!r}: sys.modules[name] = None\n"
            f"sys.argv = [{str(script)!r}] + sys.argv[1:]\n"
            f"sys.path.insert(0, {str(script.parent)!r})\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
        )
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, check=False, env=env
        )

    return run


@pytest.fixture(scope="module")
def bbbc021_standardized():
    """BBBC021 normalised per plate to its DMSO wells, with 20-d and 5-d PCA embeddings (for the bm tests)."""
    from sklearn.decomposition import PCA

    import cpembed as cpe

    adata = cpe.datasets.bbbc021()
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon", method="standardize")
    features = np.asarray(adata.X, dtype=np.float64)
    adata = adata[:, np.isfinite(features).all(axis=0) & (features.std(axis=0) > 0)].copy()
    adata.obsm["X_pca"] = PCA(20, random_state=0).fit_transform(np.asarray(adata.X, dtype=np.float64))
    adata.obsm["X_pca5"] = adata.obsm["X_pca"][:, :5].copy()
    return adata
