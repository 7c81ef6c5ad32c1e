"""cpembed: batch-corrected embeddings of Cell Painting profiles and images, in AnnData.

Submodules follow scanpy's layout: :mod:`cpembed.io` (reading and writing), :mod:`cpembed.datasets`
(bundled real data and simulators), :mod:`cpembed.pp` (preprocessing), :mod:`cpembed.tl` (embeddings:
baselines, CellPainTR, CWA-MSN), :mod:`cpembed.pl` (plots), :mod:`cpembed.bm` (benchmark metrics) and
:mod:`cpembed.model` (scvi-tools style model classes, imported on first use because scvi-tools is slow to import).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import bm, datasets, io, pl, pp, tl

try:
    __version__ = version("cpembed")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["bm", "datasets", "io", "model", "pl", "pp", "tl"]

_LAZY_SUBMODULES = {"model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cpembed' has no attribute {name!r}")
