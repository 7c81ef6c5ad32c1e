"""Write files whole or not at all: every writer of :mod:`cpembed.io` writes a temporary file, then renames it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: Path) -> Path:
    """A new, empty temporary file beside ``path`` whose name ends like ``path`` (so ``.csv.gz`` still compresses).

    It is hidden (``.partial-<random>-<name>``) and on the same file system, so :func:`os.replace` moves it onto
    ``path`` in one step.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".partial-", suffix=f"-{path.name}", dir=path.parent)
    os.close(handle)
    # mkstemp makes the file private (0600); give it the permissions a new file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` when the block succeeds and is deleted otherwise.

    A failure half-way (a full disk, a bad value, an interrupt) leaves any previous ``path`` untouched and no
    half-written file behind.
    """
    path = Path(path)
    temporary = partial_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
