"""CellProfiler-style handcrafted features of an image store with segmentation masks, averaged per image.

The baseline the CWA-MSN paper compares against is CellProfiler (Carpenter et al. 2006): per-object shape
(AreaShape), intensity, texture and colocalisation measurements, averaged per image and well. This module measures
the same kinds of features on the nucleus and cell masks of the store (written by
:func:`cpembed.datasets.simulate_images`): shape with scikit-image ``regionprops``, intensities and channel
correlations with ``scipy.ndimage``, and Haralick texture from scikit-image's grey-level co-occurrence matrices.
Texture follows CellProfiler's MeasureTexture: the object's pixels are quantised into a few grey levels over the
8-bit range, pixels outside the object are left out of the co-occurrence counts (as mahotas' ``ignore_zeros``, which
CellProfiler uses), and each property is averaged over the four directions.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .._compat import check_extra
from ..io._image_store import open_image_store, read_store_images, store_path
from ._common import store_embedding

if TYPE_CHECKING:
    from anndata import AnnData

SHAPE_PROPERTIES = ("area", "perimeter", "eccentricity", "solidity", "major_axis_length", "minor_axis_length")
#: Haralick properties (scikit-image names; CellProfiler's Contrast, Correlation, AngularSecondMoment and
#: InverseDifferenceMoment), at pixel distance ``TEXTURE_DISTANCE`` with ``TEXTURE_LEVELS`` grey levels.
TEXTURE_PROPERTIES = ("contrast", "correlation", "ASM", "homogeneity")
TEXTURE_LEVELS = 8
TEXTURE_DISTANCE = 1
_TEXTURE_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_TEXTURE_NAMES = {"contrast": "Contrast", "correlation": "Correlation", "ASM": "AngularSecondMoment",
                  "homogeneity": "InverseDifferenceMoment"}  # fmt: skip


def _shape_features(labels: np.ndarray) -> np.ndarray:
    from skimage.measure import regionprops_table

    table = regionprops_table(labels, properties=SHAPE_PROPERTIES)
    return np.column_stack([table[name] for name in SHAPE_PROPERTIES]).astype(np.float64)


def _intensity_features(image: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per object and channel: mean intensity and standard deviation (a texture proxy) over the object.

    An object of ``index`` without pixels in ``labels`` measures 0. ``ndimage`` divides by the pixel count of every
    label number up to the largest, so numbers missing from ``labels`` (cells dropped from the field) divide 0 by 0
    internally; those quotients are never returned, hence the silenced warning.
    """
    columns = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for channel in image.astype(np.float64):
            columns.append(ndimage.mean(channel, labels, index))
            columns.append(ndimage.standard_deviation(channel, labels, index))
    return np.nan_to_num(np.column_stack(columns))


def _texture_features(image: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per object and channel: the :data:`TEXTURE_PROPERTIES` of the object's pixels, averaged over four directions.

    ``image`` is ``(channels, h, w)`` uint8. Pixels are quantised to grey levels ``1..TEXTURE_LEVELS``; within the
    object's bounding box the pixels of other objects and of the background become level 0, whose row and column
    are dropped from the co-occurrence matrix, so only pairs of the object's own pixels count. Directions without
    such a pair are left out; an object without any measures 0. A uniform object has correlation 1
    (scikit-image's convention).
    """
    from skimage.feature import graycomatrix, graycoprops

    grey_levels = 1 + image.astype(np.int64) * TEXTURE_LEVELS // 256
    boxes = ndimage.find_objects(labels)
    features = np.zeros((len(index), len(grey_levels), len(TEXTURE_PROPERTIES)))
    for row, label in enumerate(index):
        box = boxes[label - 1]
        inside = labels[box] == label
        for channel, levels in enumerate(grey_levels):
            crop = np.where(inside, levels[box], 0).astype(np.uint8)
            matrix = graycomatrix(crop, [TEXTURE_DISTANCE], _TEXTURE_ANGLES, levels=TEXTURE_LEVELS + 1, symmetric=True)
            counts = matrix[1:, 1:]  # level 0 is outside the object
            counts = counts[..., counts.sum(axis=(0, 1))[0] > 0]  # directions with at least one pair
            if counts.shape[-1] > 0:
                features[row, channel] = [graycoprops(counts, name).mean() for name in TEXTURE_PROPERTIES]
    return features.reshape(len(index), -1)


def _correlation_features(image: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per object and pair of channels: the Pearson correlation of their intensities over the object's pixels.

    CellProfiler's MeasureColocalization ``Correlation``; 0 where a channel is uniform over the object.
    """
    channels = image.astype(np.float64)
    pairs = list(combinations(range(len(channels)), 2))
    columns = np.zeros((len(index), len(pairs)))
    with np.errstate(invalid="ignore", divide="ignore"):  # label numbers missing from `labels`, as above
        means = [ndimage.mean(channel, labels, index) for channel in channels]
        variances = [ndimage.variance(channel, labels, index) for channel in channels]
        for column, (a, b) in enumerate(pairs):
            covariance = ndimage.mean(channels[a] * channels[b], labels, index) - means[a] * means[b]
            scale = np.sqrt(variances[a] * variances[b])
            columns[:, column] = covariance / np.where(scale > 1e-9, scale, np.inf)  # uniform channel: 0
    return columns


def field_features(image: np.ndarray, nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Handcrafted features of one field: cell count, then the mean over cells of each per-cell measurement.

    Per cell (objects labelled alike in ``nuclei`` and ``cells``): nucleus and cell shape; per channel the mean
    and standard deviation of intensity in the nucleus, cytoplasm (cell minus nucleus) and whole cell, and the
    Haralick texture of the nucleus and the whole cell; per pair of channels their correlation over the cell.
    ``image`` is ``(channels, h, w)`` uint8, as in the image store.
    """
    index = np.intersect1d(np.unique(nuclei[nuclei > 0]), np.unique(cells[cells > 0]))
    if index.size == 0:
        return np.zeros(len(feature_names([str(channel) for channel in range(image.shape[0])])))
    nuclei = np.where(np.isin(nuclei, index), nuclei, 0)
    cells = np.where(np.isin(cells, index), cells, 0)
    cytoplasm = np.where(nuclei > 0, 0, cells)
    per_cell = np.hstack(
        [
            _shape_features(nuclei),
            _shape_features(cells),
            _intensity_features(image, nuclei, index),
            _intensity_features(image, cytoplasm, index),  # a cell without cytoplasm measures 0 there
            _intensity_features(image, cells, index),
            _texture_features(image, nuclei, index),
            _texture_features(image, cells, index),
            _correlation_features(image, cells, index),
        ]
    )
    return np.concatenate([[float(index.size)], per_cell.mean(axis=0)])


def feature_names(channels: list[str]) -> list[str]:
    """Names of the :func:`field_features` columns, in CellProfiler's ``Compartment_Measurement_Channel`` style."""
    names = ["Image_Count_Cells"]
    names += [f"Nuclei_AreaShape_{p}" for p in SHAPE_PROPERTIES] + [f"Cells_AreaShape_{p}" for p in SHAPE_PROPERTIES]
    for compartment in ("Nuclei", "Cytoplasm", "Cells"):
        for channel in channels:
            names += [
                f"{compartment}_Intensity_MeanIntensity_{channel}",
                f"{compartment}_Intensity_StdIntensity_{channel}",
            ]
    for compartment in ("Nuclei", "Cells"):
        for channel in channels:
            names += [
                f"{compartment}_Texture_{_TEXTURE_NAMES[name]}_{channel}_{TEXTURE_DISTANCE}"
                for name in TEXTURE_PROPERTIES
            ]
    names += [f"Cells_Correlation_Correlation_{a}_{b}" for a, b in combinations(channels, 2)]
    return names


def handcrafted_features(
    adata: AnnData,
    *,
    image_store: str | Path | None = None,
    masks: str = "masks",
    key_added: str = "X_handcrafted",
    copy: bool = False,
) -> AnnData | None:
    """Measure CellProfiler-style features of every image (row) from its nucleus and cell masks.

    Parameters
    ----------
    adata
        Image AnnData with ``obs["image_index"]`` and ``uns["image_store"]``.
    image_store
        Store with ``images`` and the mask group (default: ``adata.uns["image_store"]``).
    masks
        HDF5 group of the store holding the ``nuclei`` and ``cells`` label images: ``"masks"`` (a simulated store's
        true masks, or where :func:`cpembed.tl.segment_cells` writes by default) or another segmentation's group.
    key_added
        obsm key; feature names go to ``uns[key_added]["feature_names"]``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    None, or the new AnnData when ``copy=True``. Writes ``obsm[key_added]`` (``n_obs x n_features``: cell count,
    then per-cell means) and ``uns[key_added]``. Aggregate to wells with :func:`cpembed.pp.aggregate`.
    """
    from tqdm.auto import tqdm

    from .._validation import check_obs_keys

    check_extra("images", "cpembed.tl.handcrafted_features")
    check_obs_keys(adata, "image_index")
    image_store = store_path(adata, image_store)
    with open_image_store(image_store) as file:
        if f"{masks}/nuclei" not in file or f"{masks}/cells" not in file:
            raise KeyError(
                f"{image_store} has no {masks}/nuclei and {masks}/cells; handcrafted features need masks "
                "(segment the images with cpembed.tl.segment_cells)."
            )
        channels = [str(c) for c in file.attrs["channels"]]
    rows = adata.obs["image_index"].to_numpy()
    features = []
    for start in tqdm(range(0, len(rows), 64), desc="measuring"):
        chunk = rows[start : start + 64]
        images = read_store_images(image_store, chunk)
        nuclei = read_store_images(image_store, chunk, f"{masks}/nuclei")
        cells = read_store_images(image_store, chunk, f"{masks}/cells")
        features += [field_features(i, n, c) for i, n, c in zip(images, nuclei, cells, strict=True)]
    params = {"image_store": str(image_store), "masks": masks}
    return store_embedding(
        adata,
        np.asarray(features, dtype=np.float32),
        key_added,
        params,
        copy=copy,
        extra_uns={"feature_names": feature_names(channels)},
    )
