"""Preprocessing of Cell Painting profiles: cleaning, per-plate normalisation, transforms and feature selection.

One step per module; in each, an array function does the maths and the function named here reads and writes the
AnnData. Every step follows the same rules:

- Input is ``adata.X`` (transforms also take ``layer=``); it must be numeric, and every step except
  :func:`drop_nonfinite` refuses NaN and infinite values with an error pointing to :func:`drop_nonfinite`.
- Feature filters (:func:`drop_nonfinite`, :func:`variation_filter`, :func:`control_variation_filter`,
  :func:`correlation_filter`) subset the AnnData to the kept features in place (``obs``, ``var``, layers and
  embeddings follow), as scanpy's filters do. A filter that would keep no feature, or of which a single plate,
  well or rule alone would drop more features than it keeps (a plate with one control well, a well of NaN),
  raises an error naming it and the option that handles it.
- Transforms (:func:`normalize_to_controls`, :func:`rank_inverse_normal`, :func:`clip_quantiles`) overwrite
  ``adata.X``, or ``adata.layers[layer]`` when ``layer`` is given; float32 data stay float32. A result that
  overflows the dtype (float32 holds values up to about 3.4e38) is refused before anything is written.
- Annotations (:func:`feature_groups`) write one ``adata.var[key_added]`` column.
- Every step records its parameters (and what it dropped) in ``adata.uns["cpembed_pp"][<function name>]``.
- ``copy=True`` returns a changed copy and leaves the input untouched; ``copy=False`` changes ``adata`` and
  returns ``None``. A backed AnnData is read into memory with ``copy=True`` and refused with ``copy=False``.

:func:`recipe_jump` chains the steps as the JUMP batch-correction benchmark (Arevalo et al. 2024) does.
"""

from ._aggregate import aggregate
from ._clip import clip_quantiles
from ._correlation import correlation_filter
from ._feature_groups import feature_groups
from ._nonfinite import drop_nonfinite
from ._normalize import normalize_to_controls
from ._rank import rank_inverse_normal
from ._recipe import recipe_jump
from ._variation import control_variation_filter, variation_filter

__all__ = [
    "aggregate",
    "clip_quantiles",
    "control_variation_filter",
    "correlation_filter",
    "drop_nonfinite",
    "feature_groups",
    "normalize_to_controls",
    "rank_inverse_normal",
    "recipe_jump",
    "variation_filter",
]
