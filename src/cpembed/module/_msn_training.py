"""One MSN optimisation step on uint8 image batches, and the per-iteration schedules of MSN / CWA-MSN.

Schedules (all stepped per iteration, Assran et al. 2022 and CWA-MSN section 3.4): learning rate linear warm-up
from ``start_lr`` to ``lr`` then cosine decay to ``final_lr``; weight decay cosine from 0.04 to 0.4 (none on
biases, norms and prototypes); EMA momentum linear from 0.996 to 1.0; gradient clipping at norm 3.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cpembed._compat import foreach_mul_

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


class MSNTrainingStep:
    """MSN optimisation steps: crop views on the device, AdamW on the MSN loss, EMA update of the target.

    On CUDA the step is recorded once as a CUDA graph and replayed: a step of the ViT-S/16 configuration launches
    over a thousand kernels, and launching them one by one from Python takes about as long as running them, so the
    GPU waits on the host (and on whatever else the host is doing, such as a data loader). A replay launches the
    whole step at once. The first ``warmup_steps`` steps run eagerly (they compile, autotune and create the
    optimiser state); the next is captured and then replayed with every new batch copied into its input buffers.
    Elsewhere, or with ``cuda_graph=False``, every step runs eagerly; both run the same operations.

    Learning rate, weight decay and EMA momentum change every step, so they live in device tensors that each call
    overwrites (a graph would otherwise replay the values it was recorded with). AdamW therefore runs without its
    own weight decay; the decoupled decay ``p <- p * (1 - lr * weight_decay)`` is applied to the weight matrices just
    before it, which is what AdamW does.

    Parameters
    ----------
    msn
        The network, already on its device.
    views
        Multi-crop settings.
    clip_grad
        Gradient norm clipping (MSN: 3.0; 0 disables).
    autocast_dtype
        Mixed-precision dtype (bf16 on CUDA), ``None`` for float32.
    cuda_graph
        Record and replay the step as a CUDA graph; default: on CUDA devices.
    warmup_steps
        Eager steps before the capture (at least 1).
    backward
        Runs the backward pass of the loss (default ``Tensor.backward``); a Lightning training plan passes its
        ``manual_backward`` under DDP, which synchronises the gradients of the processes (no CUDA graph then).
    """

    def __init__(
        self,
        msn: MaskedSiameseNetwork,
        views: ViewConfig,
        *,
        clip_grad: float = 3.0,
        autocast_dtype: torch.dtype | None = None,
        cuda_graph: bool | None = None,
        warmup_steps: int = 3,
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    ):
        device = msn.prototypes.device
        self.msn, self.views, self.clip_grad, self.autocast_dtype = msn, views, clip_grad, autocast_dtype
        self.device_type = device.type
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and warmup_steps < 1:
            raise ValueError("A CUDA-graph step needs at least one eager warm-up step (compilation, optimiser state).")
        if self.cuda_graph and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the network is on {device}.")
        self.warmup_steps = warmup_steps
        self.backward = backward
        self.learning_rate = torch.zeros((), device=device)
        self.decay_factor = torch.ones((), device=device)
        self.ema_momentum = torch.ones((), device=device)
        groups = parameter_groups(msn)
        self.decayed = [p for group in groups if group["apply_weight_decay"] for p in group["params"]]
        self.trained = [p for group in groups for p in group["params"]]
        on_cuda = {"fused": True, "capturable": True} if device.type == "cuda" else {"foreach": False}
        self.optimizer = torch.optim.AdamW(self.trained, lr=self.learning_rate, weight_decay=0.0, **on_cuda)
        self.n_steps = 0
        self._graph = None
        self._graph_inputs: tuple = ()
        self._graph_loss = None

    def __call__(
        self,
        anchor_images: torch.Tensor,
        target_images: torch.Tensor,
        *,
        learning_rate: float,
        weight_decay: float,
        momentum: float,
        anchor_stats: torch.Tensor | None = None,
        target_stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Take one step on a batch of uint8 images already on the device; return the loss (a device scalar).

        ``anchor_stats`` / ``target_stats``: optional per-image channel statistics the views are standardised with
        (see :func:`make_views`); give them on every step or on none. Reading the loss synchronises the device, so
        callers log it sparingly.
        """
        self.learning_rate.fill_(learning_rate)
        self.decay_factor.fill_(1.0 - learning_rate * weight_decay)
        self.ema_momentum.fill_(momentum)
        inputs = (anchor_images, target_images, anchor_stats, target_stats)
        self.n_steps += 1
        if not self.cuda_graph or self.n_steps <= self.warmup_steps:
            return self._step(*inputs)
        if self._graph is None:
            self._capture(inputs)
        for buffer, tensor in zip(self._graph_inputs, inputs, strict=True):
            if (buffer is None) != (tensor is None) or (buffer is not None and buffer.shape != tensor.shape):
                raise ValueError("A replayed step needs inputs of the shapes (and statistics) it was captured with.")
            if buffer is not None:
                buffer.copy_(tensor)
        self._graph.replay()
        return self._graph_loss.clone()  # the graph overwrites its loss at the next replay

    def _capture(self, inputs: tuple) -> None:
        self._graph_inputs = tuple(None if tensor is None else tensor.clone() for tensor in inputs)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._graph_loss = self._step(*self._graph_inputs)

    def _step(self, anchor_images, target_images, anchor_stats, target_stats) -> torch.Tensor:
        """The step itself, free of host synchronisation so that it can be captured."""
        random_views, focal_views, target_views = make_views(
            anchor_images, target_images, self.views, anchor_stats, target_stats
        )
        autocast = torch.autocast(
            self.device_type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
            cache_enabled=False,  # a cast cached across steps would go stale inside a replayed graph
        )
        with autocast:
            loss = self.msn(random_views, focal_views, target_views)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss.total)
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.trained, self.clip_grad)
        with torch.no_grad():
            foreach_mul_(self.decayed, self.decay_factor)
        self.optimizer.step()
        self.msn.update_target(self.ema_momentum)
        return loss.total.detach()
