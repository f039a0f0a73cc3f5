"""Rotary position embedding (Su et al. 2021, RoFormer) for 1D sequences and 2D grids.

Positions are integer coordinates per token, shape (T, n_axes): n_axes = 1 for a sequence index, 2 for a grid
(row, col). With n_axes axes the head dimension is split into n_axes equal parts, one per axis, each rotated by
its own coordinate with the usual frequencies ``base^(-2i/d_axis)`` — for 2D this is LlamaGen's 2D RoPE (first
half of the head dimension follows the row, second half the column). Channels are rotated in adjacent pairs
(x[2i], x[2i+1]), as LlamaGen's complex-number implementation does.

Because each pair is rotated by ``angle = coord · freq``, the dot product of a query rotated at p and a key rotated
at p' depends only on p - p' (per axis): attention sees relative positions.
"""

from __future__ import annotations

import torch
from torch import nn


class RoPE(nn.Module):
    """Computes (cos, sin) tables, each (T, head_dim // 2), from integer coordinates (T, n_axes).

    Tables are computed on the fly (cheap: T × head_dim/2) in float32, or float64 for a float64 model, so no
    buffer is saved with the model and nothing loses precision when the model is cast to bf16.
    """

    def __init__(self, head_dim: int, n_axes: int = 1, base: float = 10000.0) -> None:
        super().__init__()
        if n_axes not in (1, 2):
            raise ValueError(f"RoPE supports 1 or 2 axes, got {n_axes}")
        if head_dim % (2 * n_axes):
            raise ValueError(f"head_dim {head_dim} must be divisible by {2 * n_axes} for {n_axes}D RoPE")
        self.head_dim, self.n_axes, self.base = head_dim, n_axes, base

    def inv_freq(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(head_dim // (2 · n_axes),) frequencies of one axis."""
        d = self.head_dim // self.n_axes
        return self.base ** (-torch.arange(0, d, 2, device=device, dtype=dtype) / d)

    def forward(self, coords: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """coords (T, n_axes) integers -> cos, sin (T, head_dim // 2) in ``dtype`` promoted to at least float32."""
        if coords.ndim != 2 or coords.shape[1] != self.n_axes:
            raise ValueError(f"coords must be (T, {self.n_axes}), got {tuple(coords.shape)}")
        dtype = torch.promote_types(dtype, torch.float32)
        freqs = self.inv_freq(coords.device, dtype)
        # (T, n_axes, 1) * (d_axis/2,) -> (T, n_axes, d_axis/2) -> (T, head_dim/2): axis 0's pairs first.
        angles = (coords.to(dtype)[:, :, None] * freqs).flatten(1)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, head_dim) by per-position tables cos, sin (T, head_dim // 2), in float32 at least.

    Each adjacent channel pair (x[2i], x[2i+1]) is one complex number rotated by e^{i·angle}: one complex multiply
    (what LlamaGen's ``torch.view_as_complex`` implementation does), a few kernels instead of a dozen — it matters
    in one-token decoding steps, where these small ops, not the matmuls, set the pace on a CPU.
    """
    B, T, H, D = x.shape
    xp = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(B, T, H, D // 2, 2)  # adjacent channel pairs
    rotation = torch.complex(cos, sin)[None, :, None, :]  # (1, T, 1, D/2)
    out = torch.view_as_real(torch.view_as_complex(xp) * rotation)  # (B, T, H, D/2, 2)
    return out.flatten(3).type_as(x)
