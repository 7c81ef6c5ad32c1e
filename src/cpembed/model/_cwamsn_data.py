"""CWA-MSN's training data: cross-well pairs of store images, batched per epoch and copied ahead to the device.

CWA-MSN (paper section 3.2) draws a perturbation, then two distinct wells that received it (anchor and target well,
possibly on different plates or batches), then one image from each. The single-well ablation (plain MSN) draws the
perturbation and well the same way and uses one image for both the anchor and the target views.

Needs numpy, h5py and torch only (no anndata, scvi-tools or Lightning), so the speed benchmark can run it alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from cpembed.module import StoreImages


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


class PairBatches(torch.utils.data.Dataset):
    """One process's share of an epoch of ``n_batches`` batches of anchor and target images.

    A batch is ``(anchor_images, target_images, anchor_rows, target_rows)``: uint8 image tensors and the int64 store
    rows they were read from (to look up per-image statistics). Batch ``i`` of epoch ``epoch`` is drawn from
    ``numpy.random.default_rng((seed, epoch, i))``, so results depend neither on the number of data-loader workers
    nor, for one process, on anything but the seed. With ``num_replicas`` processes (DDP), process ``rank`` takes
    batches ``rank, rank + num_replicas, ...``, every process as many (the epoch is rounded up to a multiple of
    ``num_replicas``). Use with ``DataLoader(..., batch_size=None)``.
    """

    def __init__(
        self,
        images: StoreImages,
        sampler: CrossWellSampler,
        batch_size: int,
        n_batches: int,
        seed: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank}.")
        self.images, self.sampler = images, sampler
        self.batch_size, self.n_batches, self.seed = batch_size, n_batches, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def __len__(self) -> int:
        return -(-self.n_batches // self.num_replicas)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, self.rank + index * self.num_replicas))
        anchors, targets = self.sampler.sample(self.batch_size, rng)
        images = torch.from_numpy(self.images.read(np.concatenate([anchors, targets])))
        n = self.batch_size
        return images[:n], images[n:], torch.from_numpy(anchors), torch.from_numpy(targets)


class EpochsOnDevice:
    """Iterate ``loader`` (over a :class:`PairBatches`) once per epoch, its batches copied ahead to ``device``.

    Each iteration is the next epoch: the dataset's ``epoch`` is set before the loader starts its workers, so they
    draw that epoch's batches. Lightning takes this as a training loader; the batches reach the training step already
    on the device, the copy of the next one overlapping the step on the current one (:func:`prefetch_to_device`).
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device):
        self.loader, self.device = loader, device
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self.loader.dataset.epoch = self.epoch
        self.epoch += 1
        return prefetch_to_device(self.loader, self.device)


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
