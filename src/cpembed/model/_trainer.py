"""How both models run Lightning: one trainer construction, whose library messages stay quiet unless asked for.

By default a training stage shows one progress bar and cpembed's own :mod:`logging` messages. Lightning's device
report ("GPU available: ...", "TPU available: ..."), its tips (the "litlogger" advertisement) and its
:class:`~lightning.fabric.utilities.warnings.PossibleUserWarning` advice (such as "The 'train_dataloader' does not have
many workers") appear only when the ``"cpembed"`` logger is set to DEBUG, as does the deprecation warning that
Lightning 2.6 triggers in torch 2.13, Lightning's note on every minibatch CellPainTR skips on purpose, and
scvi-tools' note that early stopping (which the models never use) is off under DDP::

    logging.getLogger("cpembed").setLevel(logging.DEBUG)

Warnings of every other kind pass as usual.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator
from lightning.pytorch.utilities.exceptions import SIGTERMException
from scvi.train import Trainer

#: Loggers of Lightning's informational messages, raised to WARNING during a quiet training run.
LIBRARY_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def training_device(
    accelerator: str, devices: int | list[int] | str
) -> tuple[str, int | list[int] | str, torch.device]:
    """Lightning's accelerator and devices for a training run, and the torch device of its first process.

    As in scvi-tools' ``train``, ``accelerator="auto"`` picks CUDA when it is there and the CPU otherwise (never
    Apple's MPS), and ``devices="auto"`` means one device, not every GPU of the machine. ``"gpu"`` is MPS where
    it is there and CUDA otherwise, as in Lightning.
    """
    if accelerator == "auto":
        accelerator = "cuda" if CUDAAccelerator.is_available() else "cpu"
    elif accelerator == "gpu":
        accelerator = "mps" if MPSAccelerator.is_available() else "cuda"
    if accelerator not in AcceleratorRegistry:
        names = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
        raise ValueError(f"accelerator={accelerator!r} is not one of Lightning's accelerators {names}.")
    if devices == "auto":
        devices = 1
    backend = AcceleratorRegistry.get(accelerator)
    return accelerator, devices, backend.get_parallel_devices(backend.parse_devices(devices))[0]


@contextmanager
def library_messages() -> Iterator[None]:
    """Run the block with Lightning's informational messages and advice silenced, unless cpembed logs at DEBUG.

    The levels of :data:`LIBRARY_LOGGERS` and the warning filters are restored afterwards, also on error.
    """
    if logging.getLogger("cpembed").isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        # Lightning 2.6.6 builds torch's LeafSpec, which torch 2.13.0 deprecates: nothing a user can change.
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
        )
        # scvi-tools' Trainer says so under DDP even when early stopping was not asked for (the models never use it).
        warnings.filterwarnings("ignore", message="early_stopping was automatically disabled", category=UserWarning)
        # CellPainTR's plan skips non-finite minibatches on purpose (returning None) and counts them in its history.
        warnings.filterwarnings("ignore", message=r"`training_step` returned `None`", category=UserWarning)
        try:
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def fit(plan: LightningModule, datamodule: LightningDataModule, **trainer_kwargs) -> None:
    """Fit ``plan`` on ``datamodule`` with a :class:`scvi.train.Trainer` built from ``trainer_kwargs``.

    The trainer is built and run inside :func:`library_messages`, so its output is the progress bar of the stage.
    Without a ``logger`` argument nothing is logged to disk (scvi-tools' default logger would write a
    ``lightning_logs`` folder into the working directory); both models record their losses in ``history_``.
    """
    trainer_kwargs.setdefault("logger", False)
    with library_messages():
        trainer = Trainer(**trainer_kwargs)
        trainer.fit(plan, datamodule)


def raise_stopped(error: BaseException, model_name: str) -> NoReturn:
    """Raise ``error``, which stopped a training run after the model was restored, as the user's action reads.

    Lightning turns Ctrl-C into ``SystemExit(1)`` and SIGTERM into a :class:`SIGTERMException` that exits with
    status 0; they are raised again as a KeyboardInterrupt and as an exit with a message (status 1). Anything else
    is raised as it is.
    """
    restored = "the model was restored to its state before the call"
    if isinstance(error, SIGTERMException):
        raise SystemExit(f"{model_name} training was stopped by SIGTERM; {restored}.") from None
    if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):
        raise KeyboardInterrupt(f"{model_name} training was interrupted; {restored}.") from None
    raise error
