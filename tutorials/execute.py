"""Execute the tutorial notebooks and store their outputs.

Usage, from the repository root:

    .venv/bin/python tutorials/execute.py                 # full settings, outputs written into the notebooks
    .venv/bin/python tutorials/execute.py --quick          # CPEMBED_TUTORIAL_QUICK=1: tiny settings, a dry run

Each notebook's first code cell (tagged ``parameters``) reads the environment variable ``CPEMBED_TUTORIAL_QUICK``;
``1`` shrinks the data and the training schedules so that both notebooks run in a few minutes on a CPU. The test
suite (tests/test_tutorials.py) runs them that way.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
QUICK_VARIABLE = "CPEMBED_TUTORIAL_QUICK"


def execute(path: Path, *, quick: bool, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel and return the notebook with its outputs."""
    notebook = nbformat.read(path, as_version=4)
    previous = os.environ.get(QUICK_VARIABLE)
    os.environ[QUICK_VARIABLE] = "1" if quick else "0"
    try:
        client = NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.execute()
    finally:
        if previous is None:
            del os.environ[QUICK_VARIABLE]
        else:
            os.environ[QUICK_VARIABLE] = previous
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every tutorials/*.ipynb")
    parser.add_argument("--quick", action="store_true", help="tiny settings; the notebooks are not overwritten")
    args = parser.parse_args()
    for path in args.notebooks or sorted(TUTORIALS.glob("*.ipynb")):
        notebook = execute(path, quick=args.quick)
        if not args.quick:
            nbformat.write(notebook, path)
        print(f"executed {path}")


if __name__ == "__main__":
    main()
