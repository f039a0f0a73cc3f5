"""Causal multi-head self-attention with RoPE and an optional static KV cache (Llama / LlamaGen; the cache follows
gpt-fast: preallocated per layer, written at explicit positions, owned by the generation call).

Three regimes, chosen by the arguments and nothing else:
- training / full recompute: ``cache=None``; causal attention over the T given tokens.
- prefill: a cache and ``start`` (0 for the first chunk); the T new keys/values are written at
  positions start..start+T-1 and the queries attend causally over positions 0..start+T-1.
- decode step: the same with T == 1; the single query attends over the whole cached prefix (no mask needed).

An explicit boolean ``mask`` (T, S) (True = may attend; S = T without a cache, start + T with one) replaces the
causal rule, for block-causal layouts such as next-X prediction (``vistok.generators.xar``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vistok.layers.rope import apply_rope

if TYPE_CHECKING:  # the cache lives with the generators; layers do not import them at run time
    from vistok.generators.kv_cache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                start: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, dim); cos/sin (T, head_dim/2) for the T tokens' positions; mask: optional bool (T, S) that
        replaces the causal rule; returns (B, T, dim)."""
        B, T, C = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)  # each (B, T, H, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        dropout_p = self.dropout if self.training else 0.0
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, H, start+T, hd): everything cached so far
            k, v = k.to(q.dtype), v.to(q.dtype)  # the cache may be float32 under autocast
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        else:
            if T == 1:  # decode: one query sees the whole prefix
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            elif start == 0:  # prefill from scratch: plain causal
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
            else:  # a later chunk: query i (at start+i) sees keys 0..start+i
                q_pos = torch.arange(start, start + T, device=x.device)[:, None]  # (T, 1)
                mask = torch.arange(start + T, device=x.device)[None, :] <= q_pos  # (T, start+T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, hd) -> (B, T, dim)
        return self.wo(y)
