"""Per-channel pixel mean and standard deviation of groups of images in an HDF5 store, read a chunk at a time.

Used to standardise every image with the statistics of the negative-control images of its plate, the image-level
counterpart of normalising profiles on each plate's controls.
"""

from __future__ import annotations

import numpy as np

from ._image_batches import StoreImages


def group_channel_statistics(
    images: StoreImages, rows: np.ndarray, groups: np.ndarray, chunk_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each channel's pixels, scaled to [0, 1], pooled over the images of each group.

    Parameters
    ----------
    images
        The store to read.
    rows, groups
        Store row and group label (e.g. plate) of each image to pool.
    chunk_size
        Images read at a time; sums are kept in float64, so memory does not grow with the number of images.

    Returns
    -------
    The sorted group labels and a ``(n_groups, 2, channels)`` float32 array: per group, the channel means (row 0)
    and standard deviations (row 1, over all pixels of all its images).
    """
    rows, groups = np.asarray(rows, dtype=np.int64), np.asarray(groups)
    if rows.shape != groups.shape:
        raise ValueError(f"`rows` and `groups` need the same length, got {len(rows)} and {len(groups)}.")
    labels, codes = np.unique(groups, return_inverse=True)
    n_channels = images.dataset.shape[1]
    sums = np.zeros((len(labels), n_channels))
    squares = np.zeros((len(labels), n_channels))
    pixels = np.zeros(len(labels))
    for start in range(0, len(rows), chunk_size):
        block = images.read(rows[start : start + chunk_size]).astype(np.float64) / 255.0
        block_codes = codes[start : start + chunk_size]
        np.add.at(sums, block_codes, block.sum(axis=(2, 3)))
        np.add.at(squares, block_codes, np.square(block).sum(axis=(2, 3)))
        np.add.at(pixels, block_codes, block.shape[2] * block.shape[3])
    mean = sums / pixels[:, None]
    std = np.sqrt(np.maximum(squares / pixels[:, None] - np.square(mean), 0.0))
    return labels, np.stack([mean, std], axis=1).astype(np.float32)
