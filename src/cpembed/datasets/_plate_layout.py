"""Multi-well plate geometry (well names, rows, columns, edge wells) and control-well plate maps."""

from __future__ import annotations

from dataclasses import dataclass
from string import ascii_uppercase

import numpy as np

# Rows × columns of the standard SBS plate formats.
PLATE_SHAPES = {96: (8, 12), 384: (16, 24)}
# DMSO wells per plate: JUMP compound plates carry 16-64 DMSO wells per 384-well plate (the JUMP-MOA plate map 24);
# 96-well plates get the same share of the plate.
DEFAULT_NEGCON_WELLS = {96: 8, 384: 32}
# Positive-control wells per plate: the 8 JUMP positive-control compounds, twice each on a 384-well plate.
DEFAULT_POSCON_WELLS = {96: 8, 384: 16}


@dataclass(frozen=True)
class PlateGeometry:
    """Wells of one plate format, in row-major order (A01, A02, ..., P24)."""

    n_rows: int
    n_columns: int

    @property
    def n_wells(self) -> int:
        """Number of wells on the plate."""
        return self.n_rows * self.n_columns

    @property
    def rows(self) -> np.ndarray:
        """Row index (0 = row A) of every well."""
        return np.repeat(np.arange(self.n_rows), self.n_columns)

    @property
    def columns(self) -> np.ndarray:
        """Column index (0 = column 01) of every well."""
        return np.tile(np.arange(self.n_columns), self.n_rows)

    @property
    def row_names(self) -> list[str]:
        """Row letters, ``A`` to ``H`` (96 wells) or ``P`` (384 wells)."""
        return list(ascii_uppercase[: self.n_rows])

    @property
    def well_names(self) -> list[str]:
        """Well names ``A01`` … in row-major order."""
        return [f"{row}{column + 1:02d}" for row in self.row_names for column in range(self.n_columns)]

    @property
    def is_edge(self) -> np.ndarray:
        """True for wells of the outer ring, which dry out faster and grow cells differently."""
        rows, columns = self.rows, self.columns
        return (rows == 0) | (rows == self.n_rows - 1) | (columns == 0) | (columns == self.n_columns - 1)

    @property
    def centred_rows(self) -> np.ndarray:
        """Row position of every well scaled to [-1, 1], for plate gradients."""
        return 2 * self.rows / (self.n_rows - 1) - 1

    @property
    def centred_columns(self) -> np.ndarray:
        """Column position of every well scaled to [-1, 1], for plate gradients."""
        return 2 * self.columns / (self.n_columns - 1) - 1


def plate_geometry(plate_format: int) -> PlateGeometry:
    """The geometry of a 96- or 384-well plate."""
    if plate_format not in PLATE_SHAPES:
        raise ValueError(f"plate_format must be one of {sorted(PLATE_SHAPES)}, got {plate_format!r}.")
    return PlateGeometry(*PLATE_SHAPES[plate_format])


def control_plate_map(
    geometry: PlateGeometry, n_negcon: int, n_poscon: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatter negative- and positive-control wells over a plate; the other wells receive compounds.

    Returns
    -------
    Sorted well indices of the negative controls, the positive controls and the treated wells.
    """
    order = rng.permutation(geometry.n_wells)
    negcon = np.sort(order[:n_negcon])
    poscon = np.sort(order[n_negcon : n_negcon + n_poscon])
    treated = np.sort(order[n_negcon + n_poscon :])
    return negcon, poscon, treated
