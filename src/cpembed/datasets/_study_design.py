"""Study design of a JUMP-like multi-source screen: sources, microscopes, batches, plates and the compound of each well.

Names follow the JUMP Cell Painting compound data set (cpg0016; Chandrasekaran et al. 2023, bioRxiv
2023.03.23.534023): the first sources are the JUMP sources that imaged compound plates, with their microscopes, and
the positive controls are the 8 JUMP positive-control compounds (``datasets/data/jump_design.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd

from ._plate_layout import PlateGeometry, control_plate_map

NEGCON = "DMSO"


@cache
def jump_design() -> dict[str, list]:
    """The JUMP sources with their microscopes, positive controls with their MoA, and MoA labels."""
    return json.loads((files(__package__) / "data" / "jump_design.json").read_text())


@dataclass(frozen=True)
class StudyDesign:
    """Who imaged which plate and what each well holds.

    Compound code 0 is DMSO, codes ``1 … n_poscons`` the positive controls, the rest the screened compounds.
    """

    sources: list[str]
    microscopes: list[str]
    source_microscope: np.ndarray
    batches: list[str]
    batch_source: np.ndarray
    plates: list[str]
    plate_batch: np.ndarray
    geometry: PlateGeometry
    compounds: list[str]
    moas: list[str]
    compound_moa: np.ndarray
    n_poscons: int
    well_compound: np.ndarray

    def obs(self, plates: slice = slice(None)) -> pd.DataFrame:
        """Well metadata of a range of plates, with categories that span the whole study."""
        plate_index = np.arange(len(self.plates))[plates]
        n_wells = self.geometry.n_wells
        plate_codes = np.repeat(plate_index, n_wells)
        batch_codes = self.plate_batch[plate_codes]
        source_codes = self.batch_source[batch_codes]
        compound_codes = self.well_compound[plate_index].ravel()
        well_codes = np.tile(np.arange(n_wells), len(plate_index))

        def categorical(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
            return pd.Categorical.from_codes(codes, categories=categories)

        well_names = self.geometry.well_names
        obs = pd.DataFrame(
            {
                "Metadata_Source": categorical(source_codes, self.sources),
                "Metadata_Microscope": categorical(self.source_microscope[source_codes], self.microscopes),
                "Metadata_Batch": categorical(batch_codes, self.batches),
                "Metadata_Plate": categorical(plate_codes, self.plates),
                "Metadata_Well": categorical(well_codes, well_names),
                "Metadata_Row": categorical(self.geometry.rows[well_codes], self.geometry.row_names),
                "Metadata_Column": self.geometry.columns[well_codes] + 1,
                "Metadata_Compound": categorical(compound_codes, self.compounds),
                "Metadata_moa": categorical(self.compound_moa[compound_codes], self.moas),
                "Metadata_is_negcon": compound_codes == 0,
                "Metadata_is_poscon": (compound_codes >= 1) & (compound_codes <= self.n_poscons),
            }
        )
        obs.index = pd.Index(
            [f"{self.plates[plate]}_{well_names[well]}" for plate, well in zip(plate_codes, well_codes, strict=True)]
        )
        return obs


def _source_names(n_sources: int) -> tuple[list[str], list[str]]:
    """Source names and microscopes: the JUMP compound sources first, then new sources cycling their microscopes."""
    jump_sources = jump_design()["sources"]
    names = [entry["Metadata_Source"] for entry in jump_sources]
    microscopes = [entry["Metadata_Microscope"] for entry in jump_sources]
    last = max(int(name.split("_")[1]) for name in names)
    for extra in range(n_sources - len(jump_sources)):
        names.append(f"source_{last + extra + 1}")
        microscopes.append(microscopes[extra % len(jump_sources)])
    return names[:n_sources], microscopes[:n_sources]


def _moa_names(n_moas: int) -> list[str]:
    """JUMP-MOA labels first, numbered labels once those run out."""
    names = jump_design()["moas"][:n_moas]
    return names + [f"MoA_{index + 1:03d}" for index in range(len(names), n_moas)]


def _assign_moas(n_compounds: int, n_moas: int, rng: np.random.Generator) -> np.ndarray:
    """MoA index of every compound: every MoA gets compounds in turn, then the rest go to MoAs of uneven size."""
    in_turn = np.arange(min(n_compounds, 2 * n_moas)) % n_moas
    popularity = rng.dirichlet(np.ones(n_moas))
    rest = rng.choice(n_moas, size=n_compounds - in_turn.size, p=popularity)
    return rng.permutation(np.concatenate([in_turn, rest]))


def _assign_sources(
    n_compounds: int, n_sources: int, shared_compound_fraction: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Compound indices screened by each source: every compound in one home source, a share also in others."""
    home = rng.permutation(np.arange(n_compounds) % n_sources)
    per_source = [list(np.flatnonzero(home == source)) for source in range(n_sources)]
    if n_sources > 1:
        shared = np.flatnonzero(rng.random(n_compounds) < shared_compound_fraction)
        for compound in shared:
            n_extra = rng.integers(1, n_sources)
            others = rng.permutation(np.delete(np.arange(n_sources), home[compound]))[:n_extra]
            for source in others:
                per_source[source].append(compound)
    return [np.sort(np.asarray(compounds, dtype=int)) for compounds in per_source]


def _fill_plates(compounds: np.ndarray, n_plates: int, n_slots: int, rng: np.random.Generator) -> np.ndarray:
    """Spread a source's compounds over its treated wells, each compound as often as the others (±1)."""
    n_rounds = -(-n_plates * n_slots // compounds.size)
    sequence = np.concatenate([rng.permutation(compounds) for _ in range(n_rounds)])
    return sequence[: n_plates * n_slots].reshape(n_plates, n_slots)


def make_study_design(
    *,
    n_sources: int,
    n_batches_per_source: int,
    n_plates_per_batch: int,
    geometry: PlateGeometry,
    n_compounds: int,
    n_moas: int,
    n_negcon_per_plate: int,
    n_poscon_per_plate: int,
    shared_compound_fraction: float,
    rng: np.random.Generator,
) -> StudyDesign:
    """Lay out sources, batches and plates, and fill every plate with controls and compounds."""
    sources, source_microscopes = _source_names(n_sources)
    microscopes = sorted(set(source_microscopes))
    batch_source = np.repeat(np.arange(n_sources), n_batches_per_source)
    batches = [
        f"{sources[source]}_batch{index % n_batches_per_source + 1}" for index, source in enumerate(batch_source)
    ]
    plate_batch = np.repeat(np.arange(len(batches)), n_plates_per_batch)
    plates = [f"{batches[batch]}_plate{index % n_plates_per_batch + 1}" for index, batch in enumerate(plate_batch)]

    poscon_table = jump_design()["poscons"][: min(n_poscon_per_plate, len(jump_design()["poscons"]))]
    poscon_names = [entry["Metadata_Compound"] for entry in poscon_table]
    poscon_moas = [entry["Metadata_moa"] for entry in poscon_table]
    moa_names = _moa_names(n_moas)
    compound_names = [NEGCON, *poscon_names] + [f"CPD-{index + 1:05d}" for index in range(n_compounds)]
    n_poscons = len(poscon_names)
    first_compound = 1 + n_poscons
    compound_moa = np.concatenate(
        [[0], np.arange(1, n_poscons + 1), first_compound + _assign_moas(n_compounds, n_moas, rng)]
    )

    n_treated = geometry.n_wells - n_negcon_per_plate - n_poscon_per_plate
    plates_per_source = n_batches_per_source * n_plates_per_batch
    source_compounds = _assign_sources(n_compounds, n_sources, shared_compound_fraction, rng)
    for source, compounds in zip(sources, source_compounds, strict=True):
        if compounds.size > plates_per_source * n_treated:
            raise ValueError(
                f"{source} screens {compounds.size} compounds but its {plates_per_source} plates have only "
                f"{plates_per_source * n_treated} treated wells; lower n_compounds or add batches or plates."
            )
    well_compound = np.zeros((len(plates), geometry.n_wells), dtype=np.int64)
    for source in range(n_sources):
        _, poscon, treated = control_plate_map(geometry, n_negcon_per_plate, n_poscon_per_plate, rng)
        source_plates = np.flatnonzero(batch_source[plate_batch] == source)
        well_compound[np.ix_(source_plates, poscon)] = 1 + np.arange(poscon.size) % max(n_poscons, 1)
        filled = _fill_plates(source_compounds[source] + first_compound, source_plates.size, treated.size, rng)
        well_compound[np.ix_(source_plates, treated)] = filled
    return StudyDesign(
        sources=sources,
        microscopes=microscopes,
        source_microscope=np.array([microscopes.index(name) for name in source_microscopes]),
        batches=batches,
        batch_source=batch_source,
        plates=plates,
        plate_batch=plate_batch,
        geometry=geometry,
        compounds=compound_names,
        moas=[NEGCON, *poscon_moas, *moa_names],
        compound_moa=compound_moa,
        n_poscons=n_poscons,
        well_compound=well_compound,
    )
