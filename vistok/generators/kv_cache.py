"""A static, preallocated key/value cache for one attention layer (gpt-fast / LlamaGen style).

The generation call creates one per layer (``GPT.new_cache``) sized for the whole sequence up front, so decoding
never reallocates or concatenates; keys and values are written at explicit positions. The cache is an object the
caller holds and passes in: layers keep no cache state and no "use cache" flags, and a fresh call starts from a
fresh cache by construction.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of one layer: ``k``, ``v`` each (batch, heads, max_len, head_dim)."""

    def __init__(self, batch: int, max_len: int, heads: int, head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (batch, heads, T, head_dim) at positions start..start+T-1; return the filled prefix
        (batch, heads, start+T, head_dim) of keys and of values."""
        end = start + k.shape[2]
        if start < 0 or end > self.max_len:
            raise IndexError(f"KV cache holds {self.max_len} positions; cannot write {start}..{end - 1}")
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was made for batch {self.k.shape[0]}, got {k.shape[0]}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]
