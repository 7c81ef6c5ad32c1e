"""Uint8 images read by row from an HDF5 image store (numpy and h5py only)."""

from __future__ import annotations

import numpy as np


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

    def close(self) -> None:
        """Close the file of this process (a later read opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        return {"path": self.path, "_file": None}
