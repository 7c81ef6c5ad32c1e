"""The preprocessing recipe of the JUMP Cell Painting batch-correction benchmark (Arevalo et al. 2024)."""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import numpy as np

from cpembed._compat import replace_contents
from cpembed._validation import check_filter_loss, check_groups_present, check_in_memory, check_result_finite

from ._clip import check_quantile_levels, clip_quantiles
from ._correlation import check_correlation_threshold, correlation_filter, correlation_mask
from ._nonfinite import _DROP_ADVICE, drop_nonfinite
from ._normalize import normalize_to_controls, normalize_to_controls_array
from ._rank import rank_inverse_normal, rank_inverse_normal_array
from ._utils import column_blocks, control_mask, float_dtype, plate_labels, record, target
from ._variation import (
    check_control_variation_loss,
    check_min_coef_var,
    check_variation_cuts,
    check_variation_loss,
    control_variation_failures,
    control_variation_filter,
    variation_failures,
    variation_filter,
)

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: Matrix entries of a backed ``X`` read at once by :func:`recipe_jump` (float32: 256 MiB; about 330 features of
#: 200,000 wells); with the working copies of the transforms a block takes about 1.2 GiB.
BACKED_BLOCK_ELEMENTS = 2**26


def recipe_jump(
    adata: AnnData,
    plate_key: str,
    control_key: str,
    *,
    control_value: Any = None,
    min_coef_var: float = 1e-3,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    corr_threshold: float = 0.9,
    clip: tuple[float, float] | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Preprocess raw well profiles as the JUMP Cell Painting batch-correction benchmark does.

    The steps and their order follow the benchmark's pipeline ``mad_int_featselect`` (Arevalo et al. 2024,
    repository carpenter-singh-lab/2023_Arevalo_NatComm_BatchCorrection), the input of every batch-correction
    method it compares:

    1. :func:`~cpembed.pp.drop_nonfinite` (``how="features"``): drop features with any NaN or infinite value, as
       every later statistic needs finite numbers.
    2. :func:`~cpembed.pp.control_variation_filter`: keep features whose negative controls vary on every plate
       (MAD ≠ 0 and ``|MAD / median| > min_coef_var``), so the next step never divides by (nearly) zero.
    3. :func:`~cpembed.pp.normalize_to_controls` (``"mad_robustize"``): per plate, centre on the controls' median
       and divide by their MAD. This removes plate effects and expresses each feature in units of control
       variability. (The benchmark omits the 1.4826 factor and the 1e-18 epsilon: the factor is a constant and the
       epsilon is negligible next to the MADs step 2 keeps, so the ranks taken next, and the result, are unchanged.)
    4. :func:`~cpembed.pp.rank_inverse_normal` (Blom, c = 3/8): make every feature normally distributed, taming the
       heavy tails left by step 3. Ties get their average rank, where the benchmark breaks them at random.
    5. :func:`~cpembed.pp.variation_filter`: drop features with few distinct values or one dominating value
       (pycytominer's frequency rule), which carry little information after the transform.
    6. :func:`~cpembed.pp.correlation_filter` (``r > corr_threshold``): drop redundant features with pycytominer's
       rule; selection comes last so that it sees the final, normalised values.
    7. Optionally :func:`~cpembed.pp.clip_quantiles` with ``clip=(lower, upper)``. The benchmark does not clip after
       the inverse normal transform (which already bounds values to about ±4.4 for 100,000 wells); it offers
       clipping as an alternative way of handling outliers.

    A backed ``adata`` (read with ``backed="r"``, ``copy=True``) is never loaded whole: steps 1 to 5 treat every
    feature on its own, so ``X`` is read a block of features at a time (2²⁶ entries, 256 MiB of float32) and only
    the features kept by step 5 are held, in ``X``'s dtype, for step 6, which selects among them in place; the
    result is the same as in memory. The peak memory is then the kept features plus the working copies of one
    block (about 1.2 GiB): on 208,896 wells that keep nearly every feature, 1.5 times ``X``, against 3.5 times in
    memory (figures on the benchmarks page, ``benchmarks/recipe_memory.py``).

    Parameters
    ----------
    adata
        Raw well profiles (wells × features).
    plate_key
        ``adata.obs`` column naming the plate of each well.
    control_key
        ``adata.obs`` column marking the negative controls (boolean, or with ``control_value``).
    control_value
        The ``control_key`` value of negative controls, e.g. ``"DMSO"``.
    min_coef_var
        Step 2 threshold (benchmark value 1e-3).
    freq_cut, unique_cut
        Step 5 thresholds (pycytominer defaults 0.05 and 0.01, used by the benchmark).
    corr_threshold
        Step 6 threshold (pycytominer default 0.9, used by the benchmark).
    clip
        ``(lower, upper)`` quantile levels for an optional step 7; ``None`` (the benchmark) skips it.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    With ``copy=True`` the preprocessed AnnData, else ``None``: ``adata`` is subset to the kept features and its
    ``X`` overwritten with the preprocessed values. Each step records itself in ``adata.uns["cpembed_pp"]``, and
    the recipe's own parameters go to ``adata.uns["cpembed_pp"]["recipe_jump"]``, with ``n_wells`` and
    ``n_features`` (before and after); the change of shape is also logged.

    Raises
    ------
    ValueError
        Before any step runs: an argument out of range, a plate without negative controls, a backed ``adata``
        with ``copy=False``. During the steps: a step that would drop every feature, or of which one plate or well
        alone would drop most (the message names it). ``adata`` is then left unchanged: the steps run on a copy,
        which replaces ``adata`` only once all succeeded.

    References
    ----------
    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling.
    *Nature Communications* 15, 6516 (2024).

    Examples
    --------
    >>> import cpembed as cpe
    >>> adata = cpe.datasets.bbbc021()
    >>> cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    >>> list(adata.uns["cpembed_pp"])[-1]
    'recipe_jump'
    """
    check_in_memory(adata, copy=copy)  # every argument is checked before any step runs
    plates = plate_labels(adata, plate_key)
    controls = control_mask(adata, control_key, control_value)
    check_groups_present(plates[controls], np.unique(plates), "plates have no negative-control well")
    check_min_coef_var(min_coef_var)
    check_variation_cuts(freq_cut, unique_cut)
    check_correlation_threshold(corr_threshold)
    if clip is not None:
        if np.ndim(clip) != 1 or len(clip) != 2:
            raise ValueError(f"clip={clip!r} must be None or a pair of quantile levels (lower, upper).")
        check_quantile_levels(*clip)
    params = {
        "plate_key": plate_key,
        "control_key": control_key,
        "control_value": control_value,
        "min_coef_var": min_coef_var,
        "freq_cut": freq_cut,
        "unique_cut": unique_cut,
        "corr_threshold": corr_threshold,
        "clip": None if clip is None else list(clip),
    }
    if adata.isbacked:
        result = _streamed_recipe(adata, plates, controls, params, BACKED_BLOCK_ELEMENTS)
    else:
        result = target(adata, copy=True)  # the steps change a copy, so a step that fails leaves `adata` as it was
        drop_nonfinite(result, how="features")
        control_variation_filter(result, plate_key, control_key, control_value=control_value, min_coef_var=min_coef_var)
        normalize_to_controls(result, plate_key, control_key, control_value=control_value, method="mad_robustize")
        rank_inverse_normal(result)
        variation_filter(result, freq_cut=freq_cut, unique_cut=unique_cut)
        correlation_filter(result, threshold=corr_threshold)
    if clip is not None:
        clip_quantiles(result, lower=clip[0], upper=clip[1])
    record(result, "recipe_jump", params, n_wells=result.n_obs, n_features=[adata.n_vars, result.n_vars])
    logger.info("recipe_jump kept %d of %d features of %d wells", result.n_vars, adata.n_vars, result.n_obs)
    if copy:
        return result
    replace_contents(adata, result)
    return None


def _streamed_recipe(
    adata: AnnData, plates: np.ndarray, controls: np.ndarray, params: dict[str, Any], elements: int
) -> AnnData:
    """Steps 1 to 6 of :func:`recipe_jump` on a backed ``adata``, reading ``X`` a block of features at a time.

    Steps 1 to 5 treat every feature on its own (its finiteness, its controls' spread on each plate, its ranks, its
    value counts), so blocks of whole columns give exactly the values, checks and records of the in-memory path;
    only the kept features' transformed values are held, and step 6 selects among them in place. The checks run
    once all blocks are read.
    """
    import anndata as ad

    step_params = {key: params[key] for key in ("plate_key", "control_key", "control_value")}
    # The kept values, feature after feature: a column-major buffer commits memory only as its columns are written.
    values = np.empty(adata.shape, dtype=float_dtype(adata.X), order="F")
    n_kept = 0
    blocks = []
    for columns in column_blocks(adata.shape, "recipe_jump on backed data", elements=elements):
        raw = np.asarray(adata.X[:, columns])
        finite = np.isfinite(raw).all(axis=0)
        plate_names, plate_failing = control_variation_failures(
            raw[:, finite], plates, controls, min_coef_var=params["min_coef_var"]
        )
        varying = ~plate_failing.any(axis=0)
        normalized = normalize_to_controls_array(raw[:, finite][:, varying], plates, controls)
        check_result_finite(normalized, "normalize_to_controls's result for adata.X")
        transformed = rank_inverse_normal_array(normalized)
        rule_failing = variation_failures(transformed, freq_cut=params["freq_cut"], unique_cut=params["unique_cut"])
        block_kept = transformed[:, ~rule_failing.any(axis=0)]
        values[:, n_kept : n_kept + block_kept.shape[1]] = block_kept
        n_kept += block_kept.shape[1]
        blocks.append(
            {
                "names": adata.var_names[columns].to_numpy(dtype=str),
                "nonfinite": ~np.isfinite(raw[:, ~finite]),
                "finite": finite,
                "plate_failing": plate_failing,
                "varying": varying,
                "rule_failing": rule_failing,
            }
        )

    def joined(key: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([block[key] for block in blocks], axis=axis)

    names, finite, varying = joined("names"), joined("finite"), joined("varying")
    nonfinite = joined("nonfinite", axis=1)
    blamed = np.flatnonzero(nonfinite.any(axis=1))  # only wells with a non-finite value can be blamed
    failing = np.zeros((blamed.size, names.size), dtype=bool)
    failing[:, ~finite] = nonfinite[blamed]
    check_filter_loss(
        failing,
        adata.obs_names[blamed],
        group="well",
        items="features",
        step="drop_nonfinite",
        advice=_DROP_ADVICE["features"],
    )
    plate_failing = joined("plate_failing", axis=1)
    check_control_variation_loss(plate_failing, plate_names, plates[controls], params["min_coef_var"])
    rule_failing = joined("rule_failing", axis=1)
    check_variation_loss(rule_failing, params["freq_cut"], params["unique_cut"])
    selected = names[finite][varying][~rule_failing.any(axis=0)]
    keep = correlation_mask(values[:, :n_kept], threshold=params["corr_threshold"])
    for column, source in enumerate(np.flatnonzero(keep)):  # in place: each kept column moves left, or stays
        values[:, column] = values[:, source]
    view = adata[:, selected[keep]]
    result = ad.AnnData(
        values[:, : keep.sum()],
        obs=view.obs.copy(),
        var=view.var.copy(),
        uns=deepcopy(dict(adata.uns)),
        obsm=dict(view.obsm),
        obsp=dict(view.obsp),
        varm=dict(view.varm),
        layers={key: np.asarray(layer) for key, layer in view.layers.items()},
    )
    record(result, "drop_nonfinite", {"how": "features"}, dropped_features=names[~finite])
    record(
        result,
        "control_variation_filter",
        {**step_params, "min_coef_var": params["min_coef_var"]},
        dropped_features=names[finite][~varying],
    )
    record(result, "normalize_to_controls", {**step_params, "method": "mad_robustize", "epsilon": 1e-18})
    record(result, "rank_inverse_normal", {"c": 3 / 8})
    record(
        result,
        "variation_filter",
        {"freq_cut": params["freq_cut"], "unique_cut": params["unique_cut"]},
        dropped_features=names[finite][varying][rule_failing.any(axis=0)],
    )
    correlation_params = {"threshold": params["corr_threshold"], "method": "pearson", "absolute": False}
    record(result, "correlation_filter", correlation_params, dropped_features=selected[~keep])
    return result
