"""PyTorch building blocks of the models. Importable with torch alone (no anndata, no scvi-tools)."""

from ._cellpaintr import CellPainTRBlock, CellPainTRModule
from ._channel_statistics import group_channel_statistics
from ._crops import random_resized_crop, resize_for_inference, standardize, to_standardized_float
from ._embeddings import FeatureTokenEmbedding
from ._hyena import HyenaFilter, HyenaOperator, bidirectional_fft_conv, fast_fft_size
from ._image_batches import StoreImages
from ._losses import (
    distribution_alignment_loss,
    masked_feature_loss,
    replicate_alignment_loss,
    sample_feature_mask,
    similarity_structure_loss,
    supervised_contrastive_loss,
)
from ._msn import MaskedSiameseNetwork, MSNLoss, ProjectionHead, ema_update, msn_loss, sharpen, sinkhorn
from ._msn_training import MSNTrainingStep, Schedule, ViewConfig, make_views, parameter_groups
from ._vit import VisionTransformer, embed_patches, keep_random_patches

__all__ = [
    "CellPainTRBlock",
    "CellPainTRModule",
    "FeatureTokenEmbedding",
    "HyenaFilter",
    "HyenaOperator",
    "MSNLoss",
    "MSNTrainingStep",
    "MaskedSiameseNetwork",
    "ProjectionHead",
    "Schedule",
    "StoreImages",
    "ViewConfig",
    "VisionTransformer",
    "bidirectional_fft_conv",
    "distribution_alignment_loss",
    "ema_update",
    "embed_patches",
    "fast_fft_size",
    "group_channel_statistics",
    "keep_random_patches",
    "make_views",
    "masked_feature_loss",
    "msn_loss",
    "parameter_groups",
    "random_resized_crop",
    "replicate_alignment_loss",
    "resize_for_inference",
    "sample_feature_mask",
    "sharpen",
    "similarity_structure_loss",
    "sinkhorn",
    "standardize",
    "supervised_contrastive_loss",
    "to_standardized_float",
]
