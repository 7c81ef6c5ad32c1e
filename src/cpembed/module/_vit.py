"""Vision Transformer (ViT) for multi-channel microscopy images, in plain PyTorch.

Follows Dosovitskiy et al. 2021 ("An image is worth 16x16 words") with the ViT-S/16 sizes used by MSN
(Assran et al. 2022) and CWA-MSN: width 384, depth 12, 6 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6,
a CLS token and a learned positional embedding. The patch embedding takes ``in_channels`` stains (5 for Cell
Painting); its parameters are those of a ``Conv2d`` with kernel and stride ``patch_size``, applied as one matrix
product over flattened patches (:func:`embed_patches`), the same numbers without cuDNN's layout conversions.
Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA kernels."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Width {dim} is not divisible by the number of heads {num_heads}.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, qkv_bias: bool, norm_eps: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def embed_patches(images: torch.Tensor, projection: nn.Conv2d) -> torch.Tensor:
    """Patch tokens ``(batch, grid_h * grid_w, embed_dim)``, row-major over the grid, of a patchifying ``Conv2d``.

    Equals ``projection(images).flatten(2).transpose(1, 2)`` for a convolution whose kernel and stride are both the
    patch size (pixels beyond the last whole patch are ignored, as there): each patch is flattened channel-major
    and multiplied by the flattened kernel, a single matrix product that follows autocast.
    """
    patch = projection.kernel_size[0]
    batch, channels, height, width = images.shape
    grid_h, grid_w = height // patch, width // patch
    patches = images[..., : grid_h * patch, : grid_w * patch].reshape(batch, channels, grid_h, patch, grid_w, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid_h * grid_w, channels * patch * patch)
    return F.linear(patches, projection.weight.flatten(1), projection.bias)


def keep_random_patches(tokens: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Keep a random ``keep_ratio`` share of the patch tokens of each image (MSN patch dropping).

    Parameters
    ----------
    tokens
        Patch tokens ``(batch, n_patches, dim)`` with positional embedding already added (no CLS token).
    keep_ratio
        Share of tokens kept, rounded down (MSN keeps ``floor(n_patches * (1 - drop))``); 1 keeps all.

    Returns
    -------
    The kept tokens ``(batch, n_kept, dim)``, drawn independently per image.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}.")
    batch, n_patches, dim = tokens.shape
    n_kept = max(1, math.floor(n_patches * keep_ratio))
    if n_kept == n_patches:
        return tokens
    order = torch.rand(batch, n_patches, device=tokens.device).argsort(dim=1)[:, :n_kept]
    return tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, dim))


class VisionTransformer(nn.Module):
    """ViT encoder returning one embedding per image (CLS token or mean of patch tokens).

    Parameters
    ----------
    in_channels
        Number of stains (5 for Cell Painting: DNA, ER, RNA, AGP, Mito).
    image_size
        Side of the square image the positional embedding is learned for (224 in MSN); other sizes (the 96 px
        focal views) use a bicubically interpolated positional embedding.
    patch_size
        Side of a square patch (16 for ViT-S/16).
    embed_dim, depth, num_heads, mlp_ratio
        Width, number of blocks, attention heads and MLP expansion (ViT-S: 384, 12, 6, 4).
    qkv_bias, norm_eps
        Bias on the qkv projection and LayerNorm epsilon (ViT/MSN defaults: True, 1e-6).
    pool
        ``"cls"`` (the CLS token, as MSN) or ``"mean"`` (mean of the patch tokens).
    """

    def __init__(
        self,
        in_channels: int = 5,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        *,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        pool: str = "cls",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}.")
        if pool not in {"cls", "mean"}:
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}.")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.pool = pool
        self.grid_size = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_eps=norm_eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT/MSN initialisation: truncated normal std 0.02 for tokens and linear layers, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def positional_embedding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Positional embedding for a ``grid_height x grid_width`` patch grid, interpolated when it differs."""
        if (grid_height, grid_width) == (self.grid_size, self.grid_size):
            return self.pos_embed
        grid = self.pos_embed.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_height, grid_width), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)

    def forward(self, images: torch.Tensor, keep_ratio: float = 1.0) -> torch.Tensor:
        """Embed ``images`` ``(batch, channels, height, width)`` into ``(batch, embed_dim)``.

        ``keep_ratio < 1`` drops a random share of patch tokens before the blocks (MSN masking).
        """
        grid_height, grid_width = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        tokens = embed_patches(images, self.patch_embed) + self.positional_embedding(grid_height, grid_width)
        tokens = keep_random_patches(tokens, keep_ratio)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)
