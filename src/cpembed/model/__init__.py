"""User-facing model classes following scvi-tools conventions (``setup_anndata``, ``train``, ``save``/``load``).

The classes load on first access (``cpe.model.CWAMSN``), so the private data pipelines of this package, which need
torch alone, import without scvi-tools and Lightning.
"""

from importlib import import_module

#: Public name -> private module defining it.
_EXPORTS = {
    "ANCHORED_STAGES": "_training_plan",
    "CONTRASTIVE_LR": "_training_plan",
    "CONTRASTIVE_STAGES": "_training_plan",
    "CWAMSN": "_cwamsn",
    "PAPER_STAGES": "_training_plan",
    "PRESET_FEATURE_DROPOUT": "_training_plan",
    "PRESET_STAGES": "_training_plan",
    "CellPainTR": "_cellpaintr",
    "StageConfig": "_training_plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
