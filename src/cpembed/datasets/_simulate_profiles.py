"""``simulate_profiles``: a JUMP-like multi-source Cell Painting study with ground truth, in memory or on disk."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from cpembed.io import parse_feature_names

from ._feature_catalogue import select_feature_names
from ._plate_layout import DEFAULT_NEGCON_WELLS, DEFAULT_POSCON_WELLS, plate_geometry
from ._profile_model import ProfileModel, make_profile_model, simulate_plate
from ._study_design import StudyDesign, make_study_design

BIOLOGY_KEY = "true_biology"
_DESIGN_STREAM, _MODEL_STREAM, _PLATE_STREAM = 0, 1, 2
# HDF5 storage block of X on disk: row blocks of about 1 MiB keep backed row slicing cheap.
_BLOCK_BYTES = 2**20


def _check_arguments(
    *,
    n_sources: int,
    n_batches_per_source: int,
    n_plates_per_batch: int,
    n_wells: int,
    n_compounds: int,
    n_moas: int,
    n_negcon_per_plate: int,
    n_poscon_per_plate: int,
    n_latent: int,
    shared_compound_fraction: float,
    nonfinite_fraction: float,
    scales: dict[str, float],
) -> None:
    """Raise a ValueError naming the first argument that cannot describe a study."""
    counts = {
        "n_sources": n_sources,
        "n_batches_per_source": n_batches_per_source,
        "n_plates_per_batch": n_plates_per_batch,
        "n_moas": n_moas,
        "n_negcon_per_plate": n_negcon_per_plate,
        "n_latent": n_latent,
    }
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if n_poscon_per_plate < 0:
        raise ValueError(f"n_poscon_per_plate must be at least 0, got {n_poscon_per_plate}.")
    if n_negcon_per_plate + n_poscon_per_plate >= n_wells:
        raise ValueError(
            f"{n_negcon_per_plate} negative- plus {n_poscon_per_plate} positive-control wells leave no well for "
            f"compounds on a {n_wells}-well plate; lower n_negcon_per_plate or n_poscon_per_plate."
        )
    if n_compounds < n_sources:
        raise ValueError(f"n_compounds ({n_compounds}) must be at least n_sources ({n_sources}).")
    if n_moas > n_compounds:
        raise ValueError(f"n_moas ({n_moas}) cannot exceed n_compounds ({n_compounds}).")
    for name, value in {"shared_compound_fraction": shared_compound_fraction, **scales}.items():
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value}.")
    if shared_compound_fraction > 1:
        raise ValueError(f"shared_compound_fraction must lie in [0, 1], got {shared_compound_fraction}.")
    if not 0 <= nonfinite_fraction < 1:
        raise ValueError(f"nonfinite_fraction must lie in [0, 1), got {nonfinite_fraction}.")


def _feature_names(n_features: int | Sequence[str]) -> list[str]:
    if isinstance(n_features, int | np.integer):
        return select_feature_names(int(n_features))
    names = [str(name) for name in n_features]
    if not names or len(set(names)) != len(names):
        raise ValueError("n_features given as names must be a non-empty list of unique CellProfiler feature names.")
    return names


@dataclass(frozen=True)
class LaidOutStudy:
    """The checked layout of a simulated study, shared by the simulator families."""

    var: pd.DataFrame
    design: StudyDesign
    params: dict[str, object]


def laid_out_study(
    *,
    n_sources: int,
    n_batches_per_source: int,
    n_plates_per_batch: int,
    plate_format: int,
    n_compounds: int,
    n_moas: int,
    n_features: int | Sequence[str],
    n_negcon_per_plate: int | None,
    n_poscon_per_plate: int | None,
    shared_compound_fraction: float,
    n_latent: int,
    nonfinite_fraction: float,
    scales: dict[str, float],
    seed: int,
) -> LaidOutStudy:
    """Check the arguments, name the features and lay out the study (the design stream of ``seed``).

    ``params`` records the arguments as the simulators write them to ``.uns`` (the control-well counts resolved).
    """
    geometry = plate_geometry(plate_format)
    n_negcon = DEFAULT_NEGCON_WELLS[plate_format] if n_negcon_per_plate is None else n_negcon_per_plate
    n_poscon = DEFAULT_POSCON_WELLS[plate_format] if n_poscon_per_plate is None else n_poscon_per_plate
    _check_arguments(
        n_sources=n_sources,
        n_batches_per_source=n_batches_per_source,
        n_plates_per_batch=n_plates_per_batch,
        n_wells=geometry.n_wells,
        n_compounds=n_compounds,
        n_moas=n_moas,
        n_negcon_per_plate=n_negcon,
        n_poscon_per_plate=n_poscon,
        n_latent=n_latent,
        shared_compound_fraction=shared_compound_fraction,
        nonfinite_fraction=nonfinite_fraction,
        scales=scales,
    )
    var = parse_feature_names(_feature_names(n_features))
    design = make_study_design(
        n_sources=n_sources,
        n_batches_per_source=n_batches_per_source,
        n_plates_per_batch=n_plates_per_batch,
        geometry=geometry,
        n_compounds=n_compounds,
        n_moas=n_moas,
        n_negcon_per_plate=n_negcon,
        n_poscon_per_plate=n_poscon,
        shared_compound_fraction=shared_compound_fraction,
        rng=np.random.default_rng([seed, _DESIGN_STREAM]),
    )
    params = {
        "n_sources": n_sources,
        "n_batches_per_source": n_batches_per_source,
        "n_plates_per_batch": n_plates_per_batch,
        "plate_format": plate_format,
        "n_compounds": n_compounds,
        "n_moas": n_moas,
        "n_features": len(var),
        "n_negcon_per_plate": n_negcon,
        "n_poscon_per_plate": n_poscon,
        "shared_compound_fraction": shared_compound_fraction,
        "n_latent": n_latent,
        "nonfinite_fraction": nonfinite_fraction,
        "seed": seed,
        **scales,
    }
    return LaidOutStudy(var=var, design=design, params=params)


def _plates(
    model: ProfileModel, design: StudyDesign, nonfinite_fraction: float, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Simulate the plates one after the other, each from its own random stream (so any subset is reproducible)."""
    for plate in tqdm(range(len(design.plates)), desc="simulating plates", unit="plate", disable=None):
        rng = np.random.default_rng([seed, _PLATE_STREAM, plate])
        yield simulate_plate(model, design, plate, nonfinite_fraction, rng)


def _create_dense(group: h5py.Group, name: str, shape: tuple[int, int]) -> h5py.Dataset:
    """An empty float32 dataset that anndata reads as a dense array, stored in row blocks of about 1 MiB."""
    rows_per_block = int(np.clip(_BLOCK_BYTES // (4 * shape[1]), 1, shape[0]))
    dataset = group.create_dataset(name, shape=shape, dtype="float32", chunks=(rows_per_block, shape[1]))
    dataset.attrs["encoding-type"] = "array"
    dataset.attrs["encoding-version"] = "0.2.0"
    return dataset


def _write_h5ad(
    path: Path, skeleton: AnnData, plates: Iterator[tuple[np.ndarray, np.ndarray]], n_latent: int, rows_per_chunk: int
) -> None:
    """Write the metadata, then fill ``X`` and ``obsm`` from a buffer of ``rows_per_chunk`` wells of plates.

    Memory holds one chunk and one plate, not the study.
    """
    skeleton.write_h5ad(path)
    chunk_values = np.empty((rows_per_chunk, skeleton.n_vars), dtype=np.float32)
    chunk_biology = np.empty((rows_per_chunk, n_latent), dtype=np.float32)
    with h5py.File(path, "r+") as file:
        features = _create_dense(file, "X", skeleton.shape)
        biology = _create_dense(file["obsm"], BIOLOGY_KEY, (skeleton.n_obs, n_latent))
        written, filled = 0, 0
        for values, latent in plates:
            chunk_values[filled : filled + len(values)] = values
            chunk_biology[filled : filled + len(values)] = latent
            filled += len(values)
            if filled == rows_per_chunk or written + filled == skeleton.n_obs:
                features[written : written + filled] = chunk_values[:filled]
                biology[written : written + filled] = chunk_biology[:filled]
                written, filled = written + filled, 0


def _fill_in_memory(adata: AnnData, plates: Iterator[tuple[np.ndarray, np.ndarray]], n_latent: int) -> None:
    """Set ``X`` and ``obsm`` of ``adata`` from the plates, filled into arrays allocated once."""
    values = np.empty(adata.shape, dtype=np.float32)
    biology = np.empty((adata.n_obs, n_latent), dtype=np.float32)
    start = 0
    for plate_values, plate_biology in plates:
        values[start : start + len(plate_values)] = plate_values
        biology[start : start + len(plate_values)] = plate_biology
        start += len(plate_values)
    adata.X = values
    adata.obsm[BIOLOGY_KEY] = biology


def simulate_profiles(
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
    n_latent: int = 16,
    source_effect: float = 1.0,
    batch_effect: float = 1.0,
    position_effect: float = 1.0,
    nonfinite_fraction: float = 1e-4,
    seed: int = 0,
    path: str | Path | None = None,
    chunk_size: int = 4096,
) -> AnnData:
    """Simulate raw per-well Cell Painting profiles of a JUMP-like multi-source compound screen with ground truth.

    Sources (laboratories, each with its microscope) image batches of plates. Every plate carries DMSO
    negative-control wells and positive-control wells scattered by the source's plate map; the other wells hold
    compounds, each with a mechanism of action (MoA). Every compound is screened by one source, a share of them by
    several. Features are CellProfiler-style per-well means (5 dyes × 3 compartments; AreaShape, Intensity,
    Texture, Granularity, RadialDistribution and Correlation), raw, positive and skewed, with strongly correlated
    groups and a few NaN/inf values.

    The biology (a latent effect per compound: its MoA direction plus a compound deviation, times its potency) is
    seen through source-specific, feature-specific and non-linear technology, so source effects survive per-plate
    robust normalisation to DMSO, as in the JUMP data (Arevalo et al. 2024); batch and plate shifts, microscope
    gains, edge effects, plate gradients and noise come on top (see Notes).

    The defaults describe a small study of JUMP's shape (JUMP cpg0016 has 11 compound sources with ~12 batches each
    and ~10 plates per batch, 1,876 compound plates; Chandrasekaran et al. 2023) that simulates in seconds.
    ``n_sources=11, n_batches_per_source=12, n_plates_per_batch=16, n_compounds=100_000, n_features=3255`` with
    ``path=`` gives a JUMP-sized study (811,008 wells) written plate by plate.

    Parameters
    ----------
    n_sources
        Number of sources. The first 11 are the JUMP compound sources (``source_1`` … ``source_15``) with their
        microscopes (Opera Phenix, CV8000, CV7000, ImageXpress Micro Confocal, Operetta); further sources reuse
        these microscopes.
    n_batches_per_source
        Batches imaged by each source.
    n_plates_per_batch
        Plates per batch.
    plate_format
        96 or 384 wells per plate (JUMP: 384).
    n_compounds
        Screened compounds (besides DMSO and the positive controls). Every source screens at least one.
    n_moas
        MoA classes of the screened compounds; named after the 44 MoA labels of the JUMP-MOA plate, then
        ``MoA_045`` …. The JUMP-MOA plate has 90 compounds in 47 MoAs.
    n_features
        Number of features spread evenly over a catalogue of 3,423 CellProfiler-style names, or a list of
        CellProfiler feature names (they must parse with :func:`cpembed.io.parse_feature_names`).
    n_negcon_per_plate
        DMSO wells per plate; default 32 on 384-well plates (JUMP compound plates carry 16-64), 8 on 96-well plates.
    n_poscon_per_plate
        Positive-control wells per plate, cycling over the 8 JUMP positive-control compounds (AMG900,
        dexamethasone, FK-866, LY2109761, NVS-PAK1-1, quinidine, TC-S-7004, aloxistatin; the first ones only when
        fewer wells are asked for); default 16 on 384-well plates (each twice), 8 on 96-well plates. Their
        ``Metadata_moa`` is the compound's annotated MoA (e.g. ``Aurora kinase inhibitor``).
    shared_compound_fraction
        Share of compounds screened by 2 to ``n_sources`` sources instead of one (in JUMP about 8% of compounds
        were screened by more than one source; the default is higher so that cross-source retrieval can be scored).
    effect_size
        Median compound effect in units of the well-to-well noise standard deviation of a feature; potencies are
        log-normal around it and positive controls have 3 times this effect.
    compound_deviation
        How far a compound's effect direction strays from its MoA direction (0: all compounds of an MoA agree).
    n_latent
        Dimension of the latent biology.
    source_effect
        Strength of the source- and microscope-specific distortions (loadings, per-feature gains, non-linearities,
        detector saturation, edge effects) that survive per-plate normalisation; 0 makes sources differ only by
        terms that per-plate normalisation removes, besides position effects.
    batch_effect
        Strength of batch and plate shifts and of the batch-to-batch variation of the biological response.
    position_effect
        Strength of edge-well effects and plate row/column gradients.
    nonfinite_fraction
        Fraction of entries replaced by NaN (nine in ten) or +inf.
    seed
        Seed of the random streams; the same seed gives the same study, in memory or on disk.
    path
        Where to write an ``.h5ad`` file. The study is then generated and written ``chunk_size`` wells at a time,
        so memory holds one chunk, not the study; the file is returned opened with ``backed="r"``.
    chunk_size
        Wells generated and written at a time with ``path`` (rounded down to whole plates, at least one plate).

    Returns
    -------
    AnnData of wells × features (backed when ``path`` is given) with

    - ``X``: raw feature values, float32, with a few NaN/inf;
    - ``obs``: ``Metadata_Source``, ``Metadata_Microscope``, ``Metadata_Batch``, ``Metadata_Plate``,
      ``Metadata_Well`` (``A01`` …), ``Metadata_Row`` (``A`` …), ``Metadata_Column`` (1 …) and
      ``Metadata_Compound`` (``DMSO`` for negative controls), ``Metadata_moa`` (``DMSO`` for negative controls),
      categorical; ``Metadata_is_negcon``, ``Metadata_is_poscon`` (bool);
    - ``var``: :func:`~cpembed.io.parse_feature_names` of the feature names;
    - ``obsm["true_biology"]``: the clean latent biological effect of every well (zero for DMSO);
    - ``uns["simulate_profiles"]["params"]``: the arguments.

    Notes
    -----
    Each well gets a latent biological effect ``z`` (``obsm["true_biology"]``): its compound's MoA direction plus a
    compound deviation, plus a response shared by all compounds, times the compound's log-normal potency and the
    batch's response. A feature's latent value is ``W_sf · z`` plus unit noise shared within its compartment × dye
    group and across all features (so many features are redundant), plus the source's edge effect and the plate's
    row/column gradients. The loadings ``W_sf`` differ per microscope and per source, with per-feature gains. The
    source bends each feature group by its own monotone sinh-arcsinh transform (Jones & Pewsey 2009); the result is
    the log of the raw value (a logistic for the bounded Correlation features), shifted per batch, plate and
    microscope channel gain, and Intensity features saturate softly at the microscope's detector. The batch, plate
    and gain shifts are what per-plate normalisation removes; the loadings, gains, bends, saturation and edge
    effects it does not.

    References
    ----------
    Chandrasekaran, S. N. et al. JUMP Cell Painting dataset: morphological impact of 136,000 chemical and genetic
    perturbations. *bioRxiv* 2023.03.23.534023 (2023).

    Arevalo, J. et al. Evaluating batch correction methods for image-based cell profiling. *Nature Communications*
    15, 6516 (2024).

    Jones, M. C. & Pewsey, A. Sinh-arcsinh distributions. *Biometrika* 96, 761–780 (2009).

    Examples
    --------
    >>> import cpembed as cpe
    >>> adata = cpe.datasets.simulate_profiles(n_sources=2, n_batches_per_source=1, n_plates_per_batch=2, n_features=50)
    >>> adata.shape
    (1536, 50)
    """
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
        scales={
            "effect_size": effect_size,
            "compound_deviation": compound_deviation,
            "source_effect": source_effect,
            "batch_effect": batch_effect,
            "position_effect": position_effect,
        },
        seed=seed,
    )
    var, design = study.var, study.design
    model = make_profile_model(
        var,
        design,
        n_latent=n_latent,
        effect_size=effect_size,
        compound_deviation=compound_deviation,
        source_effect=source_effect,
        batch_effect=batch_effect,
        position_effect=position_effect,
        rng=np.random.default_rng([seed, _MODEL_STREAM]),
    )
    adata = AnnData(obs=design.obs(), var=var, uns={"simulate_profiles": {"params": study.params}})
    plates = _plates(model, design, nonfinite_fraction, seed)
    if path is not None:
        rows_per_chunk = max(1, chunk_size // design.geometry.n_wells) * design.geometry.n_wells
        _write_h5ad(Path(path), adata, plates, n_latent, min(rows_per_chunk, adata.n_obs))
        return ad.read_h5ad(path, backed="r")
    _fill_in_memory(adata, plates, n_latent)
    return adata
