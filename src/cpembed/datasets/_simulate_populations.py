"""``simulate_cell_populations``: a JUMP-like multi-source study whose wells are mixtures of cell states.

A second generative family beside :func:`~cpembed.datasets.simulate_profiles`, with the same study design and output
but another mechanism: compounds move cells between discrete states (a softmax mixture) instead of along linear
latent factors, and sources differ by their cell populations and by saturating per-feature response curves instead
of distorted loadings and sinh-arcsinh bends. A batch-correction method that does well on both is not merely tuned
to one simulator.

For well ``i`` of plate ``p`` (batch ``b``, source ``s``) and feature ``f`` of feature group ``g`` (compartment ×
channel):

1. Cell states ``k = 1 … K`` have mean latent profiles ``m_k`` and cell-to-cell spreads ``σ_k``; a compound ``c`` of
   MoA ``a`` with potency ``a_c`` shifts the state log-odds by ``a_c · d_c`` (its MoA direction plus a compound
   deviation) and the state means by ``a_c · t_ak``.
2. State proportions ``π_i = softmax(β_b + a_c · d_c + ε_i)``: ``β_b`` is the batch's baseline log-odds around its
   source's, which depend on the source's cell density; ``ε_i`` is the well's own variation. The well holds
   ``n_i ~ Poisson(ρ_s · e^η)`` cells split ``Multinomial(n_i, π_i)``; its latent mean is the count-weighted mean of
   the state means, plus sampling noise of ``σ / √n_i``.
3. Features: the latent mean minus the DMSO reference, mapped by loadings ``W`` that share a part within each
   feature group, then mixed within each group by a source-specific random rotation ``R_sg``, plus technical noise.
4. A source- and feature-specific saturating logistic response ``h_sf`` (slope, midpoint, gain), then the source's
   edge effect and the plate's row and column gradients, in units of the DMSO well-to-well noise.
5. Raw value ``exp(μ_f + τ_f · h + batch_bg + plate_pg)``, a logistic for the Correlation features.

Per-plate normalisation to DMSO removes the batch and plate shifts; it cannot undo the sources' baselines (a
compound's shift of the mixture depends on where the softmax starts), response curves, rotations and edge effects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.linalg import expm
from scipy.special import expit, softmax
from tqdm.auto import tqdm

from ._plate_layout import PlateGeometry
from ._profile_model import _feature_codes, _insert_nonfinite, _unit_rows
from ._simulate_profiles import _fill_in_memory, laid_out_study
from ._study_design import StudyDesign

# Random streams of the model and of the plates, apart from those of simulate_profiles; the design stream is
# shared, so that both simulators lay out the same study for the same seed.
_MODEL_STREAM, _PLATE_STREAM = 3, 4

# Feature values before the response curve are in units of the well-to-well noise of DMSO wells. Cells of different
# states differ by several noise units per feature; cells within a state spread about as widely.
_STATE_SEPARATION = 3.0
_CELL_SPREAD = (2.0, 3.5)
# Reference log-odds of the states: the first (interphase-like) state holds the largest share, about 40% of the cells.
_DOMINANT_STATE_LOGIT = 2.0
# Cells per well: around 700, a source's seeding density within a factor e^±0.7 (~350-1400) at source_effect=1 and
# 20% well-to-well variation. Denser wells shift the state log-odds along one direction (contact inhibition, fewer
# mitoses; Snijder et al. 2009), besides each source's own protocol; batches scatter around their source.
_TYPICAL_CELLS_PER_WELL = 700.0
_LOG_DENSITY_RANGE = 0.7
_WELL_DENSITY_SPREAD = 0.2
_PROTOCOL_LOGIT_SPREAD = 0.6
_BATCH_LOGIT_SPREAD = 0.15
_WELL_LOGIT_SPREAD = 0.3
# Compound action per unit potency: norm of the log-odds shift, and spread of the MoA's shift of the state means (in
# noise units per feature). Potencies are log-normal; positive controls are 3 times the median.
_LOGIT_SHIFT = 2.0
_STATE_SHIFT = 0.3
_LOG_POTENCY_SPREAD = 0.75
_POSCON_POTENCY = 3.0
# Technical noise SD of a feature (with the wells' biological variation, about one noise unit in all) and the share
# carried by its group's factor (within-group correlations of 0.3-0.7).
_TECHNICAL_NOISE = 0.9
_GROUP_NOISE_LOADING = (0.5, 0.8)
# Response curves: median slope (the curve bends over a few noise units), spread of slopes between features and, at
# source_effect=1, between sources; spread of the midpoint around DMSO between features and sources; log gain spread.
_CURVE_SLOPE = 0.8
_SLOPE_SPREAD = (0.3, 0.5)
_MIDPOINT_SPREAD = (1.5, 1.2)
_GAIN_SPREAD = 0.3
# Angle (radians) by which the source's rotation turns each feature towards the others of its group, at
# source_effect=1.
_MIXING_ANGLE = 0.7
# Edge effect (noise units) at position_effect=1; row and column gradients of ±0.25 noise units per plate.
_EDGE = 0.5
_GRADIENT = 0.25
# Raw levels: per-well means from ~0.05 (intensities) to ~400 (areas in pixels), Correlation features between about
# 0.4 and 0.9; DMSO wells vary by 5-30%.
_LOG_LEVEL = (-3.0, 6.0)
_LOGIT_LEVEL = (-0.5, 2.0)
_LOG_SPREAD = (0.05, 0.3)


@dataclass(frozen=True)
class PopulationModel:
    """Parameters shared by all plates of a study; plates draw their cells, noise, shifts and gradients."""

    feature_group: np.ndarray
    group_members: list[np.ndarray]
    loadings: np.ndarray
    state_means: np.ndarray
    state_spread: np.ndarray
    reference_latent: np.ndarray
    batch_logits: np.ndarray
    source_cells: np.ndarray
    compound_logit_shift: np.ndarray
    compound_potency: np.ndarray
    moa_state_shift: np.ndarray
    true_biology: np.ndarray
    source_rotations: list[list[np.ndarray]]
    group_noise_loading: np.ndarray
    curve_slope: np.ndarray
    curve_midpoint: np.ndarray
    curve_gain: np.ndarray
    source_edge: np.ndarray
    gradient_scale: float
    log_level: np.ndarray
    log_spread: np.ndarray
    is_bounded: np.ndarray
    batch_shift: np.ndarray
    plate_shift_scale: float


def _centred_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows minus their mean: log-odds are defined up to a constant."""
    return matrix - matrix.mean(axis=1, keepdims=True)


def _mixture_mean(
    proportions: np.ndarray, state_means: np.ndarray, potency: np.ndarray, state_shifts: np.ndarray
) -> np.ndarray:
    """Mean latent profile of populations over the states, whose means a compound of ``potency`` shifts."""
    return proportions @ state_means + potency[:, None] * np.einsum("wk,wkl->wl", proportions, state_shifts)


def _feature_loadings(var: pd.DataFrame, n_latent: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit loadings mixing a group part, a module part and the feature's own part (1 : 0.7 : 0.7), and the groups."""
    groups, modules, _ = _feature_codes(var)
    shared = rng.standard_normal((groups.max() + 1, n_latent))[groups]
    module = rng.standard_normal((modules.max() + 1, n_latent))[modules]
    own = rng.standard_normal((len(var), n_latent))
    return _unit_rows(shared + 0.7 * module + 0.7 * own), groups


def _compound_actions(
    design: StudyDesign,
    n_states: int,
    n_latent: int,
    effect_size: float,
    compound_deviation: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-odds shift of every compound, its potency, and each MoA's shift of the state means per unit potency."""
    n_compounds = len(design.compounds)
    moa_direction = _unit_rows(_centred_rows(rng.standard_normal((len(design.moas), n_states))))
    deviation = _centred_rows(rng.standard_normal((n_compounds, n_states))) / np.sqrt(n_states)
    direction = _unit_rows(moa_direction[design.compound_moa] + compound_deviation * deviation)
    potency = effect_size * rng.lognormal(0.0, _LOG_POTENCY_SPREAD, n_compounds)
    potency[1 : 1 + design.n_poscons] = _POSCON_POTENCY * effect_size
    potency[0] = 0.0
    moa_state_shift = _STATE_SHIFT * rng.standard_normal((len(design.moas), n_states, n_latent))
    return _LOGIT_SHIFT * potency[:, None] * direction, potency, moa_state_shift


def _baselines(
    design: StudyDesign,
    reference_logits: np.ndarray,
    source_effect: float,
    batch_effect: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline state log-odds of every batch and mean cells per well of every source."""
    n_sources, n_states = len(design.sources), reference_logits.size
    log_density = source_effect * rng.uniform(-_LOG_DENSITY_RANGE, _LOG_DENSITY_RANGE, n_sources)
    density_direction = _unit_rows(_centred_rows(rng.standard_normal((1, n_states))))
    protocol = source_effect * _PROTOCOL_LOGIT_SPREAD * rng.standard_normal((n_sources, n_states))
    source_logits = reference_logits + log_density[:, None] * density_direction + protocol
    batch_noise = batch_effect * _BATCH_LOGIT_SPREAD * rng.standard_normal((len(design.batches), n_states))
    return source_logits[design.batch_source] + batch_noise, _TYPICAL_CELLS_PER_WELL * np.exp(log_density)


def _group_rotations(
    group_members: list[np.ndarray], n_sources: int, angle: float, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """A random rotation per source and feature group, moving a share ``angle`` of each feature to the others."""

    def rotation(size: int) -> np.ndarray:
        generator = rng.standard_normal((size, size))
        return expm(angle * (generator - generator.T) / np.sqrt(2 * size))

    return [[rotation(members.size) for members in group_members] for _ in range(n_sources)]


def _response_curves(
    n_sources: int, n_features: int, source_effect: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slope, midpoint and gain of every source's response curve of every feature."""
    feature_slope = _CURVE_SLOPE * rng.lognormal(0.0, _SLOPE_SPREAD[0], n_features)
    slope = feature_slope * rng.lognormal(0.0, source_effect * _SLOPE_SPREAD[1], (n_sources, n_features))
    feature_midpoint = rng.normal(0.0, _MIDPOINT_SPREAD[0], n_features)
    midpoint = feature_midpoint + source_effect * rng.normal(0.0, _MIDPOINT_SPREAD[1], (n_sources, n_features))
    gain = rng.lognormal(0.0, source_effect * _GAIN_SPREAD, (n_sources, n_features))
    return slope, midpoint, gain


def response_curve(values: np.ndarray, slope: np.ndarray, midpoint: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Monotone saturating response ``4 gain / slope · (σ(slope (x − midpoint)) − σ(−slope · midpoint))``.

    Zero at ``x = 0`` (the DMSO reference), slope ``gain`` at the midpoint, bounded by ``±4 gain / slope``.
    """
    return 4.0 * gain / slope * (expit(slope * (values - midpoint)) - expit(-slope * midpoint))


def make_population_model(
    var: pd.DataFrame,
    design: StudyDesign,
    *,
    n_states: int,
    n_latent: int,
    effect_size: float,
    compound_deviation: float,
    source_effect: float,
    batch_effect: float,
    position_effect: float,
    rng: np.random.Generator,
) -> PopulationModel:
    """Draw the study-wide parameters of the cell-population model (see the module docstring)."""
    n_features, n_sources = len(var), len(design.sources)
    loadings, groups = _feature_loadings(var, n_latent, rng)
    group_members = [np.flatnonzero(groups == group) for group in range(groups.max() + 1)]
    state_means = _STATE_SEPARATION * rng.standard_normal((n_states, n_latent))
    reference_logits = _centred_rows(rng.standard_normal((1, n_states)))[0]
    reference_logits[0] += _DOMINANT_STATE_LOGIT
    logit_shift, potency, moa_state_shift = _compound_actions(
        design, n_states, n_latent, effect_size, compound_deviation, rng
    )
    # Expected latent profile of every compound at the reference proportions; compound 0 is DMSO.
    proportions = softmax(reference_logits + logit_shift, axis=1)
    expected_latent = _mixture_mean(proportions, state_means, potency, moa_state_shift[design.compound_moa])
    batch_logits, source_cells = _baselines(design, reference_logits, source_effect, batch_effect, rng)
    slope, midpoint, gain = _response_curves(n_sources, n_features, source_effect, rng)
    is_bounded = (var["measurement"] == "Correlation").to_numpy()
    common_edge = rng.standard_normal(len(group_members))
    # At batch_effect=1, ±35% batch and ±16% plate shifts of the raw values per feature group.
    return PopulationModel(
        feature_group=groups,
        group_members=group_members,
        loadings=loadings,
        state_means=state_means,
        state_spread=rng.uniform(*_CELL_SPREAD, n_states),
        reference_latent=expected_latent[0],
        batch_logits=batch_logits,
        source_cells=source_cells,
        compound_logit_shift=logit_shift,
        compound_potency=potency,
        moa_state_shift=moa_state_shift,
        true_biology=expected_latent - expected_latent[0],
        source_rotations=_group_rotations(group_members, n_sources, source_effect * _MIXING_ANGLE, rng),
        group_noise_loading=rng.uniform(*_GROUP_NOISE_LOADING, n_features),
        curve_slope=slope,
        curve_midpoint=midpoint,
        curve_gain=gain,
        source_edge=position_effect
        * _EDGE
        * (common_edge + source_effect * rng.standard_normal((n_sources, len(group_members)))),
        gradient_scale=_GRADIENT * position_effect,
        log_level=np.where(is_bounded, rng.uniform(*_LOGIT_LEVEL, n_features), rng.uniform(*_LOG_LEVEL, n_features)),
        log_spread=rng.uniform(*_LOG_SPREAD, n_features),
        is_bounded=is_bounded,
        batch_shift=rng.normal(0.0, 0.3 * batch_effect, (len(design.batches), len(group_members))),
        plate_shift_scale=0.15 * batch_effect,
    )


def _well_populations(
    model: PopulationModel, design: StudyDesign, plate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Latent mean of every well's cells relative to the DMSO reference, and its sampling noise SD."""
    batch = design.plate_batch[plate]
    source = design.batch_source[batch]
    compounds = design.well_compound[plate]
    n_wells, n_states = compounds.size, model.state_means.shape[0]
    logits = model.batch_logits[batch] + model.compound_logit_shift[compounds]
    logits += rng.normal(0.0, _WELL_LOGIT_SPREAD, (n_wells, n_states))
    expected_cells = model.source_cells[source] * rng.lognormal(0.0, _WELL_DENSITY_SPREAD, n_wells)
    n_cells = np.maximum(rng.poisson(expected_cells), 1)
    counts = rng.multinomial(n_cells, softmax(logits, axis=1))
    shifts = model.moa_state_shift[design.compound_moa[compounds]]
    fractions = counts / n_cells[:, None]
    latent = _mixture_mean(fractions, model.state_means, model.compound_potency[compounds], shifts)
    latent -= model.reference_latent
    sampling_sd = np.sqrt(counts @ model.state_spread**2) / n_cells
    return latent + sampling_sd[:, None] * rng.standard_normal(latent.shape), sampling_sd


def _mix_within_groups(values: np.ndarray, group_members: list[np.ndarray], rotations: list[np.ndarray]) -> np.ndarray:
    """Rotate the features of every group by the source's rotation of that group."""
    mixed = np.empty_like(values)
    for members, rotation in zip(group_members, rotations, strict=True):
        mixed[:, members] = values[:, members] @ rotation.T
    return mixed


def _position_effect(
    model: PopulationModel, geometry: PlateGeometry, source: int, rng: np.random.Generator
) -> np.ndarray:
    """Edge effect of the source plus this plate's row and column gradients, per well and feature group."""
    row_slope, column_slope = rng.normal(0.0, model.gradient_scale, (2, len(model.group_members)))
    edge = np.outer(geometry.is_edge, model.source_edge[source])
    return edge + np.outer(geometry.centred_rows, row_slope) + np.outer(geometry.centred_columns, column_slope)


def simulate_population_plate(
    model: PopulationModel, design: StudyDesign, plate: int, nonfinite_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Raw features (wells × features, float32) and true biology (wells × latent) of one plate."""
    batch = design.plate_batch[plate]
    source = design.batch_source[batch]
    groups = model.feature_group
    n_wells, n_features = design.geometry.n_wells, groups.size

    latent, sampling_sd = _well_populations(model, design, plate, rng)
    features = latent @ model.loadings.T + sampling_sd[:, None] * rng.standard_normal((n_wells, n_features))
    features = _mix_within_groups(features, model.group_members, model.source_rotations[source])
    group_noise = rng.standard_normal((n_wells, len(model.group_members)))[:, groups] * model.group_noise_loading
    own_noise = rng.standard_normal((n_wells, n_features)) * np.sqrt(1.0 - model.group_noise_loading**2)
    features += _TECHNICAL_NOISE * (group_noise + own_noise)

    response = response_curve(
        features, model.curve_slope[source], model.curve_midpoint[source], model.curve_gain[source]
    )
    response += _position_effect(model, design.geometry, source, rng)[:, groups]
    plate_shift = rng.normal(0.0, model.plate_shift_scale, len(model.group_members))
    log_values = model.log_level + model.log_spread * response + model.batch_shift[batch, groups] + plate_shift[groups]
    values = np.where(model.is_bounded, expit(log_values), np.exp(log_values)).astype(np.float32)
    _insert_nonfinite(values, nonfinite_fraction, rng)
    return values, model.true_biology[design.well_compound[plate]].astype(np.float32)


def _plates(
    model: PopulationModel, design: StudyDesign, nonfinite_fraction: float, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Simulate the plates one after the other, each from its own random stream."""
    for plate in tqdm(range(len(design.plates)), desc="simulating plates", unit="plate", disable=None):
        rng = np.random.default_rng([seed, _PLATE_STREAM, plate])
        yield simulate_population_plate(model, design, plate, nonfinite_fraction, rng)


def simulate_cell_populations(
    n_sources: int = 4,
    n_batches_per_source: int = 2,
    n_plates_per_batch: int = 2,
    *,
    plate_format: int = 384,
    n_compounds: int = 300,
    n_moas: int = 30,
    n_features: int | Sequence[str] = 1000,
    n_negcon_per_plate: int | None = None,
    n_poscon_per_plate: int | None = None,
    shared_compound_fraction: float = 0.2,
    effect_size: float = 1.0,
    compound_deviation: float = 0.5,
    n_states: int = 8,
    n_latent: int = 16,
    source_effect: float = 1.0,
    batch_effect: float = 1.0,
    position_effect: float = 1.0,
    nonfinite_fraction: float = 1e-4,
    seed: int = 0,
) -> AnnData:
    """Simulate raw per-well Cell Painting profiles of a JUMP-like screen in which wells are mixtures of cell states.

    The study design and output are those of :func:`~cpembed.datasets.simulate_profiles` (the same obs for the same
    seed and design arguments), the generative mechanism is another: every well is a population of cells in a few
    discrete states (say interphase, mitotic, apoptotic, senescent), and its profile is the mean over its cells.
    Compounds change the proportions of the states, so the well mean moves non-linearly with potency along a softmax
    mixture, and shift the states' mean profiles a little. Sources differ in their cells (seeding density and
    protocol set the baseline proportions, so the same compound moves the well mean differently in every source)
    and in their measurement (a saturating response curve per feature and a mixing of related features), which
    per-plate normalisation to DMSO does not remove; batch and plate shifts, edge effects and plate gradients come
    on top (see Notes). A batch-correction method should do well on both simulators, not on one only.

    Parameters
    ----------
    n_sources
        Number of sources (laboratories), named and equipped with microscopes as the JUMP compound sources.
    n_batches_per_source
        Batches imaged by each source.
    n_plates_per_batch
        Plates per batch.
    plate_format
        96 or 384 wells per plate (JUMP: 384).
    n_compounds
        Screened compounds (besides DMSO and the positive controls). Every source screens at least one.
    n_moas
        MoA classes of the screened compounds, named after the JUMP-MOA labels, then ``MoA_045`` ….
    n_features
        Number of features spread evenly over a catalogue of 3,423 CellProfiler-style names, or a list of
        CellProfiler feature names (they must parse with :func:`cpembed.io.parse_feature_names`).
    n_negcon_per_plate
        DMSO wells per plate; default 32 on 384-well plates, 8 on 96-well plates.
    n_poscon_per_plate
        Positive-control wells per plate, cycling over the 8 JUMP positive-control compounds; default 16 on 384-well
        plates, 8 on 96-well plates. Every plate of every source carries them.
    shared_compound_fraction
        Share of compounds screened by 2 to ``n_sources`` sources instead of one.
    effect_size
        Median compound potency: a compound of potency 1 shifts the log-odds of the cell states by a vector of norm
        2 (and the state means by about 0.3 noise SD per feature); potencies are log-normal around ``effect_size``,
        positive controls have 3 times it. At 1, a median compound moves a feature by about one DMSO well-to-well SD.
    compound_deviation
        How far a compound's log-odds direction strays from its MoA direction (0: all compounds of an MoA agree).
    n_states
        Number of cell states (at least 2).
    n_latent
        Dimension of the latent space of the states' mean profiles.
    source_effect
        Strength of the source-specific differences that survive per-plate normalisation: cell density and protocol
        (baseline state proportions), response curves, feature mixing and edge effects. At 0 sources differ only by
        terms that per-plate normalisation removes, besides the batches' baselines and plate gradients.
    batch_effect
        Strength of batch and plate shifts of the raw values and of the batch-to-batch variation of the baseline
        state proportions.
    position_effect
        Strength of edge-well effects and plate row/column gradients.
    nonfinite_fraction
        Fraction of entries replaced by NaN (nine in ten) or +inf.
    seed
        Seed of the random streams; the same seed gives the same study.

    Returns
    -------
    AnnData of wells × features with

    - ``X``: raw feature values, float32, positive (Correlation features in (0, 1)), with a few NaN/inf;
    - ``obs``: the columns of :func:`~cpembed.datasets.simulate_profiles` (``Metadata_Source``,
      ``Metadata_Microscope``, ``Metadata_Batch``, ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Row``,
      ``Metadata_Column``, ``Metadata_Compound``, ``Metadata_moa``, ``Metadata_is_negcon``,
      ``Metadata_is_poscon``);
    - ``var``: :func:`~cpembed.io.parse_feature_names` of the feature names;
    - ``obsm["true_biology"]``: the compound's effect on the expected latent well mean at the reference baseline
      proportions (the same in every source and batch; zero for DMSO);
    - ``uns["simulate_cell_populations"]["params"]``: the arguments.

    Notes
    -----
    *Cell states.* ``K`` states have mean latent profiles ``m_k`` (spread by 3 DMSO noise SDs per feature) and
    cell-to-cell spreads ``σ_k``. Reference log-odds ``β_0`` give the first state the largest share (about 40%).
    A source seeds ``ρ_s`` cells per well (around 700, within a factor e^±0.7) and its baseline log-odds are ``β_0``
    moved along a density direction by ``log(ρ_s / 700)`` plus a protocol deviation; batches scatter around their
    source.

    *Compounds.* Compound ``c`` of MoA ``a`` and log-normal potency ``a_c`` shifts the log-odds by ``a_c · d_c``,
    ``d_c`` its MoA's direction plus a compound deviation, and the state means by ``a_c · t_ak``. The proportions
    ``π_i = softmax(β_b + a_c d_c + ε_i)`` (``ε_i`` the well's own variation) saturate with potency, and the
    change of the well mean depends on the baseline, so on the source.

    *Wells.* A well holds ``n_i ~ Poisson(ρ_s e^η)`` cells, split ``Multinomial(n_i, π_i)`` over the states; its
    latent profile is the count-weighted mean of the (shifted) state means plus sampling noise of SD
    ``sqrt(Σ_k n_ik σ_k²) / n_i``. No single cell is simulated. ``obsm["true_biology"]`` is the expected latent
    profile of the compound at ``β_0`` minus that of DMSO.

    *Measurement.* Loadings ``W`` with a part shared within each compartment × channel group map the latent profile
    (minus DMSO's at ``β_0``) to features; a random rotation per source and group (about 40° per feature at
    ``source_effect=1``) mixes related features (segmentation and optics); technical noise shares a factor within
    each group. Each source reads each feature through a monotone saturating logistic curve with its own slope,
    midpoint and gain. The source's edge effect and the plate's row and column gradients follow, then the raw value
    ``exp(μ_f + τ_f · h + batch_bg + plate_pg)`` (a logistic for the Correlation features), with ``μ_f`` the
    feature's level and ``τ_f`` its DMSO coefficient of variation (5-30%).

    Per-plate normalisation to DMSO removes the batch and plate shifts and the DMSO baseline of every source; the
    source-dependent response of the mixture, the curves, rotations and edge effects remain.

    References
    ----------
    Chandrasekaran, S. N. et al. JUMP Cell Painting dataset: morphological impact of 136,000 chemical and genetic
    perturbations. *bioRxiv* 2023.03.23.534023 (2023).

    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling. *Nature Communications*
    15, 6516 (2024).

    Loo, L.-H. et al. An approach for extensibly profiling the molecular states of cellular subpopulations.
    *Nature Methods* 6, 759–765 (2009).

    Snijder, B. et al. Population context determines cell-to-cell variability in endocytosis and virus infection.
    *Nature* 461, 520–523 (2009).

    Examples
    --------
    >>> import cpembed as cpe
    >>> adata = cpe.datasets.simulate_cell_populations(
    ...     n_sources=2, n_batches_per_source=1, n_plates_per_batch=2, n_features=50
    ... )
    >>> adata.shape
    (1536, 50)
    """
    if n_states < 2:
        raise ValueError(f"n_states must be at least 2, got {n_states}.")
    scales = {
        "effect_size": effect_size,
        "compound_deviation": compound_deviation,
        "source_effect": source_effect,
        "batch_effect": batch_effect,
        "position_effect": position_effect,
    }
    study = laid_out_study(
        n_sources=n_sources,
        n_batches_per_source=n_batches_per_source,
        n_plates_per_batch=n_plates_per_batch,
        plate_format=plate_format,
        n_compounds=n_compounds,
        n_moas=n_moas,
        n_features=n_features,
        n_negcon_per_plate=n_negcon_per_plate,
        n_poscon_per_plate=n_poscon_per_plate,
        shared_compound_fraction=shared_compound_fraction,
        n_latent=n_latent,
        nonfinite_fraction=nonfinite_fraction,
        scales=scales,
        seed=seed,
    )
    var, design = study.var, study.design
    model = make_population_model(
        var,
        design,
        n_states=n_states,
        n_latent=n_latent,
        effect_size=effect_size,
        compound_deviation=compound_deviation,
        source_effect=source_effect,
        batch_effect=batch_effect,
        position_effect=position_effect,
        rng=np.random.default_rng([seed, _MODEL_STREAM]),
    )
    params = {**study.params, "n_states": n_states}
    adata = AnnData(obs=design.obs(), var=var, uns={"simulate_cell_populations": {"params": params}})
    _fill_in_memory(adata, _plates(model, design, nonfinite_fraction, seed), n_latent)
    return adata
