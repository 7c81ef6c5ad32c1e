"""On-disk image store (HDF5) that image models stream from, and the 16-bit to 8-bit conversion it stores.

Layout of a store file:

- ``images``: uint8 ``(n_images, n_channels, height, width)``, one HDF5 chunk per image, so reading an image
  touches one chunk and training never loads the whole store;
- ``masks/nuclei`` and ``masks/cells`` (optional): int32 label images ``(n_images, height, width)``, 0 = background,
  cell ``i`` holding nucleus ``i``; other groups of the same two datasets may hold other segmentations (see
  :func:`cpembed.tl.segment_cells`);
- attributes ``channels`` (channel names, in order), ``clip_percentile``, ``intensity_scale`` (``"plate"``: every
  plate's images were scaled to 8 bits with the same per-channel limits, so brightness compares within a plate;
  ``"field"``: each field was stretched on its own) and ``store_id`` (a random id drawn for every build).

Row ``i`` of the store belongs to the AnnData row whose ``obs["image_index"]`` is ``i``; the AnnData records the
store in ``uns["image_store"]`` (``path``, ``channels`` and ``store_id``), so that an AnnData of an earlier build of
a rebuilt store is refused instead of reading other images.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._files import partial_path
from .._validation import check_indices, reading_file

IMAGE_INDEX_KEY = "image_index"
STORE_UNS_KEY = "image_store"
MASK_NAMES = ("nuclei", "cells")
# CellCLIP / CLOOME clip the brightest ~0.003% of 16-bit pixels before converting to 8 bit.
DEFAULT_CLIP_PERCENTILE = 99.997


INTENSITY_SCALES = ("plate", "field")


def check_intensity_scale(intensity_scale: str) -> None:
    """Raise a ValueError naming the choices when ``intensity_scale`` is not one of :data:`INTENSITY_SCALES`."""
    if intensity_scale not in INTENSITY_SCALES:
        raise ValueError(f"intensity_scale={intensity_scale!r} is not one of {INTENSITY_SCALES}.")


class IntensityHistogram:
    """Per-channel histogram of unsigned-integer pixel values, accumulated over many images.

    Gives the low (minimum) and high (``clip_percentile`` percentile) intensity of every channel over all the images
    added, exactly and in memory independent of their number: what :func:`to_uint8` scales a whole plate with.
    """

    def __init__(self):
        self.counts: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        """Count the pixels of one ``(channels, height, width)`` uint8 or uint16 image."""
        if image.dtype.kind != "u" or image.dtype.itemsize > 2:
            raise TypeError(
                f"Plate-wide intensity scaling needs uint8 or uint16 images, got {image.dtype}; "
                "scale each field on its own (intensity_scale='field') instead."
            )
        counts = np.stack([np.bincount(channel.ravel(), minlength=2**16) for channel in image])
        if self.counts is None:
            self.counts = counts
        elif counts.shape[0] != self.counts.shape[0]:
            raise ValueError(f"Images differ in channels: {counts.shape[0]} and {self.counts.shape[0]}.")
        else:
            self.counts += counts

    def limits(self, clip_percentile: float = DEFAULT_CLIP_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel minimum and ``clip_percentile`` percentile (the smallest value reaching that share of pixels)."""
        if self.counts is None:
            raise ValueError("No image was added.")
        cumulative = np.cumsum(self.counts, axis=1)
        total = cumulative[:, -1:]
        low = np.argmax(cumulative > 0, axis=1)
        high = np.argmax(cumulative >= total * clip_percentile / 100.0, axis=1)
        return low.astype(np.float32), high.astype(np.float32)


def to_uint8(
    image: np.ndarray,
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
    limits: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Convert a ``(channels, height, width)`` image to uint8, clipping each channel at a high intensity.

    Each channel is scaled linearly from its low to its high intensity onto 0-255, values above the high one
    clipped (constant channels become 0). ``limits``: per-channel ``(low, high)`` shared by many images, e.g. a
    plate's from :class:`IntensityHistogram`, so brightness stays comparable between them; None takes this image's
    own minimum and ``clip_percentile`` percentile, which stretches every image to the full range.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"Expected a (channels, height, width) image, got shape {image.shape}.")
    if limits is None:
        flat = image.reshape(image.shape[0], -1)
        low, high = flat.min(axis=1), np.percentile(flat, clip_percentile, axis=1)
    else:
        low, high = (np.asarray(limit, dtype=np.float32) for limit in limits)
    span = np.where(high > low, high - low, 1.0)
    scaled = (np.minimum(image, high[:, None, None]) - low[:, None, None]) / span[:, None, None]
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


class ImageStoreWriter:
    """Write images (and optional masks) one at a time into a new HDF5 image store.

    The store is written to a temporary file beside ``path`` that replaces ``path`` only when the writer closes
    without an error (at the end of a ``with`` block, or on :meth:`close`): a failure half-way leaves no partial
    store, and a store being overwritten stays intact until the new one is complete.

    Parameters
    ----------
    path
        File to create.
    n_images, channels, shape
        Number of images, channel names and ``(height, width)`` of every image.
    with_masks
        Also create ``masks/nuclei`` and ``masks/cells``.
    clip_percentile, intensity_scale
        How the 16-bit images were converted (see :func:`to_uint8`), recorded in the file's attributes.
    overwrite
        Replace an existing file instead of raising.
    """

    def __init__(
        self,
        path: str | Path,
        n_images: int,
        channels: Sequence[str],
        shape: tuple[int, int],
        *,
        intensity_scale: str,
        with_masks: bool = False,
        clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
        overwrite: bool = False,
    ):
        import h5py

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        self.path = path
        self.partial = partial_path(path)
        self.file = h5py.File(self.partial, "w")
        try:
            n_channels = len(channels)
            self.images = self.file.create_dataset(
                "images", shape=(n_images, n_channels, *shape), dtype="uint8", chunks=(1, n_channels, *shape)
            )
            self.masks = create_mask_datasets(self.file, "masks", n_images, shape) if with_masks else {}
            self.file.attrs["channels"] = [str(channel) for channel in channels]
            self.file.attrs["clip_percentile"] = clip_percentile
            self.file.attrs["intensity_scale"] = intensity_scale
            self.store_id = uuid.uuid4().hex
            self.file.attrs["store_id"] = self.store_id
        except BaseException:
            self.discard()
            raise

    def write(self, index: int, image: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> None:
        """Store uint8 ``image`` (and ``masks``, a dict with the names in ``MASK_NAMES``) at row ``index``."""
        if image.dtype != np.uint8:
            raise TypeError(f"Store images must be uint8 (use to_uint8 first), got {image.dtype}.")
        self.images[index] = image
        for name, mask in (masks or {}).items():
            self.masks[name][index] = mask

    def close(self) -> None:
        """Close the store and move it to ``path``, replacing any file there."""
        self.file.close()
        self.partial.replace(self.path)

    def discard(self) -> None:
        """Close and delete the unfinished store, leaving ``path`` as it was."""
        self.file.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> ImageStoreWriter:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def create_mask_datasets(file, group: str, n_images: int, shape: tuple[int, int]) -> dict:
    """Create ``group/nuclei`` and ``group/cells`` (int32 label images, one compressed chunk per image) in ``file``."""
    return {
        name: file.create_dataset(
            f"{group}/{name}", shape=(n_images, *shape), dtype="int32", chunks=(1, *shape), compression="gzip"
        )
        for name in MASK_NAMES
    }


def store_path(adata, image_store: str | Path | None) -> str:
    """``image_store`` when given, else the store recorded in ``adata.uns["image_store"]``, checked to exist.

    Raises
    ------
    KeyError
        When neither names a store.
    FileNotFoundError
        When the store does not exist.
    ValueError
        When the store at the recorded path was rebuilt after ``adata`` was made (another ``store_id``): its rows
        would be other images than ``adata.obs["image_index"]`` means.
    """
    record = adata.uns.get(STORE_UNS_KEY, {})
    if image_store is None and "path" not in record:
        raise KeyError(
            "No image store: pass `image_store=` or build one with cpembed.io.build_image_store "
            "(or cpembed.datasets.simulate_images), which records it in adata.uns['image_store']."
        )
    path = Path(record["path"] if image_store is None else image_store)
    if not path.is_file():
        raise FileNotFoundError(f"Image store {path} does not exist.")
    if "store_id" in record and path.resolve() == Path(record["path"]).resolve():
        with open_image_store(path) as file:
            built = file.attrs.get("store_id")
        if built != record["store_id"]:
            raise ValueError(
                f"The image store {path} was rebuilt after this AnnData was made (store id {built}, the AnnData "
                f"records {record['store_id']}), so its rows are other images. Use the AnnData returned by the "
                "build that wrote the store."
            )
    return str(path)


def store_info(path: str | Path, channels: Sequence[str], store_id: str) -> dict:
    """The ``uns["image_store"]`` entry that ties an AnnData to its store (``store_id``: the writer's)."""
    return {"path": str(Path(path).resolve()), "channels": [str(channel) for channel in channels], "store_id": store_id}


def open_image_store(path: str | Path, mode: str = "r"):
    """Open an image store with h5py (``mode`` ``"r"`` or ``"r+"``); every reader of stores opens them here.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        Naming ``path``, when it is not an HDF5 file (or is truncated) or has no 4-D ``images`` dataset.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image store {path} does not exist.")
    with reading_file(path, "an HDF5 image store (build one with cpembed.io.build_image_store)"):
        file = h5py.File(path, mode)
    images = file.get("images")
    if not isinstance(images, h5py.Dataset) or images.ndim != 4:
        contents = list(file)
        file.close()
        raise ValueError(
            f"{path} is an HDF5 file but not an image store: it has no 4-D 'images' dataset (it holds {contents}). "
            "Build an image store with cpembed.io.build_image_store or cpembed.datasets.simulate_images."
        )
    return file


def read_store_images(path: str | Path, indices: Sequence[int] | np.ndarray, what: str = "images") -> np.ndarray:
    """Read rows ``indices`` of ``images`` (or ``masks/nuclei``, ``masks/cells``) from a store, in the given order."""
    with open_image_store(path) as file:
        if what not in file:
            raise KeyError(f"{path} has no {what!r} dataset (available: {list(file)}).")
        dataset = file[what]
        indices = check_indices(np.asarray(indices), dataset.shape[0], f"the store {path}")
        out = np.empty((len(indices), *dataset.shape[1:]), dtype=dataset.dtype)
        for row, index in enumerate(indices):
            dataset.read_direct(out, np.s_[index], np.s_[row])
    return out
