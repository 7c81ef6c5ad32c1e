"""PyTorch building blocks of the models. Importable with torch alone (no anndata, no scvi-tools)."""

from ._cellpaintr import CellPainTRBlock, CellPainTRModule
from ._embeddings import FeatureTokenEmbedding
from ._hyena import HyenaFilter, HyenaOperator, bidirectional_fft_conv, fast_fft_size
from ._losses import masked_feature_loss, sample_feature_mask, supervised_contrastive_loss

__all__ = [
    "CellPainTRBlock",
    "CellPainTRModule",
    "FeatureTokenEmbedding",
    "HyenaFilter",
    "HyenaOperator",
    "bidirectional_fft_conv",
    "fast_fft_size",
    "masked_feature_loss",
    "sample_feature_mask",
    "supervised_contrastive_loss",
]
