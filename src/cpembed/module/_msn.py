"""Masked Siamese Network (MSN) head, prototypes, loss and EMA target encoder.

MSN is Assran et al. 2022 ("Masked Siamese Networks for label-efficient learning"); CWA-MSN (the cross-well
aligned variant, see :class:`cpembed.model.CWAMSN`) uses it unchanged and only changes which images feed the
anchor and target views. Defaults are MSN's ViT-S/16 settings as also used by CWA-MSN (paper section 3.4):
projection head 384 -> 2048 -> 2048 -> 256, 1024 prototypes, temperature 0.1, target sharpening 0.25,
3 Sinkhorn iterations, loss weights 1 and 1, patch drop 0.15.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpembed._compat import foreach_lerp_

from ._vit import VisionTransformer


class ProjectionHead(nn.Module):
    """MSN projection head: ``Linear -> BatchNorm -> GELU`` twice, then a linear output layer."""

    def __init__(self, in_dim: int = 384, hidden_dim: int = 2048, out_dim: int = 256):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def prototype_probabilities(embeddings: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over prototypes of the cosine similarities divided by ``temperature`` (MSN's ``snn``)."""
    similarity = F.normalize(embeddings, dim=1) @ F.normalize(prototypes, dim=1).T
    return torch.softmax(similarity / temperature, dim=1)


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Raise probabilities to the power ``1 / temperature`` and renormalise each row."""
    sharp = probabilities ** (1.0 / temperature)
    return sharp / sharp.sum(dim=1, keepdim=True)


def sinkhorn(probabilities: torch.Tensor, n_iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp balancing of a ``(batch, n_prototypes)`` assignment matrix (Caron et al. 2020, as in MSN).

    Alternately rescales prototype columns to equal mass and sample rows to equal mass; the last step makes every
    row sum to 1 exactly, while column sums approach ``batch / n_prototypes`` as iterations increase.
    """
    q = probabilities.T / probabilities.sum()
    n_prototypes, batch = q.shape
    for _ in range(n_iterations):
        q = q / q.sum(dim=1, keepdim=True) / n_prototypes
        q = q / q.sum(dim=0, keepdim=True) / batch
    return (q * batch).T


@dataclass
class MSNLoss:
    """Terms of the MSN loss: ``total = cross_entropy_weight * cross_entropy + me_max_weight * me_max``."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    me_max: torch.Tensor


def msn_loss(
    anchor_embeddings: torch.Tensor,
    target_embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    temperature: float = 0.1,
    sharpen_temperature: float = 0.25,
    sinkhorn_iterations: int = 3,
    cross_entropy_weight: float = 1.0,
    me_max_weight: float = 1.0,
) -> MSNLoss:
    """MSN loss in fp32 (Assran et al. 2022, eq. 3 of CWA-MSN).

    Parameters
    ----------
    anchor_embeddings
        ``(n_views * batch, dim)`` projected anchor views, view-major (row ``v * batch + i``).
    target_embeddings
        ``(batch, dim)`` projected target views from the EMA encoder; no gradient flows through them.
    prototypes
        ``(n_prototypes, dim)`` learnable prototypes.
    temperature, sharpen_temperature, sinkhorn_iterations
        Softmax temperature 0.1, target sharpening 0.25 and 3 Sinkhorn iterations (MSN defaults).
    cross_entropy_weight, me_max_weight
        lambda1 and lambda2 (both 1 in MSN and CWA-MSN).

    Returns
    -------
    :class:`MSNLoss` with the cross-entropy between the (sharpened, balanced) target and each anchor view averaged
    over views and images, and the mean-entropy regulariser ``log K - H(mean anchor probability)``.
    """
    batch = target_embeddings.shape[0]
    if anchor_embeddings.shape[0] % batch:
        raise ValueError(f"{anchor_embeddings.shape[0]} anchor rows is not a multiple of {batch} targets.")
    n_views = anchor_embeddings.shape[0] // batch
    prototypes = prototypes.float()
    anchor_probs = prototype_probabilities(anchor_embeddings.float(), prototypes, temperature)
    with torch.no_grad():
        targets = prototype_probabilities(target_embeddings.float(), prototypes, temperature)
        targets = sinkhorn(sharpen(targets, sharpen_temperature), sinkhorn_iterations)
        targets = targets.repeat(n_views, 1)
    cross_entropy = -(targets * torch.log(anchor_probs.clamp_min(1e-30))).sum(dim=1).mean()
    mean_probs = anchor_probs.mean(dim=0)
    me_max = math.log(prototypes.shape[0]) + (mean_probs * torch.log(mean_probs.clamp_min(1e-30))).sum()
    total = cross_entropy_weight * cross_entropy + me_max_weight * me_max
    return MSNLoss(total=total, cross_entropy=cross_entropy, me_max=me_max)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float | torch.Tensor) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter (buffers are copied).

    ``momentum`` may be a 0-d tensor on the parameters' device: then it is never read on the host, so the update can
    be recorded in a CUDA graph and replayed with a new momentum.
    """
    target_params = [p for p in target.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    weight = 1.0 - momentum
    foreach_lerp_(target_params, online_params, [weight] * len(target_params) if torch.is_tensor(weight) else weight)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers(), strict=True):
        target_buffer.copy_(online_buffer)


class MaskedSiameseNetwork(nn.Module):
    """Anchor encoder + head, EMA target encoder + head, and prototypes.

    Parameters
    ----------
    encoder
        The anchor :class:`VisionTransformer`; the target encoder is a frozen deep copy updated by EMA.
    hidden_dim, out_dim, n_prototypes
        Projection head and prototype sizes (MSN ViT-S: 2048, 256, 1024).
    patch_drop
        Share of patch tokens dropped from the large anchor view (CWA-MSN: 0.15; focal views are not masked).
    temperature, sharpen_temperature, sinkhorn_iterations, cross_entropy_weight, me_max_weight
        Passed to :func:`msn_loss`.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        hidden_dim: int = 2048,
        out_dim: int = 256,
        n_prototypes: int = 1024,
        *,
        patch_drop: float = 0.15,
        temperature: float = 0.1,
        sharpen_temperature: float = 0.25,
        sinkhorn_iterations: int = 3,
        cross_entropy_weight: float = 1.0,
        me_max_weight: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= patch_drop < 1.0:
            raise ValueError(f"patch_drop must be in [0, 1), got {patch_drop}.")
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, hidden_dim, out_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        # MSN initialises prototypes uniformly in +-1/sqrt(out_dim).
        bound = out_dim**-0.5
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, out_dim).uniform_(-bound, bound))
        self.patch_drop = patch_drop
        self.loss_kwargs = {
            "temperature": temperature,
            "sharpen_temperature": sharpen_temperature,
            "sinkhorn_iterations": sinkhorn_iterations,
            "cross_entropy_weight": cross_entropy_weight,
            "me_max_weight": me_max_weight,
        }

    def forward(self, random_views: torch.Tensor, focal_views: torch.Tensor | None, target_views: torch.Tensor):
        """Compute the MSN loss of one batch.

        Parameters
        ----------
        random_views
            ``(batch, C, S, S)`` large anchor views (patch-dropped).
        focal_views
            ``(n_focal * batch, C, s, s)`` small anchor views, view-major, or None.
        target_views
            ``(batch, C, S, S)`` target views, encoded without gradient by the EMA encoder.
        """
        # As in MSN, each resolution runs through the encoder separately and the head sees them concatenated.
        anchors = [self.encoder(random_views, keep_ratio=1.0 - self.patch_drop)]
        if focal_views is not None and focal_views.shape[0]:
            anchors.append(self.encoder(focal_views))
        with torch.no_grad():
            targets = self.target_head(self.target_encoder(target_views))
        return msn_loss(self.head(torch.cat(anchors)), targets, self.prototypes, **self.loss_kwargs)

    def update_target(self, momentum: float | torch.Tensor) -> None:
        """EMA update of the target encoder and head from the anchor ones."""
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_head, self.head, momentum)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Representation used downstream: the target (EMA) encoder's output, head dropped (as MSN evaluates)."""
        return self.target_encoder(images)
