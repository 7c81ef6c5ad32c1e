"""Everything cpembed takes from other libraries beyond their public API, in one place.

Each function below names the private function or attribute it relies on and the versions it was checked against.
When a library release changes one of them, this module is the only one to adapt. The random-forest builder
(:mod:`cpembed.bm._forest`) imports nothing private but reproduces scikit-learn's tree internals; the scikit-learn
range it was checked against is bounded in ``pyproject.toml`` and stated there.

Functions that need an optional extra call :func:`check_extra` first, which names the extra that installs what is
missing.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager

    import numpy as np
    import torch
    from anndata import AnnData

#: The modules each optional extra provides (``pip install "cpembed[<extra>]"``).
EXTRAS = {"images": ("tifffile", "imagecodecs", "skimage")}


def check_extra(extra: str, feature: str) -> None:
    """Raise an ImportError that says how to install them when modules of the optional ``extra`` are missing.

    The modules are looked up, not imported, so the check costs nothing when they are there.

    Parameters
    ----------
    extra
        The extra of ``pyproject.toml`` (a key of :data:`EXTRAS`).
    feature
        What needs it, for the message (``"cpembed.tl.segment_cells"``).
    """
    missing = [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(
            f"{feature} needs {', '.join(missing)} (the optional extra {extra!r}), which is not installed: "
            f'install `cpembed[{extra}]`, e.g. pip install "cpembed[{extra}]".'
        )


# ---------------------------------------------------------------------------------------------- anndata
# Checked against anndata 0.12.19. anndata has no public in-place subset or in-place replacement; scanpy 1.11
# (``sc.pp.filter_genes``, ``sc.pp.filter_cells``) relies on the same private methods.


def replace_contents(adata: AnnData, source: AnnData) -> None:
    """Make ``adata`` hold ``source``'s data in place (``AnnData._init_as_actual``); a view becomes an actual object.

    ``source`` must be an actual AnnData (not a view) that nothing else changes afterwards.
    """
    adata._init_as_actual(source)


def subset_var_inplace(adata: AnnData, index: np.ndarray) -> None:
    """Keep the features at the integer positions ``index`` of ``adata``, in place (``AnnData._inplace_subset_var``)."""
    adata._inplace_subset_var(index)


def subset_obs_inplace(adata: AnnData, index: np.ndarray) -> None:
    """Keep the observations at the integer positions ``index`` of ``adata``, in place (``_inplace_subset_obs``)."""
    adata._inplace_subset_obs(index)


# ---------------------------------------------------------------------------------------------- torch
# Checked against torch 2.13.0. ``torch._foreach_*`` are the fused list operations ``torch.optim`` is built on (no
# public name); ``torch._functorch.config`` holds the compiler's activation-memory budget (no public setting).


def activation_memory_budget(budget: float) -> AbstractContextManager:
    """Context in which ``torch.compile`` keeps at most the fraction ``budget`` of the activations it could keep."""
    from torch._functorch import config

    return config.patch(activation_memory_budget=budget)


def foreach_mul_(tensors: Sequence[torch.Tensor], scalar: float | torch.Tensor) -> None:
    """Multiply every tensor of ``tensors`` by ``scalar`` in place, in one fused call (``torch._foreach_mul_``)."""
    import torch

    torch._foreach_mul_(tensors, scalar)


def foreach_lerp_(tensors: Sequence[torch.Tensor], ends: Sequence[torch.Tensor], weight: Any) -> None:
    """``tensor += weight * (end - tensor)`` for every pair, in place, in one fused call (``torch._foreach_lerp_``).

    ``weight`` is a float, or a list of 0-d tensors (one per pair) that stay on the device.
    """
    import torch

    torch._foreach_lerp_(tensors, ends, weight)
