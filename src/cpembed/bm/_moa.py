"""Mechanism-of-action (MoA) 1-nearest-neighbour accuracy on treatment profiles (the BBBC021 benchmark).

References
----------
Ljosa, V., Caie, P. D., ter Horst, R., Sokolnicki, K. L., Jenkins, E. L., Daya, S., Roberts, M. E., Jones, T. R.,
Singh, S., Genovesio, A., Clemons, P. A., Carragher, N. O. & Carpenter, A. E. Comparison of methods for image-based
profiling of cellular morphological responses to small-molecule treatment. *Journal of Biomolecular Screening* 18,
1321–1329 (2013).

Ando, D. M., McLean, C. Y. & Berndl, M. Improving phenotypic measurements in high-content imaging screens.
*bioRxiv* 161422 (2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ._inputs import power_of_two_scale, validated_arrays


@dataclass(frozen=True)
class MoAAccuracy:
    """1-NN MoA accuracy "not same compound" (NSC) and "not same compound, not same batch" (NSCB).

    Attributes
    ----------
    nsc
        Fraction of scored treatments whose nearest treatment of another compound has the same MoA.
    nscb
        The same, the nearest treatment being of another compound and from batches the query does not share.
    per_treatment
        One row per treatment (``compound``, ``concentration``, ``moa``) with, for NSC and NSCB, the nearest
        treatment's row number (``nsc_neighbour``, ``nscb_neighbour``; -1 when not scored) and whether it was
        correct (``nsc_correct``, ``nscb_correct``; missing when not scored).
    """

    nsc: float
    nscb: float
    per_treatment: pd.DataFrame


def moa_accuracy(
    X: np.ndarray,
    compound: np.ndarray,
    concentration: np.ndarray,
    *,
    moa: np.ndarray,
    batch: np.ndarray,
    is_control: np.ndarray,
    aggregate: Literal["mean", "median"] = "mean",
) -> MoAAccuracy:
    """MoA 1-nearest-neighbour accuracy of treatment profiles, NSC and NSCB (Ljosa et al. 2013; Ando et al. 2017).

    A treatment is a compound at one concentration; its profile is the mean (default, Ando et al. 2017) or median
    of its wells. Each treatment's nearest neighbour by cosine similarity is found among the treatments of other
    compounds (NSC, Ljosa et al. 2013) and among the treatments of other compounds from other batches (NSCB, Ando
    et al. 2017); the prediction is correct when the neighbour has the query's MoA. Control wells (DMSO) are left
    out entirely, as queries and as neighbours. A treatment is scored only when a correct answer exists, that is
    when some eligible neighbour shares its MoA: for NSCB this drops the MoAs imaged in a single batch, as Ando et
    al. (2017) did (in BBBC021: cholesterol-lowering and kinase inhibitors).

    Parameters
    ----------
    X
        Profiles or embeddings, wells × dimensions.
    compound
        Compound of each well.
    concentration
        Concentration of each well (any label; compound × concentration defines a treatment).
    moa
        MoA of each well (one MoA per treatment).
    batch
        Batch of each well (imaging week in BBBC021). A treatment spanning several batches shares all of them.
    is_control
        Boolean, ``True`` for control wells.
    aggregate
        ``"mean"`` or ``"median"`` of the wells of a treatment.

    Returns
    -------
    Both accuracies and the per-treatment table.
    """
    if aggregate not in ("mean", "median"):
        raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}.")
    X, arrays = validated_arrays(
        X,
        {"compound": compound, "concentration": concentration, "moa": moa, "batch": batch},
        {"is_control": is_control},
    )
    keep = ~arrays["is_control"]
    wells = pd.DataFrame({name: arrays[name][keep] for name in ("compound", "concentration", "moa", "batch")})
    treatment = wells.groupby(["compound", "concentration"], sort=False, observed=True).ngroup().to_numpy()
    treatments = _treatment_table(wells, treatment)
    profiles = pd.DataFrame(X[keep]).groupby(treatment).agg(aggregate).to_numpy(dtype=np.float64)
    similarity = cosine_similarity_matrix(profiles, "treatment profiles")

    other_compound = treatments["compound"].to_numpy()[:, None] != treatments["compound"].to_numpy()[None, :]
    batches = pd.crosstab(treatment, wells["batch"].to_numpy()).to_numpy() > 0
    other_batches = (batches.astype(np.int64) @ batches.T.astype(np.int64)) == 0
    moa_codes = pd.factorize(treatments["moa"])[0]
    for name, eligible in [("nsc", other_compound), ("nscb", other_compound & other_batches)]:
        neighbour, correct = _nearest_neighbour_moa(similarity, eligible, moa_codes)
        treatments[f"{name}_neighbour"] = neighbour
        treatments[f"{name}_correct"] = correct
    return MoAAccuracy(
        nsc=_accuracy(treatments["nsc_correct"], "NSC"),
        nscb=_accuracy(treatments["nscb_correct"], "NSCB"),
        per_treatment=treatments,
    )


def _treatment_table(wells: pd.DataFrame, treatment: np.ndarray) -> pd.DataFrame:
    """Compound, concentration and the single MoA of each treatment (error when a treatment has several)."""
    grouped = wells.groupby(treatment)
    n_moa = grouped["moa"].nunique()
    if (n_moa > 1).any():
        first = grouped.first()[n_moa > 1].iloc[0]
        raise ValueError(
            f"{int((n_moa > 1).sum())} treatments have wells with different MoAs, e.g. compound "
            f"{first['compound']!r} at concentration {first['concentration']!r}."
        )
    return grouped[["compound", "concentration", "moa"]].first().reset_index(drop=True)


def cosine_similarity_matrix(profiles: np.ndarray, what: str) -> np.ndarray:
    """Cosine similarity of every pair of rows; a ValueError counting the zero rows (``what``) if there are any."""
    profiles = profiles / power_of_two_scale(profiles)  # exact: similarities unchanged, squares within range
    norms = np.linalg.norm(profiles, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} {what} are zero: cosine similarity is undefined.")
    unit = profiles / norms[:, None]
    return unit @ unit.T


def _nearest_neighbour_moa(
    similarity: np.ndarray, eligible: np.ndarray, moa_codes: np.ndarray
) -> tuple[np.ndarray, pd.Series]:
    """Nearest eligible treatment of each query and whether its MoA matches; unscored queries get -1 / NA."""
    scored = (eligible & (moa_codes[:, None] == moa_codes[None, :])).any(axis=1)
    neighbour = np.argmax(np.where(eligible, similarity, -np.inf), axis=1)
    neighbour = np.where(scored, neighbour, -1)
    correct = pd.Series(moa_codes[neighbour] == moa_codes, dtype="boolean")
    correct[~scored] = pd.NA
    return neighbour, correct


def _accuracy(correct: pd.Series, name: str) -> float:
    if correct.notna().sum() == 0:
        raise ValueError(f"No treatment can be scored for {name}: no MoA has eligible treatments of another compound.")
    return float(correct.mean())
