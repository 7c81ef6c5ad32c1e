"""cpembed: batch-corrected embeddings of Cell Painting profiles and images, in AnnData.

Submodules follow scanpy's layout: :mod:`cpembed.io` (reading and writing), :mod:`cpembed.datasets`
(bundled real data and simulators), :mod:`cpembed.pp` (preprocessing), :mod:`cpembed.tl` (embeddings:
baselines, CellPainTR, CWA-MSN), :mod:`cpembed.pl` (plots), :mod:`cpembed.bm` (benchmark metrics) and
:mod:`cpembed.model` (scvi-tools style model classes).

Submodules are imported on first access (``cpe.pp``), so ``import cpembed.module`` needs torch alone and
scvi-tools, which is slow to import, loads only when a model is used. :mod:`cpembed.pp`, :mod:`cpembed.tl` and
:mod:`cpembed.bm` import torch, Lightning, scvi-tools and scanpy inside the functions that use them, so that
preprocessing and scoring embeddings never wait for the deep-learning stack to load.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

try:
    __version__ = version("cpembed")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["bm", "datasets", "io", "model", "module", "pl", "pp", "tl"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cpembed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
