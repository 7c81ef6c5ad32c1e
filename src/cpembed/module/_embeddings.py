"""Input tokens of CellPainTR: one token per feature between a CLS token and a source-context token.

For a profile ``x`` with ``F`` features the token sequence has length ``F + 2``::

    [CLS, W_1 x_1 + b_1 + M_1, ..., W_F x_F + b_F + M_F, S_source]

``W_i x_i + b_i`` is the value embedding of feature ``i`` (paper Eq. 6), ``M_i`` the learned feature-identity
embedding that replaces positional encoding (Eq. 7) and ``S_k`` the learned source-context token (Eq. 8). A masked
feature has its value embedding replaced by a learned [MASK] embedding (channel-wise masked morphology, Sec. 3.2).

Differences from the public CellPainTR reference: there one ``Linear(1, d_model)`` is shared by all features,
whereas the paper's Eq. 6 has a weight and a bias per feature (followed here); and its source vocabulary is
hard-coded to 14 sources, whereas here it has ``n_sources`` entries plus, optionally, a learned "unknown source"
token (the last index) that embeds wells of sources never seen in training.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureTokenEmbedding(nn.Module):
    """Token sequence ``[CLS, features..., SOURCE]`` of CellPainTR.

    Parameters
    ----------
    n_features
        Number of features ``F``.
    n_sources
        Number of known sources.
    d_model
        Token dimension.
    unknown_source
        Add a learned "unknown source" token at index ``n_sources``.
    """

    def __init__(self, n_features: int, n_sources: int, d_model: int, unknown_source: bool = True):
        super().__init__()
        self.n_features = n_features
        self.n_sources = n_sources
        self.unknown_source = unknown_source
        self.value_weight = nn.Parameter(torch.empty(n_features, d_model))
        self.value_bias = nn.Parameter(torch.zeros(n_features, d_model))
        self.feature_embedding = nn.Parameter(torch.empty(n_features, d_model))
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        self.source_embedding = nn.Embedding(n_sources + int(unknown_source), d_model)

    @property
    def unknown_source_index(self) -> int | None:
        """Index of the "unknown source" token, ``None`` without one."""
        return self.n_sources if self.unknown_source else None

    def forward(self, x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of shape ``(batch, n_features + 2, d_model)`` for values ``x`` ``(batch, n_features)``.

        ``mask`` (boolean, like ``x``) marks the features whose value embedding becomes the [MASK] embedding.
        """
        values = torch.addcmul(self.value_bias, x.to(self.value_weight.dtype).unsqueeze(-1), self.value_weight)
        if mask is not None:
            values = torch.where(mask.unsqueeze(-1), self.mask_token, values)
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        source_token = self.source_embedding(source).unsqueeze(1)
        return torch.cat([cls, values + self.feature_embedding, source_token], dim=1)

    def add_sources(self, n_new: int) -> None:
        """Grow the source vocabulary by ``n_new`` tokens, keeping the existing ones and the unknown token.

        The new tokens start as copies of the unknown-source token when there is one (a token already trained to
        stand for "some source"), otherwise as the mean of the known tokens. The unknown token moves to the new
        last index, ``n_sources + n_new``. The embedding is a new parameter: build the optimiser afterwards.
        """
        if int(n_new) != n_new or n_new < 1:
            raise ValueError(f"`n_new` must be a positive integer, got {n_new!r}.")
        old = self.source_embedding.weight.detach()
        known, unknown = old[: self.n_sources], old[self.n_sources :]
        start = unknown if self.unknown_source else known.mean(dim=0, keepdim=True)
        grown = nn.Embedding(self.n_sources + n_new + int(self.unknown_source), old.shape[1])
        grown = grown.to(device=old.device, dtype=old.dtype)
        grown.weight.requires_grad_(self.source_embedding.weight.requires_grad)
        with torch.no_grad():
            grown.weight.copy_(torch.cat([known, start.expand(n_new, -1), unknown]))
        self.source_embedding = grown
        self.n_sources += int(n_new)
