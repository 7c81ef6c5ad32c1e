"""Files and folders written whole or not at all: a temporary sibling is written, then moved onto the target.

A reader of the target sees its complete old content or the complete new one, never a mix: a failure half-way (a
full disk, a bad value, Ctrl-C) leaves the target as it was and no half-written file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Name prefix of the temporary files and folders, so that one left by a killed process says what it is.
INCOMPLETE_PREFIX = ".incomplete-"


def partial_path(path: Path) -> Path:
    """A new, empty temporary file beside ``path`` whose name ends like ``path`` (so ``.csv.gz`` still compresses).

    It is hidden (``.incomplete-<random>-<name>``) and on the same file system, so :func:`os.replace` moves it onto
    ``path`` in one step.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=INCOMPLETE_PREFIX, suffix=f"-{path.name}", dir=path.parent)
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


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; when the block succeeds it replaces ``target``, else it is removed.

    A reader of ``target`` therefore sees the complete old content or the complete new one, never a mix: an
    interrupted or failed write (an exception, Ctrl-C) leaves ``target`` as it was. Only a process killed outright
    can leave a hidden ``.incomplete-<name>-...`` folder beside ``target``, whose name says that it is unfinished.

    Parameters
    ----------
    target
        Folder to write; its parent is created if needed. An existing ``target`` is replaced as a whole, so the
        caller decides beforehand whether it may be.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{INCOMPLETE_PREFIX}{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f"{INCOMPLETE_PREFIX}{target.name}-old-", dir=target.parent))
            target.rename(previous / target.name)
            staging.rename(target)
            shutil.rmtree(previous)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
