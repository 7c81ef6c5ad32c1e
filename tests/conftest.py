"""Fixtures shared by several test modules."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: cpembed's heavy dependencies: a GPU machine may lack them, so the GPU speed scripts must run without them.
HEAVY_MODULES = ["scanpy", "anndata", "scvi", "lightning", "pandas"]


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
