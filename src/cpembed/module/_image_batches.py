"""Cross-well pair sampling and batches of uint8 images streamed from an HDF5 image store (numpy, h5py, torch).

:func:`prefetch_to_device` moves the batches to the GPU on a side stream, so that the copy of the next batch
overlaps the training step on the current one.

CWA-MSN (paper section 3.2) draws a perturbation, then two distinct wells that received it (anchor and target well,
possibly on different plates or batches), then one image from each. The single-well ablation (plain MSN) draws the
perturbation and well the same way and uses one image for both the anchor and the target views.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


class CrossWellSampler:
    """Draw (anchor image, target image) store rows by perturbation and well.

    Parameters
    ----------
    perturbations, wells
        Per image: perturbation and well codes (any hashable labels; a well belongs to one perturbation).
    image_rows
        Per image: its row in the image store.
    cross_well
        True: anchor and target from two distinct wells of the same perturbation (CWA-MSN). False: one image used
        for both (single-well, plain MSN).
    """

    def __init__(self, perturbations, wells, image_rows, *, cross_well: bool = True):
        perturbations, wells = np.asarray(perturbations), np.asarray(wells)
        image_rows = np.asarray(image_rows, dtype=np.int64)
        self.cross_well = cross_well
        self.wells_of: list[list[np.ndarray]] = []
        self.perturbation_names = []
        for perturbation in np.unique(perturbations):
            in_perturbation = perturbations == perturbation
            well_images = [image_rows[in_perturbation & (wells == well)] for well in np.unique(wells[in_perturbation])]
            if len(well_images) >= 2 or (not cross_well and well_images):
                self.wells_of.append(well_images)
                self.perturbation_names.append(perturbation)
        if not self.wells_of:
            raise ValueError("No perturbation has images in at least two wells; cross-well sampling needs them.")

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` anchor and target store rows (one perturbation drawn uniformly per pair)."""
        anchors = np.empty(batch_size, dtype=np.int64)
        targets = np.empty(batch_size, dtype=np.int64)
        for i, p in enumerate(rng.integers(len(self.wells_of), size=batch_size)):
            wells = self.wells_of[p]
            if self.cross_well:
                anchor_well, target_well = rng.choice(len(wells), size=2, replace=False)
                anchors[i] = rng.choice(wells[anchor_well])
                targets[i] = rng.choice(wells[target_well])
            else:
                anchors[i] = targets[i] = rng.choice(wells[rng.integers(len(wells))])
        return anchors, targets


class StoreImages:
    """Read uint8 images by row from an HDF5 store, opening the file lazily (once per data-loader worker)."""

    def __init__(self, path: str):
        self.path = str(path)
        self._file = None

    @property
    def dataset(self):
        """The ``images`` dataset (opened on first use in this process)."""
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file["images"]

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images at ``rows`` (any order, repeats allowed), each read as one chunk straight into ``out``.

        ``out`` (optional) is a preallocated ``(len(rows), channels, h, w)`` uint8 array, e.g. pinned memory.
        """
        dataset = self.dataset
        if out is None:
            out = np.empty((len(rows), *dataset.shape[1:]), dtype=np.uint8)
        for position, row in enumerate(rows):
            dataset.read_direct(out, np.s_[int(row)], np.s_[position])
        return out

    def __getstate__(self):
        return {"path": self.path, "_file": None}


class PairBatches(torch.utils.data.Dataset):
    """Epoch of ``n_batches`` batches of anchor and target images drawn by a :class:`CrossWellSampler`.

    A batch is ``(anchor_images, target_images, anchor_rows, target_rows)``: uint8 image tensors and the int64 store
    rows they were read from (to look up per-image statistics). Batch ``i`` of epoch ``epoch`` is drawn from
    ``numpy.random.default_rng((seed, epoch, i))``, so results do not depend on the number of data-loader workers.
    Use with ``DataLoader(..., batch_size=None)``.
    """

    def __init__(self, images: StoreImages, sampler: CrossWellSampler, batch_size: int, n_batches: int, seed: int):
        self.images, self.sampler = images, sampler
        self.batch_size, self.n_batches, self.seed = batch_size, n_batches, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        anchors, targets = self.sampler.sample(self.batch_size, rng)
        images = torch.from_numpy(self.images.read(np.concatenate([anchors, targets])))
        n = self.batch_size
        return images[:n], images[n:], torch.from_numpy(anchors), torch.from_numpy(targets)


def prefetch_to_device(
    batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield each batch (a tuple of tensors) on ``device``, copying the next one while the current one is in use.

    On CUDA the copies run on a side stream (non-blocking, so pinned host tensors, as a ``DataLoader`` with
    ``pin_memory=True`` gives, are copied asynchronously); the compute stream waits for a batch's copy only when
    the batch is yielded. Elsewhere each batch is simply moved.
    """
    if device.type != "cuda":
        for batch in batches:
            yield tuple(tensor.to(device) for tensor in batch)
        return
    copy_stream = torch.cuda.Stream(device)

    def start_copy(batch):
        with torch.cuda.stream(copy_stream):
            copied = tuple(tensor.to(device, non_blocking=True) for tensor in batch)
            done = torch.cuda.Event()
            done.record(copy_stream)
        return copied, done

    pending = None
    for batch in batches:
        started = start_copy(batch)
        if pending is not None:
            yield _ready(*pending, device)
        pending = started
    if pending is not None:
        yield _ready(*pending, device)


def _ready(batch: tuple[torch.Tensor, ...], copied, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Make the compute stream wait for ``batch``'s copy (event ``copied``) and mark the tensors as used there."""
    compute_stream = torch.cuda.current_stream(device)
    compute_stream.wait_event(copied)
    for tensor in batch:
        tensor.record_stream(compute_stream)
    return batch
