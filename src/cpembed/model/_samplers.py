"""Batch samplers for CellPainTR training: block-shuffled plain batches and P x K batches with positives.

Every sampler yields lists of row indices (one list per minibatch) and is DDP-aware in the way
:class:`torch.utils.data.DistributedSampler` is: all replicas build the same epoch (seeded by ``seed`` and the
epoch number set by Lightning through :meth:`set_epoch`), pad it to a multiple of ``num_replicas`` by repeating
its first batches, and replica ``rank`` keeps every ``num_replicas``-th batch. Lightning must therefore not wrap
them in its own distributed sampler (``Trainer(use_distributed_sampler=False)``, which the model sets).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np


class EpochBatchSampler(ABC):
    """Base class: a seeded epoch of minibatches, sharded across ``num_replicas`` processes.

    Parameters
    ----------
    seed
        Seed of the shuffling; the epoch number is added so each epoch differs.
    num_replicas
        Number of processes sharing the epoch (the DDP world size).
    rank
        Index of this process among the replicas.
    """

    def __init__(self, *, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank}.")
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffling the next iteration uses (called by Lightning each epoch)."""
        self.epoch = epoch

    @abstractmethod
    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """All minibatches of one epoch, before sharding."""

    def _shard(self) -> list[np.ndarray]:
        batches = self.epoch_batches(np.random.default_rng([self.seed, self.epoch]))
        if not batches:
            return []
        n_padded = -(-len(batches) // self.num_replicas) * self.num_replicas
        padded = [batches[i % len(batches)] for i in range(n_padded)]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._shard():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._shard())


class BlockShuffleBatchSampler(EpochBatchSampler):
    """Plain minibatches that each touch few contiguous row blocks, for reading backed data in chunks.

    Rows are cut into blocks of ``block_size`` consecutive rows; the order of the blocks and the rows within each
    block are shuffled, then the sequence is cut into minibatches. A minibatch thus spans one or two blocks,
    which keeps reads from an ``.h5ad`` opened in backed mode contiguous. With ``block_size`` at least the number
    of rows this is a plain shuffle.

    Parameters
    ----------
    indices
        Rows to draw from.
    batch_size
        Rows per minibatch.
    block_size
        Consecutive rows per block.
    drop_last
        Drop the last, smaller minibatch.
    **kwargs
        ``seed``, ``num_replicas`` and ``rank`` of :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        *,
        block_size: int = 65_536,
        drop_last: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if batch_size < 1 or block_size < 1:
            raise ValueError("batch_size and block_size must be positive.")
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.batch_size = batch_size
        self.block_size = block_size
        self.drop_last = drop_last

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        blocks = [
            self.indices[start : start + self.block_size] for start in range(0, len(self.indices), self.block_size)
        ]
        order = np.concatenate([rng.permutation(blocks[i]) for i in rng.permutation(len(blocks))]) if blocks else []
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches


class PKBatchSampler(EpochBatchSampler):
    """P x K minibatches: ``P`` labels with ``K`` wells each, so every label in a batch has positives.

    Supervised contrastive learning (Khosla et al., 2020) needs at least two wells of a label in a minibatch;
    uniform sampling rarely provides them when there are many labels. Each epoch the wells of every label (within
    every group, see ``groups``) are shuffled and cut into runs of ``wells_per_label`` wells (a trailing run of a
    single well joins the previous run, so each run holds at least two); runs are shuffled and packed
    ``batch_size // wells_per_label`` at a time. Every labelled well appears once per epoch. Labels with a single
    well cannot form positives and are left out.

    Parameters
    ----------
    labels
        Integer label per row; negative values mark unlabelled rows, which are left out.
    batch_size
        Target rows per minibatch (``P * K``).
    wells_per_label
        ``K``, wells of one label per run.
    groups
        Optional integer group per row (the source). When given, every minibatch holds rows of one group only,
        as CellPainTR's intra-source stage requires (Appendix A.3 of the paper).
    **kwargs
        ``seed``, ``num_replicas`` and ``rank`` of :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        *,
        wells_per_label: int = 4,
        groups: np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if wells_per_label < 2:
            raise ValueError("wells_per_label must be at least 2 so that every label has a positive.")
        if batch_size < wells_per_label:
            raise ValueError(f"batch_size ({batch_size}) must be at least wells_per_label ({wells_per_label}).")
        labels = np.asarray(labels, dtype=np.int64)
        groups = np.zeros_like(labels) if groups is None else np.asarray(groups, dtype=np.int64)
        if groups.shape != labels.shape:
            raise ValueError("labels and groups must have one entry per row.")
        self.wells_per_label = wells_per_label
        self.labels_per_batch = max(batch_size // wells_per_label, 1)
        self.pools = _label_pools(labels, groups)
        if not self.pools:
            raise ValueError("No label has two or more wells (within one source): no positive pairs can be formed.")

    @property
    def indices(self) -> np.ndarray:
        """Rows the sampler draws from (labelled rows whose label has at least two wells)."""
        return np.sort(np.concatenate([pool for pools in self.pools.values() for pool in pools]))

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        batches = []
        for pools in self.pools.values():
            runs = [run for pool in pools for run in _split_runs(rng.permutation(pool), self.wells_per_label)]
            order = rng.permutation(len(runs))
            for start in range(0, len(runs), self.labels_per_batch):
                batches.append(np.concatenate([runs[i] for i in order[start : start + self.labels_per_batch]]))
        return [batches[i] for i in rng.permutation(len(batches))]


def _label_pools(labels: np.ndarray, groups: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Rows of each label with at least two wells, per group."""
    pools: dict[int, list[np.ndarray]] = {}
    labelled = labels >= 0
    for group in np.unique(groups[labelled]):
        in_group = labelled & (groups == group)
        per_label = [np.flatnonzero(in_group & (labels == label)) for label in np.unique(labels[in_group])]
        per_label = [rows for rows in per_label if len(rows) >= 2]
        if per_label:
            pools[int(group)] = per_label
    return pools


def _split_runs(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """Cut ``rows`` into runs of ``size``; a trailing single row joins the previous run."""
    runs = [rows[start : start + size] for start in range(0, len(rows), size)]
    if len(runs) > 1 and len(runs[-1]) < 2:
        last = runs.pop()
        runs[-1] = np.concatenate([runs[-1], last])
    return runs
