"""Simulated 5-channel Cell Painting fields with known perturbation, MoA and plate/batch effects.

Biology: each field holds cells (nucleus, cytoplasm, membrane) drawn in the five Cell Painting stains of
Bray et al. 2016: DNA (Hoechst: nuclei with chromatin texture), ER (concanavalin A: perinuclear reticular
texture), RNA (SYTO 14: nucleoli and faint cytoplasm), AGP (phalloidin/WGA: cell borders) and Mito (MitoTracker:
cytoplasmic puncta). A perturbation scales morphological parameters (cell count, nucleus and cell size, nucleus
elongation, stain intensities, ER texture scale, nucleoli and mitochondria counts); perturbations of the same MoA
share a direction. Technical effects come per batch and plate (channel gains, background, illumination
vignetting, blur, noise, DNA bleed-through into RNA), so embeddings can be scored on removing them.
Fields are converted from 16-bit to uint8 with :func:`cpembed.io._image_store.to_uint8` on one scale per plate, as
:func:`cpembed.io.build_image_store` converts real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..io._image_store import (
    IMAGE_INDEX_KEY,
    STORE_UNS_KEY,
    ImageStoreWriter,
    IntensityHistogram,
    check_intensity_scale,
    store_info,
    to_uint8,
)

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
CONTROL = "DMSO"
# Morphological parameters a perturbation changes, as log-multipliers of the control value.
PARAMETERS = (
    "cell_count",
    "nucleus_size",
    "nucleus_elongation",
    "cell_size",
    "dna_intensity",
    "er_intensity",
    "er_texture_scale",
    "rna_nucleoli",
    "agp_intensity",
    "mito_puncta",
)


@dataclass
class _Technical:
    """Imaging conditions of one plate (batch effects already folded in)."""

    gain: np.ndarray  # per channel
    background: np.ndarray  # per channel, share of the signal's scale
    vignette_strength: float
    vignette_centre: tuple[float, float]
    blur_sigma: float
    noise: float
    bleed_through: float  # share of DNA leaking into RNA


def _draw_technical(rng: np.random.Generator, batch_shift: _Technical, plate_effect: float) -> _Technical:
    scale = plate_effect
    return _Technical(
        gain=batch_shift.gain * np.exp(rng.normal(0.0, 0.15 * scale, len(CHANNELS))),
        background=np.clip(batch_shift.background + rng.normal(0.0, 0.03 * scale, len(CHANNELS)), 0.0, None),
        vignette_strength=float(np.clip(batch_shift.vignette_strength + rng.normal(0.0, 0.1 * scale), 0.0, 0.9)),
        vignette_centre=tuple(np.asarray(batch_shift.vignette_centre) + rng.normal(0.0, 0.1 * scale, 2)),
        blur_sigma=float(np.clip(batch_shift.blur_sigma + rng.normal(0.0, 0.3 * scale), 0.0, None)),
        noise=float(np.clip(batch_shift.noise * np.exp(rng.normal(0.0, 0.3 * scale)), 0.0, None)),
        bleed_through=float(np.clip(batch_shift.bleed_through + rng.normal(0.0, 0.05 * scale), 0.0, None)),
    )


def _draw_batch(rng: np.random.Generator, plate_effect: float) -> _Technical:
    scale = plate_effect
    return _Technical(
        gain=np.exp(rng.normal(0.0, 0.3 * scale, len(CHANNELS))),
        background=np.clip(0.05 + rng.normal(0.0, 0.05 * scale, len(CHANNELS)), 0.0, None),
        vignette_strength=float(np.clip(0.3 + rng.normal(0.0, 0.15 * scale), 0.0, 0.9)),
        vignette_centre=tuple(rng.normal(0.0, 0.2 * scale, 2)),
        blur_sigma=float(np.clip(0.5 + rng.normal(0.0, 0.4 * scale), 0.0, None)),
        noise=0.03 * float(np.exp(rng.normal(0.0, 0.4 * scale))),
        bleed_through=float(np.clip(0.05 + rng.normal(0.0, 0.08 * scale), 0.0, None)),
    )


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-8)


def _place_cells(rng: np.random.Generator, n_cells: int, size: int, min_distance: float) -> np.ndarray:
    """Cell centres uniform in the field, rejecting those closer than ``min_distance`` to a placed one."""
    centres: list[np.ndarray] = []
    for _ in range(n_cells * 30):
        if len(centres) == n_cells:
            break
        candidate = rng.uniform(0, size, 2)
        if all(np.hypot(*(candidate - c)) >= min_distance for c in centres):
            centres.append(candidate)
    return np.array(centres).reshape(-1, 2)


def _draw_cells(rng: np.random.Generator, size: int, effect: dict[str, float], cells_per_field: float):
    """Nucleus and cell label images of one field (0 = background, cell i labelled i + 1 in both)."""
    nucleus_radius = size / 21 * np.exp(effect["nucleus_size"])
    cell_radius = nucleus_radius * 2.0 * np.exp(effect["cell_size"] - effect["nucleus_size"] / 2)
    n_cells = max(1, rng.poisson(cells_per_field * np.exp(effect["cell_count"])))
    centres = _place_cells(rng, n_cells, size, min_distance=1.2 * nucleus_radius)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    seeds = np.ones((size, size), dtype=bool)
    nuclei = np.zeros((size, size), dtype=np.int32)
    elongation = np.exp(effect["nucleus_elongation"] + rng.normal(0.0, 0.1, len(centres)))
    for label, (cy, cx) in enumerate(centres, start=1):
        radius = nucleus_radius * np.exp(rng.normal(0.0, 0.1))
        major, minor = radius * np.sqrt(elongation[label - 1]), radius / np.sqrt(elongation[label - 1])
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / major) ** 2 + (v / minor) ** 2 <= 1.0
        nuclei[inside & (nuclei == 0)] = label
        seeds[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))] = False
    distance, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    seed_labels = np.zeros((size, size), dtype=np.int32)
    for label, (cy, cx) in enumerate(centres, start=1):
        seed_labels[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))] = label
    cells = seed_labels[iy, ix]
    ragged = cell_radius * (1.0 + 0.15 * _smooth_noise(rng, size, size / 16))
    cells[distance > ragged] = 0
    cells[nuclei > 0] = nuclei[nuclei > 0]
    return nuclei, cells, distance


def _paint(rng, nuclei, cells, distance, effect, size):
    """The five stain images (float, control intensities around 1) of one field."""
    cytoplasm = (cells > 0) & (nuclei == 0)
    nucleus = nuclei > 0
    nucleus_radius = size / 21 * np.exp(effect["nucleus_size"])
    dna = nucleus * np.exp(effect["dna_intensity"]) * (1.0 + 0.15 * _smooth_noise(rng, size, 1.0))
    er_texture = _smooth_noise(rng, size, 1.5 * np.exp(effect["er_texture_scale"]))
    er = cytoplasm * np.exp(effect["er_intensity"]) * np.exp(-distance / (2.5 * nucleus_radius))
    er = er * np.clip(0.6 + 0.4 * er_texture, 0.0, None)
    nucleoli_points = nucleus & (rng.random(nucleus.shape) < 0.01 * np.exp(effect["rna_nucleoli"]))
    nucleoli = ndimage.gaussian_filter(nucleoli_points.astype(np.float32), 1.2) * 12.0
    rna = 0.25 * cytoplasm + nucleoli * nucleus
    borders = ndimage.morphological_gradient(cells, size=3) > 0
    agp = 0.9 * ndimage.gaussian_filter(borders.astype(np.float32), 0.8) * 3 + 0.15 * (cells > 0)
    agp = agp * np.exp(effect["agp_intensity"])
    puncta = cytoplasm & (rng.random(cytoplasm.shape) < 0.03 * np.exp(effect["mito_puncta"]))
    mito = ndimage.gaussian_filter(puncta.astype(np.float32), 1.0) * 8.0 + 0.1 * cytoplasm
    return np.stack([dna, er, rna, agp, mito]).astype(np.float32)


def _image_conditions(stains: np.ndarray, technical: _Technical, rng: np.random.Generator) -> np.ndarray:
    """Apply plate imaging conditions and return 16-bit intensities."""
    size = stains.shape[-1]
    stains = stains.copy()
    stains[2] += technical.bleed_through * stains[0]
    yy, xx = (np.mgrid[0:size, 0:size] / (size / 2) - 1.0).astype(np.float32)
    cy, cx = technical.vignette_centre
    vignette = 1.0 - technical.vignette_strength * ((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0
    image = stains * technical.gain[:, None, None] * np.clip(vignette, 0.05, None)
    if technical.blur_sigma > 0:
        image = ndimage.gaussian_filter(image, (0, technical.blur_sigma, technical.blur_sigma))
    image = image + technical.background[:, None, None]
    image = image + rng.normal(0.0, 1.0, image.shape) * technical.noise * np.sqrt(np.clip(image, 1e-3, None))
    return np.clip(image * 12000.0, 0, 65535).astype(np.uint16)


def _perturbation_table(rng, n_moas, perturbations_per_moa, effect_size) -> pd.DataFrame:
    rows = [{"perturbation": CONTROL, "moa": CONTROL, **dict.fromkeys(PARAMETERS, 0.0)}]
    for moa in range(n_moas):
        direction = rng.normal(0.0, 0.35 * effect_size, len(PARAMETERS))
        for index in range(perturbations_per_moa):
            strength = rng.uniform(0.7, 1.3)
            effect = direction * strength + rng.normal(0.0, 0.05 * effect_size, len(PARAMETERS))
            parameters = dict(zip(PARAMETERS, effect, strict=True))
            rows.append({"perturbation": f"cmpd_{moa}_{index}", "moa": f"moa_{moa}", **parameters})
    return pd.DataFrame(rows).set_index("perturbation")


def _layout(perturbations: pd.DataFrame, n_plates, n_batches, n_sites, control_wells_per_plate, rng) -> pd.DataFrame:
    """One row per field: every treated perturbation once per plate, controls ``control_wells_per_plate`` times."""
    treated = [p for p in perturbations.index if p != CONTROL]
    rows = []
    for plate in range(n_plates):
        contents = treated + [CONTROL] * control_wells_per_plate
        wells = rng.permutation(len(contents))
        for perturbation, well in zip(contents, wells, strict=True):
            well_name = f"{'ABCDEFGHIJKLMNOP'[well // 24]}{well % 24 + 1:02d}"
            for site in range(1, n_sites + 1):
                rows.append(
                    {
                        "Metadata_Batch": f"batch_{plate * n_batches // n_plates}",
                        "Metadata_Plate": f"plate_{plate}",
                        "Metadata_Well": f"plate_{plate}_{well_name}",
                        "Metadata_Site": site,
                        "Metadata_Perturbation": perturbation,
                        "Metadata_moa": perturbations.loc[perturbation, "moa"],
                        "Metadata_is_negcon": perturbation == CONTROL,
                    }
                )
    return pd.DataFrame(rows)


def simulate_images(
    path: str | Path,
    n_moas: int = 4,
    perturbations_per_moa: int = 2,
    *,
    n_plates: int = 4,
    n_batches: int = 2,
    n_sites: int = 2,
    control_wells_per_plate: int = 2,
    image_size: int = 96,
    cells_per_field: float = 10.0,
    effect_size: float = 1.0,
    plate_effect: float = 1.0,
    intensity_scale: str = "plate",
    seed: int = 0,
    overwrite: bool = False,
):
    """Simulate Cell Painting fields of view with ground truth and write them to an image store.

    Parameters
    ----------
    path
        HDF5 image store to create (layout in :mod:`cpembed.io`; includes ``masks/nuclei`` and ``masks/cells``).
    n_moas, perturbations_per_moa
        Mechanisms of action and compounds per MoA; a DMSO control is added.
    n_plates, n_batches
        Plates (each holds every compound once and ``control_wells_per_plate`` DMSO wells) split into batches.
    n_sites
        Fields per well.
    image_size
        Field side in pixels (5 channels).
    cells_per_field
        Mean cell count of a control field.
    effect_size, plate_effect
        Scale of the perturbation effects and of the batch/plate technical effects (0 switches them off).
    intensity_scale
        How the 16-bit fields become 8-bit, as in :func:`cpembed.io.build_image_store`: ``"plate"`` (default) with
        one per-channel scale per plate, so intensity phenotypes and plate gains reach the store; ``"field"``
        stretches every field on its own, erasing both.
    seed
        Seed of every random draw.
    overwrite
        Replace an existing store.

    Returns
    -------
    AnnData with one row per field and no features (``X`` is empty). ``obs``: ``Metadata_Batch``,
    ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Metadata_Perturbation`` ("DMSO" = control),
    ``Metadata_moa``, ``Metadata_is_negcon``, ``Metadata_n_cells`` and ``image_index`` (row in the store);
    ``uns["image_store"]`` (path, channels); ``uns["simulation"]["effects"]``: the per-perturbation log-multipliers.
    """
    import anndata as ad
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    perturbations = _perturbation_table(rng, n_moas, perturbations_per_moa, effect_size)
    obs = _layout(perturbations, n_plates, n_batches, n_sites, control_wells_per_plate, rng)
    batches = {batch: _draw_batch(rng, plate_effect) for batch in obs["Metadata_Batch"].unique()}
    plates = obs.drop_duplicates("Metadata_Plate").set_index("Metadata_Plate")["Metadata_Batch"]
    technical = {plate: _draw_technical(rng, batches[batch], plate_effect) for plate, batch in plates.items()}
    check_intensity_scale(intensity_scale)
    n_cells = np.zeros(len(obs), dtype=np.int64)
    progress = tqdm(total=len(obs), desc="simulating fields")
    with ImageStoreWriter(
        path,
        len(obs),
        CHANNELS,
        (image_size, image_size),
        with_masks=True,
        intensity_scale=intensity_scale,
        overwrite=overwrite,
    ) as writer:
        # One plate at a time (the layout lists fields plate by plate), so its 16-bit fields share their 8-bit scale.
        for plate, plate_obs in obs.groupby("Metadata_Plate", sort=False):
            fields = []
            histogram = IntensityHistogram() if intensity_scale == "plate" else None
            for index, row in zip(plate_obs.index, plate_obs.itertuples(), strict=True):
                effect = perturbations.loc[row.Metadata_Perturbation, list(PARAMETERS)].to_dict()
                nuclei, cells, distance = _draw_cells(rng, image_size, effect, cells_per_field)
                stains = _paint(rng, nuclei, cells, distance, effect, image_size)
                image = _image_conditions(stains, technical[plate], rng)
                if histogram is not None:
                    histogram.add(image)
                fields.append((index, image, {"nuclei": nuclei, "cells": cells}))
                n_cells[index] = int(nuclei.max())
            limits = None if histogram is None else histogram.limits()
            for index, image, masks in fields:
                writer.write(index, to_uint8(image, limits=limits), masks)
                progress.update()
    progress.close()
    obs["Metadata_n_cells"] = n_cells
    obs[IMAGE_INDEX_KEY] = np.arange(len(obs))
    for column in ("Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Perturbation", "Metadata_moa"):
        obs[column] = obs[column].astype("category")
    obs.index = [f"field_{i}" for i in range(len(obs))]
    adata = ad.AnnData(obs=obs)
    adata.uns[STORE_UNS_KEY] = store_info(path, CHANNELS, writer.store_id)
    adata.uns["simulation"] = {"effects": perturbations.reset_index(), "seed": seed}
    return adata
