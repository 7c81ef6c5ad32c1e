"""CellProfiler-style segmentation of nuclei and cells, so handcrafted features can be measured on any image store.

A lab measuring CellProfiler features first segments its images: ``IdentifyPrimaryObjects`` finds nuclei in the DNA
stain (smoothing, a global threshold, declumping touching nuclei by shape with a watershed on the distance to the
background, discarding objects outside a diameter range or touching the border) and ``IdentifySecondaryObjects``
grows each nucleus into its cell over the thresholded cytoplasm stains (the "Watershed - Image" method). This module
does the same with scikit-image and writes the label images into the store, beside (or instead of) any masks it
already has, for :func:`cpembed.tl.handcrafted_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .._compat import check_extra
from ..io._image_store import IMAGE_INDEX_KEY, MASK_NAMES, create_mask_datasets, open_image_store, store_path

if TYPE_CHECKING:
    from anndata import AnnData

THRESHOLDS = ("otsu", "li")


def _threshold(image: np.ndarray, method: str) -> float:
    from skimage.filters import threshold_li, threshold_otsu

    return float({"otsu": threshold_otsu, "li": threshold_li}[method](image))


def _smoothing(min_diameter: float) -> float:
    """Gaussian sigma for objects of ``min_diameter`` pixels: CellProfiler's automatic smoothing, diameter / 3.5."""
    return min_diameter / 3.5


def declump_nuclei(dna: np.ndarray, min_diameter: float, *, threshold: str = "otsu") -> np.ndarray:
    """Every nucleus of one DNA-stain image, before any is discarded (CellProfiler's ``IdentifyPrimaryObjects``).

    The image is smoothed with a Gaussian of sigma ``min_diameter / 3.5`` (CellProfiler's automatic smoothing),
    thresholded globally, holes are filled, and touching nuclei are split by a watershed on the distance to the
    background (or the image border) from its maxima at least ``min_diameter / 2`` apart.

    Returns
    -------
    int32 labels, 0 = background, nuclei numbered 1..n.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian
    from skimage.segmentation import watershed

    smooth = gaussian(dna.astype(np.float64), _smoothing(min_diameter), preserve_range=True)
    if smooth.max() <= smooth.min():
        return np.zeros(dna.shape, dtype=np.int32)
    foreground = ndimage.binary_fill_holes(smooth > _threshold(smooth, threshold))
    # Distance to the background or the image border, so a nucleus cut by the border still peaks once inside.
    distance = ndimage.distance_transform_edt(np.pad(foreground, 1))[1:-1, 1:-1]
    clumps = ndimage.label(foreground)[0]
    peaks = peak_local_max(distance, min_distance=max(1, round(min_diameter / 2)), labels=clumps, exclude_border=False)
    markers = np.zeros(dna.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def grow_cells(body: np.ndarray, nuclei: np.ndarray, smoothing: float, *, threshold: str = "otsu") -> np.ndarray:
    """Cell label image grown from ``nuclei``, as CellProfiler's ``IdentifySecondaryObjects`` (Watershed - Image).

    The cytoplasm-stain image ``body`` is smoothed (Gaussian of sigma ``smoothing``) and thresholded; every
    nucleus floods the foreground from its own pixels downhill in intensity, so cell ``i`` holds nucleus ``i``.
    """
    from skimage.filters import gaussian
    from skimage.segmentation import watershed

    smooth = gaussian(body.astype(np.float64), smoothing, preserve_range=True)
    foreground = nuclei > 0
    if smooth.max() > smooth.min():
        foreground |= smooth > _threshold(smooth, threshold)
    cells = watershed(-smooth, nuclei, mask=foreground)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    return cells.astype(np.int32)


def kept_numbers(nuclei: np.ndarray, nucleus_diameter: tuple[float, float], exclude_border: bool) -> np.ndarray:
    """New number of every label of ``nuclei``: 1..n for the nuclei kept, 0 for those discarded.

    A nucleus is discarded when its area lies outside the discs of the two diameters or, with ``exclude_border``,
    when it touches the image border.
    """
    areas = np.bincount(nuclei.ravel())
    min_area, max_area = (np.pi / 4 * diameter**2 for diameter in nucleus_diameter)
    keep = (areas >= min_area) & (areas <= max_area)
    if exclude_border:
        keep[np.concatenate([nuclei[0], nuclei[-1], nuclei[:, 0], nuclei[:, -1]])] = False
    keep[0] = False
    numbers = np.zeros(len(areas), dtype=np.int32)
    numbers[keep] = np.arange(1, keep.sum() + 1)
    return numbers


def segment_field(
    image: np.ndarray,
    nucleus_channel: int,
    cell_channels: Sequence[int],
    nucleus_diameter: tuple[float, float],
    *,
    threshold: str = "otsu",
    exclude_border: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus and cell labels of one ``(channels, height, width)`` image (cells from the sum of ``cell_channels``).

    As in CellProfiler, every nucleus grows its cell before nuclei outside the diameter range or on the border are
    discarded with their cells, so a kept cell never takes over the cytoplasm of a discarded neighbour.
    """
    nuclei = declump_nuclei(image[nucleus_channel], nucleus_diameter[0], threshold=threshold)
    body = image[list(cell_channels)].astype(np.float64).sum(axis=0)
    cells = grow_cells(body, nuclei, _smoothing(nucleus_diameter[0]), threshold=threshold)
    numbers = kept_numbers(nuclei, nucleus_diameter, exclude_border)
    return numbers[nuclei], numbers[cells]


def _channel_positions(channels: list[str], nucleus_channel: str, cell_channels: Sequence[str] | None):
    missing = [c for c in [nucleus_channel, *(cell_channels or [])] if c not in channels]
    if missing:
        raise KeyError(f"Channels {missing} are not in the image store, which has {channels}.")
    cell_channels = [c for c in channels if c != nucleus_channel] if cell_channels is None else list(cell_channels)
    if not cell_channels:
        raise ValueError("Cells need at least one channel besides the nucleus channel (`cell_channels`).")
    return channels.index(nucleus_channel), [channels.index(c) for c in cell_channels]


def _check_settings(nucleus_diameter: tuple[float, float], threshold: str) -> None:
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold={threshold!r} is not one of {THRESHOLDS}.")
    if len(nucleus_diameter) != 2 or not 0 < nucleus_diameter[0] <= nucleus_diameter[1]:
        raise ValueError(
            f"nucleus_diameter must be (smallest, largest) with 0 < smallest <= largest, got {nucleus_diameter}."
        )


def segment_cells(
    adata: AnnData,
    *,
    nucleus_channel: str = "DNA",
    cell_channels: Sequence[str] | None = None,
    nucleus_diameter: tuple[float, float] = (10.0, 40.0),
    threshold: str = "otsu",
    exclude_border: bool = True,
    image_store: str | Path | None = None,
    key_added: str = "masks",
    overwrite: bool = False,
) -> None:
    """Segment nuclei and cells in every image (row) of ``adata`` and write their label images into the store.

    CellProfiler's primary and secondary object identification (see :func:`segment_field`), run on the store's 8-bit
    images, so :func:`cpembed.tl.handcrafted_features` can measure images that come without masks (real screens) and
    simulated images as a lab would see them.

    Parameters
    ----------
    adata
        Image AnnData with ``obs["image_index"]`` and ``uns["image_store"]``.
    nucleus_channel
        Channel holding the DNA stain.
    cell_channels
        Channels whose sum outlines the cells (default: every other channel).
    nucleus_diameter
        Smallest and largest typical nucleus diameter in pixels (CellProfiler's default: 10 to 40).
    threshold
        Global threshold of both steps: ``"otsu"`` or ``"li"`` (minimum cross-entropy).
    exclude_border
        Discard nuclei touching the image border, and so their cells.
    image_store
        Store to read and write (default: ``adata.uns["image_store"]["path"]``).
    key_added
        HDF5 group that receives ``nuclei`` and ``cells`` (int32, one row per store row, 0 = background). The
        default, ``"masks"``, is where :func:`~cpembed.tl.handcrafted_features` reads by default; pick another name
        to keep a simulated store's true masks. Never the store's ``images``.
    overwrite
        Replace the group when it exists (a group of masks only).

    Returns
    -------
    None. Writes only the store's group ``key_added``; rows of the store not in ``adata`` stay 0.
    """
    import h5py
    from tqdm.auto import tqdm

    from .._validation import check_obs_keys

    check_extra("images", "cpembed.tl.segment_cells")
    _check_settings(nucleus_diameter, threshold)
    check_obs_keys(adata, IMAGE_INDEX_KEY)
    image_store = store_path(adata, image_store)
    with open_image_store(image_store) as file:
        channels = [str(c) for c in file.attrs["channels"]]
        n_images, _, height, width = file["images"].shape
        nucleus_index, cell_indices = _channel_positions(channels, nucleus_channel, cell_channels)
        if key_added in file:
            if not isinstance(file[key_added], h5py.Group) or not set(file[key_added]) <= set(MASK_NAMES):
                raise ValueError(f"{key_added!r} in {image_store} is not a group of masks; pick another key_added.")
            if not overwrite:
                raise FileExistsError(
                    f"{image_store} already has a {key_added!r} group; pass overwrite=True or another key_added."
                )
    rows = adata.obs[IMAGE_INDEX_KEY].to_numpy()
    with open_image_store(image_store, "r+") as file:
        if key_added in file:
            del file[key_added]
        masks = create_mask_datasets(file, key_added, n_images, (height, width))
        for row in tqdm(rows, desc="segmenting"):
            labels = segment_field(
                file["images"][row],
                nucleus_index,
                cell_indices,
                nucleus_diameter,
                threshold=threshold,
                exclude_border=exclude_border,
            )
            for name, label_image in zip(MASK_NAMES, labels, strict=True):
                masks[name][row] = label_image
        file[key_added].attrs["segmentation"] = (
            f"nucleus_channel={nucleus_channel}, cell_channels={[channels[i] for i in cell_indices]}, "
            f"nucleus_diameter={tuple(nucleus_diameter)}, threshold={threshold}, exclude_border={exclude_border}"
        )
