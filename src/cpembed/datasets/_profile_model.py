"""Generative model of raw per-well CellProfiler features: latent biology seen through source-specific technology.

For well ``i`` of plate ``p`` (batch ``b``, source ``s``, microscope ``m``) and feature ``f`` of feature group ``g``
(compartment × channel):

1. Biology: ``z_i = r_b · a_c · (v_c + 0.5 v_0)``, the compound's unit direction ``v_c`` (its MoA direction plus a
   compound-specific deviation) plus a response ``v_0`` shared by all compounds, times its potency ``a_c``;
   ``z = 0`` for DMSO; ``r_b`` is the batch's response.
2. Latent feature value ``u_if = W_sf · z_i + noise_if + position_if``. ``W_sf`` is the feature's loading as the
   source measures it (distorted per microscope and per source, with per-feature gains), the noise has unit
   variance and shares factors within each group and across all features (cell number), so many features are
   redundant; ``position`` adds the source's edge effect and the plate's row and column gradients.
3. Source-specific monotone non-linearity per feature group, the sinh-arcsinh transform of Jones & Pewsey
   (2009, *Biometrika* 96, 761): ``h(u) = sinh(δ_sg · asinh(u) − ε_sg)`` (skew ``ε``, tail weight ``δ``).
4. Raw value ``exp(μ_f + σ_f · h + batch_bg + plate_pg + gain_m,channel)`` (log-normal, positive, skewed), a logistic
   instead of the exponential for Correlation features (bounded in (0, 1)), and soft saturation of Intensity
   features by the microscope's detector.

Per-plate normalisation to DMSO removes the batch, plate and gain terms, as in real data, but not the
source-specific loadings, non-linearities, saturation and edge effects: those make the same compound look different
in every source, which is what batch correction across JUMP sources has to undo (Arevalo et al. 2024, *Nature
Communications* 15, 6516).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from ._plate_layout import PlateGeometry
from ._study_design import StudyDesign

# Share of the unit latent noise variance carried by the factor of a feature's group and by the all-feature
# (cell-number) factor: within-group correlations of about 0.3-0.7 as between CellProfiler features of one dye.
_GROUP_NOISE_LOADING = (0.5, 0.8)
_GLOBAL_NOISE_LOADING = 0.4
# Log-scale spread of well means around the feature's level: per-well means vary by 5-35% between DMSO wells.
_LOG_SPREAD = (0.05, 0.3)
# Potency of positive controls relative to the screened compounds' median potency.
_POSCON_POTENCY = 3.0
# Part of every compound's effect along one direction shared by all compounds (relative to its potency): active
# compounds share a general stress / cell-number response besides their MoA-specific one.
_SHARED_RESPONSE = 0.5
# Spread of log potency of screened compounds: many weak, a few strong (most JUMP compounds are inactive).
_LOG_POTENCY_SPREAD = 0.75
# Log levels of raw feature values: per-well means range from ~0.05 (intensities on a 0-1 scale) to ~400 (areas in
# pixels); Correlation features are logits of values between about 0.4 and 0.9.
_LOG_LEVEL = (-3.0, 6.0)
_LOGIT_LEVEL = (-0.5, 2.0)
# Spreads of the source-specific distortions at source_effect=1 (loading distortion, log per-feature gain, skew and
# log tail weight of the sinh-arcsinh bend, detector saturation, source part of the edge effect). With these, a
# linear classifier recognises the source of ~80% of wells of 3 sources after per-plate normalisation to DMSO.
_LOADING_DISTORTION = 0.5
_FEATURE_GAIN = 0.3
_SKEW = 0.4
_TAIL = 0.25
_SATURATION = 0.6
_EDGE = 0.5


@dataclass(frozen=True)
class ProfileModel:
    """Parameters shared by all plates of a study; plates add their own shifts, gradients and noise."""

    feature_group: np.ndarray
    n_groups: int
    log_level: np.ndarray
    log_spread: np.ndarray
    is_bounded: np.ndarray
    is_intensity: np.ndarray
    feature_channel: np.ndarray
    group_noise_loading: np.ndarray
    global_noise_loading: np.ndarray
    compound_effect: np.ndarray
    source_loadings: np.ndarray
    source_skew: np.ndarray
    source_tail: np.ndarray
    source_edge: np.ndarray
    microscope_gain: np.ndarray
    microscope_saturation: np.ndarray
    batch_response: np.ndarray
    batch_shift: np.ndarray
    plate_shift_scale: float
    gradient_scale: float

    @property
    def n_latent(self) -> int:
        """Dimension of the latent biology."""
        return self.compound_effect.shape[1]


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _feature_codes(var: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group (compartment × channel), module and channel index of every feature."""
    groups = pd.factorize(var["compartment"] + "/" + var["channel"])[0]
    modules = pd.factorize(var["measurement"])[0]
    channels = pd.factorize(var["channel"])[0]
    return groups, modules, channels


def _compound_effects(
    design: StudyDesign, n_latent: int, effect_size: float, compound_deviation: float, rng: np.random.Generator
) -> np.ndarray:
    """Latent effect of every compound: (MoA direction + deviation, plus the shared response) × potency; 0 for DMSO."""
    moa_direction = _unit_rows(rng.standard_normal((len(design.moas), n_latent)))
    shared_direction = _unit_rows(rng.standard_normal((1, n_latent)))
    deviation = rng.standard_normal((len(design.compounds), n_latent)) / np.sqrt(n_latent)
    direction = _unit_rows(moa_direction[design.compound_moa] + compound_deviation * deviation)
    direction += _SHARED_RESPONSE * shared_direction
    potency = effect_size * rng.lognormal(0.0, _LOG_POTENCY_SPREAD, len(design.compounds))
    potency[1 : 1 + design.n_poscons] = _POSCON_POTENCY * effect_size
    potency[0] = 0.0
    return direction * potency[:, None]


def _source_loadings(
    loadings: np.ndarray, groups: np.ndarray, design: StudyDesign, source_effect: float, rng: np.random.Generator
) -> np.ndarray:
    """How each source measures the biology: loadings distorted per microscope and source, with per-feature gains."""
    n_features, n_latent = loadings.shape
    n_groups = groups.max() + 1

    def distortion(count: int) -> np.ndarray:
        per_group = rng.standard_normal((count, n_groups, n_latent))[:, groups]
        return (per_group + rng.standard_normal((count, n_features, n_latent))) / np.sqrt(2)

    by_microscope = distortion(len(design.microscopes))[design.source_microscope]
    by_source = distortion(len(design.sources))
    distorted = loadings + source_effect * _LOADING_DISTORTION * (by_microscope + by_source)
    distorted *= np.sqrt(n_latent) / np.linalg.norm(distorted, axis=2, keepdims=True)
    gain = rng.lognormal(0.0, _FEATURE_GAIN * source_effect, (len(design.sources), n_features, 1))
    return distorted * gain


def make_profile_model(
    var: pd.DataFrame,
    design: StudyDesign,
    *,
    n_latent: int,
    effect_size: float,
    compound_deviation: float,
    source_effect: float,
    batch_effect: float,
    position_effect: float,
    rng: np.random.Generator,
) -> ProfileModel:
    """Draw the study-wide parameters of the generative model (see the module docstring)."""
    groups, modules, channels = _feature_codes(var)
    n_features, n_groups = len(var), groups.max() + 1
    n_sources, n_batches = len(design.sources), len(design.batches)
    is_bounded = (var["measurement"] == "Correlation").to_numpy()

    # Loadings mix a compartment × dye part, a module part and the feature's own part (1 : 0.7 : 0.7); 70% of the
    # features rise with their group's factor, the others fall.
    shared = rng.standard_normal((n_groups, n_latent))[groups]
    module = rng.standard_normal((modules.max() + 1, n_latent))[modules]
    own = rng.standard_normal((n_features, n_latent))
    sign = np.where(rng.random(n_features) < 0.7, 1.0, -1.0)[:, None]
    loadings = sign * _unit_rows(shared + 0.7 * module + 0.7 * own) * np.sqrt(n_latent)

    log_level = np.where(is_bounded, rng.uniform(*_LOGIT_LEVEL, n_features), rng.uniform(*_LOG_LEVEL, n_features))
    common_edge = rng.standard_normal(n_groups)
    # Microscope gains of ±35% per dye; at batch_effect=1, ±15% batch response and ±35% batch and ±16% plate shifts
    # of the raw values per feature group; position_effect=1 adds row/column gradients of ±0.25 noise SD per plate.
    return ProfileModel(
        feature_group=groups,
        n_groups=n_groups,
        log_level=log_level,
        log_spread=rng.uniform(*_LOG_SPREAD, n_features),
        is_bounded=is_bounded,
        is_intensity=(var["measurement"] == "Intensity").to_numpy(),
        feature_channel=channels,
        group_noise_loading=rng.uniform(*_GROUP_NOISE_LOADING, n_features),
        global_noise_loading=rng.uniform(-_GLOBAL_NOISE_LOADING, _GLOBAL_NOISE_LOADING, n_features),
        compound_effect=_compound_effects(design, n_latent, effect_size, compound_deviation, rng),
        source_loadings=_source_loadings(loadings, groups, design, source_effect, rng),
        source_skew=rng.normal(0.0, _SKEW * source_effect, (n_sources, n_groups)),
        source_tail=np.exp(source_effect * rng.uniform(-_TAIL, _TAIL, (n_sources, n_groups))),
        source_edge=position_effect
        * _EDGE
        * (common_edge + source_effect * rng.standard_normal((n_sources, n_groups))),
        microscope_gain=rng.normal(0.0, 0.3, (len(design.microscopes), channels.max() + 1)),
        microscope_saturation=source_effect
        * rng.uniform(0.0, _SATURATION, (len(design.microscopes), channels.max() + 1)),
        batch_response=rng.lognormal(0.0, 0.15 * batch_effect, n_batches),
        batch_shift=rng.normal(0.0, 0.3 * batch_effect, (n_batches, n_groups)),
        plate_shift_scale=0.15 * batch_effect,
        gradient_scale=0.25 * position_effect,
    )


def sinh_arcsinh(values: np.ndarray, skew: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Monotone sinh-arcsinh transform ``sinh(tail · asinh(values) − skew)`` of Jones & Pewsey (2009)."""
    return np.sinh(tail * np.arcsinh(values) - skew)


def _position_effect(model: ProfileModel, geometry: PlateGeometry, source: int, rng: np.random.Generator) -> np.ndarray:
    """Edge effect of the source plus this plate's row and column gradients, per well and feature group."""
    row_slope, column_slope = rng.normal(0.0, model.gradient_scale, (2, model.n_groups))
    edge = np.outer(geometry.is_edge, model.source_edge[source])
    return edge + np.outer(geometry.centred_rows, row_slope) + np.outer(geometry.centred_columns, column_slope)


def _insert_nonfinite(values: np.ndarray, fraction: float, rng: np.random.Generator) -> None:
    """Replace a random ``fraction`` of the entries by NaN (nine in ten) or +inf, in place."""
    n_broken = rng.binomial(values.size, fraction)
    broken = rng.choice(values.size, size=n_broken, replace=False)
    values.reshape(-1)[broken] = np.where(rng.random(n_broken) < 0.9, np.nan, np.inf)


def simulate_plate(
    model: ProfileModel, design: StudyDesign, plate: int, nonfinite_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Raw features (wells × features, float32) and clean latent biology (wells × latent) of one plate."""
    batch = design.plate_batch[plate]
    source = design.batch_source[batch]
    microscope = design.source_microscope[source]
    groups = model.feature_group
    n_wells, n_features = design.geometry.n_wells, groups.size

    biology = model.compound_effect[design.well_compound[plate]] * model.batch_response[batch]
    group_loading = model.group_noise_loading
    own_loading = np.sqrt(1.0 - group_loading**2 - model.global_noise_loading**2)
    latent = biology @ model.source_loadings[source].T
    latent += rng.standard_normal((n_wells, model.n_groups))[:, groups] * group_loading
    latent += rng.standard_normal((n_wells, 1)) * model.global_noise_loading
    latent += rng.standard_normal((n_wells, n_features)) * own_loading
    latent += _position_effect(model, design.geometry, source, rng)[:, groups]

    log_values = sinh_arcsinh(latent, model.source_skew[source, groups], model.source_tail[source, groups])
    log_values *= model.log_spread
    plate_shift = rng.normal(0.0, model.plate_shift_scale, model.n_groups)
    gain = model.microscope_gain[microscope, model.feature_channel] * model.is_intensity
    log_values += model.log_level + model.batch_shift[batch, groups] + plate_shift[groups] + gain
    np.minimum(log_values, 80.0, out=log_values)
    values = np.exp(log_values, dtype=np.float32)
    bounded = np.flatnonzero(model.is_bounded)
    values[:, bounded] = expit(log_values[:, bounded])

    intensity = np.flatnonzero(model.is_intensity)
    saturation = model.microscope_saturation[microscope, model.feature_channel[intensity]]
    values[:, intensity] /= 1.0 + saturation * values[:, intensity] / np.exp(model.log_level[intensity])
    _insert_nonfinite(values, nonfinite_fraction, rng)
    return values, biology.astype(np.float32)
