"""One MSN optimisation step on uint8 image batches, and the per-iteration schedules of MSN / CWA-MSN.

Schedules (all stepped per iteration, Assran et al. 2022 and CWA-MSN section 3.4): learning rate linear warm-up
from ``start_lr`` to ``lr`` then cosine decay to ``final_lr``; weight decay cosine from 0.04 to 0.4 (none on
biases, norms and prototypes); EMA momentum linear from 0.996 to 1.0; gradient clipping at norm 3.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._crops import random_resized_crop
from ._msn import MaskedSiameseNetwork


@dataclass(frozen=True)
class ViewConfig:
    """Multi-crop views (MSN defaults): 1 random + 10 focal anchor views, 1 target view, crops and flips only."""

    image_size: int = 224
    focal_size: int = 96
    n_focal_views: int = 10
    random_scale: tuple[float, float] = (0.3, 1.0)
    focal_scale: tuple[float, float] = (0.05, 0.3)


def make_views(
    anchor_images: torch.Tensor,
    target_images: torch.Tensor,
    views: ViewConfig,
    anchor_stats: torch.Tensor | None = None,
    target_stats: torch.Tensor | None = None,
):
    """Random, focal and target views of uint8 images already on the device (see :func:`random_resized_crop`).

    ``anchor_stats`` and ``target_stats`` (optional, ``(batch, 2, channels)``) standardise each image's views with
    given channel means and standard deviations instead of the views' own.
    """
    random_views = random_resized_crop(anchor_images, views.image_size, views.random_scale, channel_stats=anchor_stats)
    focal_views = None
    if views.n_focal_views:
        focal_views = random_resized_crop(
            anchor_images, views.focal_size, views.focal_scale, n_views=views.n_focal_views, channel_stats=anchor_stats
        )
    target_views = random_resized_crop(target_images, views.image_size, views.random_scale, channel_stats=target_stats)
    return random_views, focal_views, target_views


def parameter_groups(msn: MaskedSiameseNetwork) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only (not on biases, norms or prototypes, as MSN)."""
    decay, no_decay = [], []
    for name, param in msn.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim == 1 or name == "prototypes" else decay).append(param)
    return [{"params": decay, "apply_weight_decay": True}, {"params": no_decay, "apply_weight_decay": False}]


@dataclass(frozen=True)
class Schedule:
    """Per-iteration learning rate, weight decay and EMA momentum (defaults: MSN's ViT-S config / CWA-MSN 3.4)."""

    total_steps: int
    warmup_steps: int
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    momentum: float = 0.996
    final_momentum: float = 1.0

    def _progress(self, step: int) -> float:
        return min(1.0, step / max(1, self.total_steps))

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``final_lr``."""
        if step < self.warmup_steps:
            return self.start_lr + (self.lr - self.start_lr) * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.final_lr + (self.lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def weight_decay_at(self, step: int) -> float:
        """Cosine increase from ``weight_decay`` to ``final_weight_decay``."""
        cosine = 0.5 * (1.0 + math.cos(math.pi * self._progress(step)))
        return self.final_weight_decay + (self.weight_decay - self.final_weight_decay) * cosine

    def momentum_at(self, step: int) -> float:
        """Linear increase from ``momentum`` to ``final_momentum``."""
        return self.momentum + (self.final_momentum - self.momentum) * self._progress(step)


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, step: int) -> None:
    """Set the learning rate and weight decay of every parameter group for iteration ``step``."""
    lr, weight_decay = schedule.learning_rate(step), schedule.weight_decay_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0


def training_step(
    msn: MaskedSiameseNetwork,
    optimizer: torch.optim.Optimizer,
    anchor_images: torch.Tensor,
    target_images: torch.Tensor,
    views: ViewConfig,
    *,
    momentum: float,
    clip_grad: float = 3.0,
    autocast_dtype: torch.dtype | None = None,
    anchor_stats: torch.Tensor | None = None,
    target_stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop views on the device, take one optimiser step on the MSN loss, then update the EMA target.

    ``anchor_stats`` / ``target_stats``: optional per-image channel statistics the views are standardised with (see
    :func:`make_views`). Returns the (detached) total loss; reading it synchronises the device, so callers log it
    sparingly.
    """
    random_views, focal_views, target_views = make_views(
        anchor_images, target_images, views, anchor_stats, target_stats
    )
    device_type = anchor_images.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = msn(random_views, focal_views, target_views)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(msn.parameters(), clip_grad)
    optimizer.step()
    msn.update_target(momentum)
    return loss.total.detach()
