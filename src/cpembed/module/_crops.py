"""Batched random crops, flips and standardisation done on the device (GPU-side augmentation).

Crops follow torchvision's ``RandomResizedCrop`` definition (area share ``scale``, aspect ratio ``ratio``,
bilinear resampling) but run on a whole batch at once with :func:`torch.nn.functional.grid_sample`, so the data
pipeline only moves uint8 images. MSN (Assran et al. 2022) uses only crops and flips on microscopy as well.

Views are standardised per channel either on their own pixels (OpenPhenom's self-standardisation) or with given
per-image channel statistics, such as those of the negative-control images of the image's plate. Bilinear resampling
commutes with a per-channel affine map, so standardising a crop with its image's statistics equals cropping the
standardised image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit_float(images: torch.Tensor) -> torch.Tensor:
    """float32 images, uint8 ones scaled to [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def to_standardized_float(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale uint8 images to [0, 1], then standardise each image and channel to mean 0, std 1.

    Self-standardisation per image and channel follows OpenPhenom (Kraus et al. 2024). ``eps`` keeps empty
    (constant) channels finite.
    """
    return standardize(images, None, eps)


def standardize(x: torch.Tensor, channel_stats: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Standardise float images ``(batch, channels, h, w)`` per channel.

    Parameters
    ----------
    x
        Images scaled to [0, 1] (or uint8, scaled here).
    channel_stats
        ``None``: each image on its own pixels (:func:`to_standardized_float`). Otherwise ``(batch, 2, channels)``
        float tensor, the mean (row 0) and standard deviation (row 1) per channel to standardise each image with.
    eps
        Added to the standard deviation.
    """
    x = _unit_float(x)
    if channel_stats is None:
        std, mean = torch.std_mean(x, dim=(-2, -1), keepdim=True)
    else:
        mean, std = (stat[..., None, None] for stat in channel_stats.float().unbind(dim=1))
    scale = 1.0 / (std + eps)
    return torch.addcmul(-mean * scale, x, scale)  # (x - mean) / (std + eps) in one pass over the pixels


def random_crop_boxes(
    batch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw crop boxes ``(batch, 4)`` as (centre x, centre y, half width, half height) in [-1, 1] coordinates.

    The area share is uniform in ``scale`` and the log aspect ratio uniform in ``log(ratio)``; sides are capped at
    the full image and the centre is uniform among the positions that keep the box inside the image.
    """
    uniform = torch.rand(batch, 4, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * uniform[:, 0]
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform[:, 1]
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1.0 - width) * (2.0 * uniform[:, 2] - 1.0)
    centre_y = (1.0 - height) * (2.0 * uniform[:, 3] - 1.0)
    return torch.stack([centre_x, centre_y, width, height], dim=1)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None):
    """Resample boxes of ``images`` ``(batch, channels, h, w)`` to ``size x size`` (bilinear).

    ``boxes`` is ``(batch, 4)`` or ``(batch, n_views, 4)`` (see :func:`random_crop_boxes`); ``flip`` (bool, same
    leading shape) mirrors a crop horizontally. All views of an image are sampled in one ``grid_sample`` call
    without copying the image. Returns ``(n_views * batch, channels, size, size)``, view-major.
    """
    if boxes.ndim == 2:
        boxes = boxes[:, None]
        flip = flip[:, None] if flip is not None else None
    batch, n_views = boxes.shape[:2]
    flat = boxes.reshape(-1, 4)
    centre_x, centre_y, width, height = flat.unbind(dim=1)
    sign_x = 1.0 - 2.0 * flip.reshape(-1).float() if flip is not None else torch.ones_like(width)
    # The sampling grid of F.affine_grid for an axis-aligned box (align_corners=False), built by broadcasting
    # instead of a batched matrix product: pixel centres (2j + 1) / size - 1 scaled and shifted per box.
    pixel_centres = (2 * torch.arange(size, device=images.device, dtype=torch.float32) + 1) / size - 1
    grid_x = (width * sign_x)[:, None, None] * pixel_centres[None, None, :] + centre_x[:, None, None]
    grid_y = height[:, None, None] * pixel_centres[None, :, None] + centre_y[:, None, None]
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)
    grid = grid.reshape(batch, n_views * size, size, 2)  # views stacked along the output height
    crops = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    crops = crops.reshape(batch, images.shape[1], n_views, size, size).permute(2, 0, 1, 3, 4)
    return crops.reshape(n_views * batch, images.shape[1], size, size)


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    *,
    n_views: int = 1,
    channel_stats: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Take ``n_views`` random resized, randomly flipped crops of each image, standardised per channel.

    Parameters
    ----------
    images
        ``(batch, channels, h, w)`` uint8 (scaled to [0, 1]) or float images, already on the device.
    size
        Output side in pixels (224 for MSN's random and target views, 96 for focal views).
    scale
        Range of the crop's area share (MSN: (0.3, 1.0) random/target views, (0.05, 0.3) focal views).
    n_views
        Views per image, returned view-major: rows ``v * batch + i`` are view ``v`` of image ``i``.
    channel_stats
        ``None`` standardises every view on its own pixels; a ``(batch, 2, channels)`` tensor standardises the views
        of image ``i`` with its mean and standard deviation ``channel_stats[i]`` (see :func:`standardize`).
    generator
        Optional torch generator (on the images' device) for reproducible crops.

    Returns
    -------
    ``(n_views * batch, channels, size, size)`` float32 tensor.
    """
    batch = images.shape[0]
    boxes = random_crop_boxes(batch * n_views, scale, device=images.device, generator=generator)
    flip = torch.rand(batch * n_views, device=images.device, generator=generator) < 0.5
    crops = crop_and_resize(_unit_float(images), boxes.reshape(batch, n_views, 4), size, flip.reshape(batch, n_views))
    return standardize(crops, None if channel_stats is None else channel_stats.repeat(n_views, 1, 1))


def resize_for_inference(images: torch.Tensor, size: int, channel_stats: torch.Tensor | None = None) -> torch.Tensor:
    """Resize whole images to ``size x size`` (bilinear, no crop) and standardise them as the training views."""
    x = _unit_float(images)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return standardize(x, channel_stats)
