"""Seeded randomness for model construction and training that leaves the caller's random state as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_torch_random(seed: int, *, cuda: bool = False) -> Iterator[None]:
    """Run the block with torch's global generators seeded by ``seed``, then restore the caller's states.

    Weight initialisation, dropout and other draws from the global generators then depend on ``seed`` only, so a
    model built and trained twice with one seed gives the same numbers (on one machine and device). ``cuda`` also
    forks and seeds the generators of every visible GPU.
    """
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
