"""Leak-free scoring of models trained with labels: hold out perturbations from training and score only those."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from cpembed._validation import check_obs_complete, check_obs_keys, control_flags


@dataclass(frozen=True)
class LeakFreeSplit:
    """Which perturbations a model may learn from and which wells are scored.

    Attributes
    ----------
    train_labels
        One label per well for training (e.g. ``labels_key`` of :func:`cpembed.tl.cellpaintr`): the perturbation
        for training perturbations and negative controls, ``unlabeled_category`` for held-out perturbations.
    scored
        Boolean mask of the wells to score: those of held-out perturbations and the negative controls. Pass it as
        ``wells=`` to :func:`cpembed.bm.benchmark`, for every method alike.
    heldout
        The held-out perturbations, sorted.
    unlabeled_category
        The label the held-out wells carry in ``train_labels``.
    """

    train_labels: pd.Categorical
    scored: np.ndarray
    heldout: list[str]
    unlabeled_category: str


def leak_free_split(
    adata: AnnData,
    perturbation_key: str,
    control_key: str,
    *,
    stratify_key: str | None = None,
    fraction: float = 1 / 3,
    seed: int = 0,
    unlabeled_category: str = "unlabeled",
) -> LeakFreeSplit:
    """Hold out a share of the perturbations from training, so that no scored label was seen in training.

    A model trained with perturbation labels (CellPainTR's stages 2-3) learns where each training compound lies;
    scoring it on those compounds measures memory, not generalisation, and a baseline fitted without labels is
    then at a disadvantage. Here a random ``fraction`` of the non-control perturbations is held out: training
    sees them without a label (``train_labels``), and every method is scored on their wells plus the negative
    controls (``scored``). Score those wells with ``exclude_controls=False``: the controls, the one group every
    batch holds, then carry the batch metrics that are computed per label.

    Parameters
    ----------
    adata
        Wells x features; only ``.obs`` is read.
    perturbation_key
        ``.obs`` column of the perturbation (compound) a model is trained with.
    control_key
        Boolean ``.obs`` column, ``True`` for negative controls (never held out, always scored).
    stratify_key
        ``.obs`` column (e.g. MoA) within whose classes the held-out share is drawn, so that every class keeps
        training and held-out perturbations where it has several; ``None`` draws among all perturbations.
    fraction
        Share of the perturbations held out, in (0, 1).
    seed
        Seed of the draw.
    unlabeled_category
        Label of held-out wells in ``train_labels``; must not be a perturbation name.

    Returns
    -------
    The split; ``adata`` is not changed.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}.")
    check_obs_keys(adata, perturbation_key, control_key, stratify_key)
    check_obs_complete(adata, perturbation_key, stratify_key)
    is_control = control_flags(adata, control_key)
    perturbation = adata.obs[perturbation_key].astype(str).to_numpy()
    if unlabeled_category in set(perturbation):
        raise ValueError(f"unlabeled_category {unlabeled_category!r} is a value of adata.obs[{perturbation_key!r}].")
    strata = adata.obs[stratify_key].astype(str).to_numpy() if stratify_key is not None else np.zeros(len(is_control))
    treated = pd.DataFrame({"perturbation": perturbation[~is_control], "stratum": strata[~is_control]})
    treated = treated.drop_duplicates("perturbation").sort_values(["stratum", "perturbation"])
    if treated.empty:
        raise ValueError(f"Every well is a control in adata.obs[{control_key!r}]: nothing to hold out.")
    rng = np.random.default_rng(seed)
    heldout = []
    for _, members in treated.groupby("stratum", sort=True):
        names = members["perturbation"].to_numpy()
        n_held = rng.binomial(1, fraction) if len(names) == 1 else max(1, round(fraction * len(names)))
        heldout.extend(rng.choice(names, size=min(n_held, len(names) - (len(names) > 1)), replace=False))
    if not heldout:
        raise ValueError(f"No perturbation was held out with fraction={fraction}; raise fraction or change seed.")
    is_heldout = np.isin(perturbation, heldout) & ~is_control
    train_labels = pd.Categorical(np.where(is_heldout, unlabeled_category, perturbation))
    return LeakFreeSplit(
        train_labels=train_labels,
        scored=is_heldout | is_control,
        heldout=sorted(heldout),
        unlabeled_category=unlabeled_category,
    )
