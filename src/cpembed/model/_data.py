"""Feeding wells to CellPainTR from memory or from an ``.h5ad`` opened in backed mode, in contiguous chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from anndata import AnnData
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from cpembed._validation import check_float32_range, get_matrix

from ._samplers import EpochBatchSampler

# Two requested rows at most this far apart are read with one slice (the rows between are discarded): a few
# wasted rows cost less than another read from disk.
MAX_READ_GAP = 64


def feature_matrix(adata: AnnData, layer: str | None = None):
    """The matrix CellPainTR reads: an array in memory, or the on-disk ``X`` of a backed AnnData (not loaded).

    Backed AnnData keep only ``X`` on disk, so ``layer`` must be ``None`` for them.
    """
    if adata.isbacked:
        if layer is not None:
            raise ValueError(f"adata is opened in backed mode, where only X is on disk; got layer={layer!r}.")
        return adata.X
    return get_matrix(adata, layer=layer)


def contiguous_runs(sorted_rows: np.ndarray, max_gap: int = MAX_READ_GAP) -> list[tuple[int, int]]:
    """Split sorted row indices into ``(start, stop)`` slices whose rows lie at most ``max_gap`` apart."""
    if len(sorted_rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) > max_gap) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(sorted_rows)]])
    return [(int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def read_rows(matrix, rows: np.ndarray, max_gap: int = MAX_READ_GAP) -> np.ndarray:
    """Read ``rows`` (in the order given) as a dense float32 array, with one slice per contiguous run.

    Works for numpy arrays, h5py datasets and the sparse datasets of backed AnnData alike. NaN and infinite
    values become 0, CellPainTR's input rule (Section 3.1 of the paper: a missing measurement reads as absent);
    finite values beyond float32's range raise a ValueError rather than becoming infinite.
    """
    rows = np.asarray(rows, dtype=np.int64)
    unique = np.unique(rows)
    parts = []
    for start, stop in contiguous_runs(unique, max_gap):
        block = matrix[start:stop]
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        in_run = unique[(unique >= start) & (unique < stop)]
        parts.append(block[in_run - start])
    dense = np.concatenate(parts) if parts else np.empty((0, matrix.shape[1]))
    check_float32_range(dense, "The profiles")
    dense = dense[np.searchsorted(unique, rows)].astype(np.float32, copy=False)
    return np.nan_to_num(dense, nan=0.0, posinf=0.0, neginf=0.0)


def iter_row_chunks(matrix, rows: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions, values)`` for consecutive chunks of sorted ``rows``; ``positions`` index ``rows``."""
    order = np.argsort(rows, kind="stable")
    for start in range(0, len(rows), chunk_size):
        positions = order[start : start + chunk_size]
        yield positions, read_rows(matrix, rows[positions])


class WellDataset(Dataset):
    """Wells as minibatches: indexing with a list of rows returns ``{"x", "source", "label"}`` tensors.

    Parameters
    ----------
    matrix
        Features (array, h5py dataset or backed sparse dataset), read lazily with :func:`read_rows`.
    sources
        Integer source per row.
    labels
        Integer label per row (``-1`` for unlabelled).
    """

    def __init__(self, matrix, sources: np.ndarray, labels: np.ndarray):
        self.matrix = matrix
        self.sources = np.asarray(sources, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        return {
            "x": torch.from_numpy(read_rows(self.matrix, rows)),
            "source": torch.from_numpy(self.sources[rows]),
            "label": torch.from_numpy(self.labels[rows]),
        }


class WellDataModule(LightningDataModule):
    """Training data for one stage: a :class:`WellDataset` and a factory for its (DDP-sharded) batch sampler.

    ``make_sampler(num_replicas, rank)`` is called when Lightning asks for the training loader, when the world
    size and rank are known.
    """

    def __init__(self, dataset: WellDataset, make_sampler: Callable[[int, int], EpochBatchSampler]):
        super().__init__()
        self.dataset = dataset
        self.make_sampler = make_sampler

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = self.make_sampler(num_replicas, rank)
        return DataLoader(self.dataset, sampler=sampler, batch_size=None)
