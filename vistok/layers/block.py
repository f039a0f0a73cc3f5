"""The Llama pre-norm transformer block (RMSNorm → attention with RoPE → RMSNorm → SwiGLU, no biases), shared by
the GPT backbone and the small intra-token transformers of the factorized heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vistok.layers.attention import CausalSelfAttention
from vistok.layers.mlp import SwiGLU
from vistok.layers.norm import RMSNorm

if TYPE_CHECKING:
    from vistok.generators.kv_cache import KVCache


class TransformerBlock(nn.Module):
    """Llama pre-norm transformer block; attribute names follow LlamaGen."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = CausalSelfAttention(dim, heads, dropout)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = SwiGLU(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                start: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attention(self.attention_norm(x), cos, sin, cache, start, mask))
        return x + self.drop(self.feed_forward(self.ffn_norm(x)))
