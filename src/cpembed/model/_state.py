"""Snapshots of a network's weights, for stage records and for restoring a model after a failed training."""

from __future__ import annotations

import torch


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights and buffers of ``module`` on the CPU, unaffected by later training."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}
