"""Lightning data module and training plan of CWA-MSN: MSN steps on cross-well image pairs, per-iteration schedules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule

from cpembed.module import MaskedSiameseNetwork, MSNTrainingStep, Schedule, StoreImages, ViewConfig

from ._cwamsn_data import CrossWellSampler, EpochsOnDevice, PairBatches


@dataclass(frozen=True)
class Optimisation:
    """AdamW and MSN's per-iteration schedules (defaults: MSN's ViT-S config, CWA-MSN section 3.4).

    Parameters
    ----------
    start_lr, lr, final_lr, warmup_epochs
        Linear warm-up from ``start_lr`` to ``lr`` over ``warmup_epochs``, then cosine decay to ``final_lr``.
    weight_decay, ema_momentum
        Start and end of the cosine weight decay and of the linear EMA momentum.
    clip_grad
        Gradient norm clipping (0 disables).
    cuda_graph
        On one CUDA device, record the step once as a CUDA graph and replay it (see
        :class:`~cpembed.module.MSNTrainingStep`).
    """

    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    warmup_epochs: float = 15
    weight_decay: tuple[float, float] = (0.04, 0.4)
    ema_momentum: tuple[float, float] = (0.996, 1.0)
    clip_grad: float = 3.0
    cuda_graph: bool = True

    def schedule(self, steps_per_epoch: int, max_epochs: int) -> Schedule:
        """The per-iteration schedule of a run of ``max_epochs`` epochs of ``steps_per_epoch`` steps."""
        return Schedule(
            max_epochs * steps_per_epoch,
            int(self.warmup_epochs * steps_per_epoch),
            self.start_lr,
            self.lr,
            self.final_lr,
            *self.weight_decay,
            *self.ema_momentum,
        )


class PairDataModule(LightningDataModule):
    """Cross-well pairs of the image store for each training process, batches copied ahead to its device.

    Parameters
    ----------
    store
        Path of the HDF5 image store.
    sampler
        Draws the anchor and target rows.
    batch_size
        Pairs per minibatch and process.
    n_batches
        Minibatches per epoch, shared among the processes.
    seed
        Seed of the pair sampling.
    num_workers
        Data-loader processes reading the store.
    """

    def __init__(
        self, store: str, sampler: CrossWellSampler, batch_size: int, n_batches: int, seed: int, num_workers: int
    ):
        super().__init__()
        self.sampler = sampler
        self.batch_size, self.n_batches, self.seed, self.num_workers = batch_size, n_batches, seed, num_workers
        self.images = StoreImages(store)

    def train_dataloader(self) -> EpochsOnDevice:
        trainer = self.trainer
        device = trainer.strategy.root_device
        pairs = PairBatches(
            self.images,
            self.sampler,
            self.batch_size,
            self.n_batches,
            self.seed,
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
        )
        loader = torch.utils.data.DataLoader(
            pairs, batch_size=None, num_workers=self.num_workers, pin_memory=device.type == "cuda"
        )
        return EpochsOnDevice(loader, device)

    def teardown(self, stage: str) -> None:
        """Close the store when training ends, so that the file is free for writing (the masks of a segmentation)."""
        self.images.close()


class CWAMSNTrainingPlan(LightningModule):
    """MSN training of CWA-MSN as a Lightning module, fitted by scvi-tools' :class:`~scvi.train.Trainer`.

    Each step is one :class:`~cpembed.module.MSNTrainingStep`: views cropped on the device, the MSN loss under bf16
    autocast on CUDA, AdamW with decoupled weight decay, the EMA update of the target encoder, all with the learning
    rate, weight decay and momentum of the step's place in the schedule. The step owns its optimiser (Lightning's
    manual optimisation), which lets it run as a replayed CUDA graph on one device; under DDP it runs eagerly and its
    backward pass goes through Lightning, which synchronises the gradients.

    Parameters
    ----------
    module
        The network.
    views
        Multi-crop settings.
    optimisation
        Schedules, clipping and the CUDA-graph switch.
    channel_stats
        ``(n_store_rows, 2, channels)`` channel means and standard deviations to standardise each image with, or
        ``None`` to standardise each view on its own pixels.
    """

    def __init__(
        self,
        module: MaskedSiameseNetwork,
        views: ViewConfig,
        optimisation: Optimisation,
        channel_stats: np.ndarray | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.module, self.views, self.optimisation = module, views, optimisation
        stats = None if channel_stats is None else torch.from_numpy(channel_stats)
        self.register_buffer("channel_stats", stats, persistent=False)
        self.epoch_losses: list[dict[str, float]] = []
        self._step: MSNTrainingStep | None = None
        self._schedule: Schedule | None = None
        self._loss_sum = torch.zeros(())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        on_cuda = self.device.type == "cuda"
        distributed = self.trainer.world_size > 1
        self._step = MSNTrainingStep(
            self.module,
            self.views,
            clip_grad=self.optimisation.clip_grad,
            autocast_dtype=torch.bfloat16 if on_cuda else None,
            cuda_graph=self.optimisation.cuda_graph and on_cuda and not distributed,
            backward=self.manual_backward if distributed else torch.Tensor.backward,
        )
        return self._step.optimizer

    def on_train_start(self) -> None:
        self._schedule = self.optimisation.schedule(self.trainer.num_training_batches, self.trainer.max_epochs)

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        anchor_images, target_images, anchor_rows, target_rows = batch
        step, schedule = self._step.n_steps, self._schedule
        stats = self.channel_stats
        loss = self._step(
            anchor_images,
            target_images,
            learning_rate=schedule.learning_rate(step),
            weight_decay=schedule.weight_decay_at(step),
            momentum=schedule.momentum_at(step),
            anchor_stats=None if stats is None else stats[anchor_rows],
            target_stats=None if stats is None else stats[target_rows],
        )
        self._loss_sum += loss  # on the device: the loss is read once per epoch, not once per step
        return loss

    def on_train_epoch_end(self) -> None:
        n_steps = torch.tensor(float(self.trainer.num_training_batches), device=self.device)
        totals = torch.stack([self._loss_sum.float(), n_steps])
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        loss = float(totals[0] / totals[1])
        self.epoch_losses.append({"loss": loss})
        self.log("loss_train", loss, prog_bar=True)
