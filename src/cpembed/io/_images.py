"""Find Cell Painting images (LoadData CSV or a folder of per-channel TIFFs) and build an on-disk image store."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._compat import check_extra
from .._validation import reading_file
from ._image_store import (
    DEFAULT_CLIP_PERCENTILE,
    IMAGE_INDEX_KEY,
    STORE_UNS_KEY,
    ImageStoreWriter,
    IntensityHistogram,
    check_intensity_scale,
    store_info,
    to_uint8,
)

#: File name patterns of per-channel TIFFs. Named groups: well (or row + column), site, channel; plate optional.
FILENAME_PATTERNS = {
    # Opera Phenix / Harmony export used by JUMP-Cell Painting: r01c01f01p01-ch1sk1fk1fl1.tiff
    "phenix": (
        r"r(?P<row>\d{2})c(?P<column>\d{2})f(?P<site>\d{2})p(?P<plane>\d{2})"
        r"-ch(?P<channel>\d+)sk\d+fk\d+fl\d+\.tiff?"
    ),
    # <well>_<series>_<channel number>_<site>_<channel name>_<frame>.tif, e.g. B7_01_1_3_DAPI_001.tif
    "well_site_channel": r"(?P<well>[A-Za-z]{1,2}\d{1,2})_\d+_\d+_(?P<site>\d+)_(?P<channel>[A-Za-z0-9]+)_\d+\.tiff?",
}
ROW_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIELD_KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def _match_files(files: Sequence[Path], pattern: str) -> pd.DataFrame:
    regex = re.compile(pattern)
    rows = []
    for file in files:
        match = regex.fullmatch(file.name)
        if match:
            rows.append({**match.groupdict(), "path": file})
    return pd.DataFrame(rows)


def _choose_pattern(files: Sequence[Path], pattern: str | None) -> str:
    if pattern is not None:
        return FILENAME_PATTERNS.get(pattern, pattern)
    counts = {name: len(_match_files(files, regex)) for name, regex in FILENAME_PATTERNS.items()}
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        raise ValueError(
            f"No file name matches a known pattern ({', '.join(FILENAME_PATTERNS)}); pass `pattern=` with a "
            "regular expression with named groups well (or row and column), site and channel."
        )
    return FILENAME_PATTERNS[best]


def _well_name(matches: pd.DataFrame) -> pd.Series:
    if "well" in matches:
        return matches["well"].str.upper()
    if {"row", "column"} <= set(matches):
        return matches["row"].astype(int).map(lambda r: ROW_LETTERS[r - 1]) + matches["column"].astype(int).map(
            "{:02d}".format
        )
    raise ValueError("The pattern needs a `well` group or `row` and `column` groups.")


def _fields_from_folder(folder: Path, pattern: str | None, plate: str | None, channel_names) -> pd.DataFrame:
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in {".tif", ".tiff"})
    if not files:
        raise FileNotFoundError(f"No .tif/.tiff files under {folder}.")
    regex = _choose_pattern(files, pattern)
    matches = _match_files(files, regex)
    if matches.empty:
        raise ValueError(f"No file under {folder} matches the pattern {regex!r}.")
    missing_groups = {"site", "channel"} - set(matches)
    if missing_groups:
        raise ValueError(f"The pattern lacks the named group(s) {sorted(missing_groups)}.")
    matches["Metadata_Well"] = _well_name(matches)
    matches["Metadata_Site"] = matches["site"].astype(int)
    matches["Metadata_Plate"] = matches.get("plate", plate or folder.name)
    names = dict(channel_names or {})
    matches["channel"] = matches["channel"].map(lambda c: names.get(c, c if not c.isdigit() else f"ch{c}"))
    duplicated = matches.duplicated([*FIELD_KEYS, "channel"])
    if duplicated.any():
        raise ValueError(f"{duplicated.sum()} files share plate, well, site and channel (several planes?).")
    wide = matches.pivot(index=FIELD_KEYS, columns="channel", values="path")
    fields = wide.index.to_frame(index=False)
    for channel in _sorted_channels(wide.columns):
        fields[f"FileName_Orig{channel}"] = [p.name if isinstance(p, Path) else None for p in wide[channel]]
        fields[f"PathName_Orig{channel}"] = [str(p.parent) if isinstance(p, Path) else None for p in wide[channel]]
    return fields


def _sorted_channels(channels) -> list[str]:
    return sorted(channels, key=lambda c: (0, int(c[2:])) if re.fullmatch(r"ch\d+", c) else (1, c))


def _fields_from_loaddata(csv: Path) -> pd.DataFrame:
    """The rows of a LoadData CSV, every value as text (plate ``01``, file ``001.tif``) except the site number."""
    with reading_file(csv, "a LoadData CSV file"):
        fields = pd.read_csv(csv, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    missing = [key for key in FIELD_KEYS if key not in fields]
    if missing:
        raise KeyError(f"LoadData file {csv} lacks the column(s) {missing}.")
    if not any(column.startswith("FileName_Orig") for column in fields):
        raise KeyError(f"LoadData file {csv} has no FileName_Orig<Channel> column.")
    sites = pd.to_numeric(fields["Metadata_Site"], errors="coerce")
    wrong = fields.loc[sites.isna() | (sites % 1 != 0), "Metadata_Site"]
    if len(wrong):
        raise ValueError(f"LoadData file {csv}: Metadata_Site must hold whole numbers, not {wrong.tolist()[:5]}.")
    fields["Metadata_Site"] = sites.astype(np.int64)
    return fields


def image_channels(obs: pd.DataFrame) -> list[str]:
    """Channel names of an image AnnData's obs (the ``<Channel>`` of its ``FileName_Orig<Channel>`` columns)."""
    return [column.removeprefix("FileName_Orig") for column in obs if column.startswith("FileName_Orig")]


def read_images(
    source: str | Path,
    pattern: str | None = None,
    *,
    plate: str | None = None,
    channel_names: Mapping[str, str] | None = None,
):
    """Index Cell Painting fields of view: one AnnData row per field with the file of each channel.

    Parameters
    ----------
    source
        A CellProfiler LoadData CSV (columns ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``,
        ``FileName_Orig<Channel>``, ``PathName_Orig<Channel>``) or a folder searched recursively for TIFFs.
    pattern
        For folders: a key of ``FILENAME_PATTERNS`` (``"phenix"``: ``r01c01f01p01-ch1sk1fk1fl1.tiff``;
        ``"well_site_channel"``: ``B7_01_1_3_DAPI_001.tif``) or a regular expression with the named groups
        ``well`` (or ``row`` and ``column``), ``site``, ``channel`` and optionally ``plate``. None picks the
        known pattern matching most files.
    plate
        Plate name for folders whose pattern has no ``plate`` group (default: the folder's name).
    channel_names
        Renames channels, e.g. ``{"5": "DNA"}`` for Phenix channel numbers (unnamed numbers become ``ch<n>``).

    Returns
    -------
    AnnData with no features and ``obs`` holding ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``,
    ``FileName_Orig<Channel>`` and ``PathName_Orig<Channel>`` (plus any other LoadData column).
    """
    import anndata as ad

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist.")
    if source.is_dir():
        fields = _fields_from_folder(source, pattern, plate, channel_names)
    else:
        fields = _fields_from_loaddata(source)
    fields.index = (
        fields["Metadata_Plate"].astype(str)
        + "_"
        + fields["Metadata_Well"].astype(str)
        + "_"
        + fields["Metadata_Site"].astype(str)
    )
    return ad.AnnData(obs=fields)


def _read_field(row: pd.Series, channels: Sequence[str]) -> np.ndarray:
    import tifffile

    planes = []
    for channel in channels:
        name, folder = row.get(f"FileName_Orig{channel}"), row.get(f"PathName_Orig{channel}")
        if not isinstance(name, str):
            raise ValueError(f"Field {row.name!r} has no file for channel {channel!r}.")
        path = Path(folder) / name if isinstance(folder, str) else Path(name)
        with reading_file(path, f"a TIFF image (field {row.name!r}, channel {channel!r})"):
            plane = tifffile.imread(path)
            if plane.ndim != 2 or not plane.size:  # tifffile reads some corrupt files as empty arrays
                raise ValueError(f"expected one 2-D image, found an array of shape {plane.shape}")
        planes.append(plane)
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1:
        raise ValueError(f"Field {row.name!r}: channels differ in shape {sorted(shapes)}.")
    return np.stack(planes)


def _plate_limits(obs: pd.DataFrame, channels: Sequence[str], clip_percentile: float) -> dict:
    """Per plate of ``obs``: the per-channel (minimum, ``clip_percentile`` percentile) over all its fields' pixels."""
    from tqdm.auto import tqdm

    if "Metadata_Plate" not in obs:
        raise KeyError("intensity_scale='plate' needs obs['Metadata_Plate'] (or pass intensity_scale='field').")
    histograms: dict = {}
    for _, row in tqdm(obs.iterrows(), total=len(obs), desc="measuring plate intensities"):
        histograms.setdefault(row["Metadata_Plate"], IntensityHistogram()).add(_read_field(row, channels))
    return {plate: histogram.limits(clip_percentile) for plate, histogram in histograms.items()}


def tile_grid(height: int, width: int, tile_size: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``tile_size`` tiles of a field, the grid centred in the field."""
    n_rows, n_cols = height // tile_size, width // tile_size
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"tile_size {tile_size} is larger than the field ({height} x {width}).")
    top, left = (height - n_rows * tile_size) // 2, (width - n_cols * tile_size) // 2
    return [(top + r * tile_size, left + c * tile_size) for r in range(n_rows) for c in range(n_cols)]


def build_image_store(
    adata,
    path: str | Path,
    *,
    channels: Sequence[str] | None = None,
    tile_size: int | None = None,
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
    intensity_scale: str = "plate",
    overwrite: bool = False,
):
    """Convert the fields listed by :func:`read_images` into an HDF5 image store of uint8 fields or tiles.

    Every channel is clipped at its ``clip_percentile`` percentile (default 99.997, i.e. the brightest 0.003% of
    pixels as in CellCLIP/CLOOME) and scaled from its minimum onto 0-255, then fields are optionally cut into
    non-overlapping tiles. By default the minimum and percentile are those of all the pixels of the field's plate,
    so a compound that dims a stain still looks dimmer than the controls beside it; plate-wide differences of gain
    remain for per-plate normalisation (e.g. CWA-MSN's ``normalization="plate_controls"``) to remove. The store
    keeps one HDF5 chunk per image, so training reads only the images it samples.

    Parameters
    ----------
    adata
        Output of :func:`read_images` (one row per field).
    path
        HDF5 file to create.
    channels
        Channels to store, in this order (default: all, in column order).
    tile_size
        Side of square tiles (e.g. 224); None stores whole fields (all fields must then share a shape).
    clip_percentile
        Per-channel upper clipping percentile.
    intensity_scale
        ``"plate"`` (default): the clipping limits of each channel come from all the fields of the plate
        (``obs["Metadata_Plate"]``, read twice: once to measure, once to store; needs uint8 or uint16 images).
        ``"field"``: each field is stretched on its own, which erases intensity phenotypes.
    overwrite
        Replace an existing file. The store is written to a temporary file that replaces ``path`` only once every
        image is stored, so an unreadable image leaves no partial store and an existing store intact.

    Returns
    -------
    New AnnData with one row per stored image: the field's obs, ``Metadata_Tile`` (when tiling),
    ``Metadata_Field`` (the field's obs name) and ``image_index``; ``uns["image_store"]`` records path and channels.
    """
    import anndata as ad
    from tqdm.auto import tqdm

    check_extra("images", "cpembed.io.build_image_store")
    channels = list(channels) if channels is not None else image_channels(adata.obs)
    if not channels:
        raise ValueError("No FileName_Orig<Channel> column in adata.obs; create the AnnData with read_images.")
    unknown = [c for c in channels if f"FileName_Orig{c}" not in adata.obs]
    if unknown:
        raise KeyError(f"Channels {unknown} not in adata.obs (available: {image_channels(adata.obs)}).")
    check_intensity_scale(intensity_scale)
    plate_limits = _plate_limits(adata.obs, channels, clip_percentile) if intensity_scale == "plate" else {}
    first = _read_field(adata.obs.iloc[0], channels)
    height, width = first.shape[-2:]
    corners = tile_grid(height, width, tile_size) if tile_size else [(0, 0)]
    shape = (tile_size, tile_size) if tile_size else (height, width)
    rows = []
    with ImageStoreWriter(
        path,
        adata.n_obs * len(corners),
        channels,
        shape,
        clip_percentile=clip_percentile,
        intensity_scale=intensity_scale,
        overwrite=overwrite,
    ) as writer:
        for field_number, (name, row) in enumerate(tqdm(adata.obs.iterrows(), total=adata.n_obs, desc="storing")):
            field = first if field_number == 0 else _read_field(row, channels)
            if field.shape[-2:] != (height, width):
                raise ValueError(f"Field {name!r} is {field.shape[-2:]}, the first field {(height, width)}.")
            field = to_uint8(field, clip_percentile, plate_limits.get(row.get("Metadata_Plate")))
            for tile_number, (top, left) in enumerate(corners):
                image = field[:, top : top + shape[0], left : left + shape[1]]
                writer.write(len(rows), np.ascontiguousarray(image))
                rows.append({**row.to_dict(), "Metadata_Field": name, "Metadata_Tile": tile_number})
    obs = pd.DataFrame(rows)
    if not tile_size:
        obs = obs.drop(columns="Metadata_Tile")
    obs[IMAGE_INDEX_KEY] = np.arange(len(obs))
    obs.index = [f"{field}_{i}" for i, field in enumerate(obs["Metadata_Field"])]
    out = ad.AnnData(obs=obs)
    out.uns[STORE_UNS_KEY] = store_info(path, channels, writer.store_id)
    return out
