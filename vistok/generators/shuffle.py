"""Token-Shuffle (Ma et al. 2025, "Token-Shuffle: Towards High-Resolution Image Generation with Autoregressive
Models"): merge each s×s window of grid tokens into one backbone token, and split each output hidden state back
into s² token predictions, so the transformer runs (h/s)·(w/s) positions and sampling takes s² times fewer steps.

- Layout (``to_windows`` / ``from_windows``): tokens in raster order (B, h·w, ...) ↔ windows in raster order, each
  window's s² tokens in raster order inside it, (B, (h/s)·(w/s), s², ...). ``from_windows ∘ to_windows`` is the
  identity (tested).
- token-shuffle (input): each of the s² token embeddings is projected to dim/s² (a shared Linear), the s²
  projections are concatenated along channels into one dim-wide token, then fused by ``mlp_blocks`` residual MLP
  blocks.
- token-unshuffle (output): ``mlp_blocks`` residual MLP blocks on the hidden state, a split along channels into
  s² parts of dim/s², each projected back to dim (a shared Linear): s² hidden states, each given to the shared
  token head. The s² tokens of a window are predicted together in one step, windows in raster order.
- ``mlp_blocks`` = 2 on each side (our reading of the paper's default; the note leaves the number unverified).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vistok.errors import ConfigError
from vistok.layers import RMSNorm


def check_window(grid: tuple[int, int] | None, window: int) -> None:
    """Raise a clear error unless ``window`` ∈ {1, 2, 4, ...} tiles ``grid`` exactly."""
    if window < 1:
        raise ConfigError(f"token-shuffle window must be >= 1, got {window}")
    if window == 1:
        return
    if grid is None:
        raise ConfigError(f"token-shuffle window={window} needs a grid tokenizer (h×w tokens); this one emits a 1D "
                          "sequence — use window=1")
    h, w = grid
    if h % window or w % window:
        raise ConfigError(f"token-shuffle window={window} does not tile the {h}×{w} token grid (each side must be "
                          f"divisible by {window}); choose a window that divides both sides or window=1")


def to_windows(tokens: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """(B, h·w, *rest) raster -> (B, (h/s)·(w/s), s², *rest) windows."""
    check_window(grid, window)
    h, w = grid
    return rearrange(tokens, "b (hh s1 ww s2) ... -> b (hh ww) (s1 s2) ...", hh=h // window, s1=window,
                     ww=w // window, s2=window)


def from_windows(windows: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """(B, (h/s)·(w/s), s², *rest) windows -> (B, h·w, *rest) raster (the inverse of ``to_windows``)."""
    check_window(grid, window)
    h, w = grid
    return rearrange(windows, "b (hh ww) (s1 s2) ... -> b (hh s1 ww s2) ...", hh=h // window, s1=window,
                     ww=w // window, s2=window)


class ResidualMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))


class TokenShuffle(nn.Module):
    """The fusion (``shuffle``) and the split (``unshuffle``) for window s at width dim (dim divisible by s²)."""

    def __init__(self, dim: int, window: int, mlp_blocks: int = 2) -> None:
        super().__init__()
        n = window * window
        if dim % n:
            raise ConfigError(f"token-shuffle window={window} needs the width {dim} divisible by {n}")
        self.window, self.n = window, n
        self.compress = nn.Linear(dim, dim // n, bias=False)
        self.fuse = nn.Sequential(*(ResidualMLP(dim) for _ in range(mlp_blocks)))
        self.split = nn.Sequential(*(ResidualMLP(dim) for _ in range(mlp_blocks)))
        self.expand = nn.Linear(dim // n, dim, bias=False)

    def shuffle(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, W, s², dim) token embeddings per window -> (B, W, dim) one fused token per window."""
        return self.fuse(self.compress(embeddings).flatten(-2))

    def unshuffle(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., dim) hidden state per window -> (..., s², dim) one hidden state per token of the window."""
        parts = self.split(hidden).unflatten(-1, (self.n, -1))  # (..., s², dim/s²)
        return self.expand(parts)
