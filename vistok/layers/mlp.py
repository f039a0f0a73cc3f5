"""SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"), sized as in Llama/LlamaGen."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """Llama's rule: 2/3 of 4·dim (so the three matrices cost what a 4·dim GELU MLP's two do), rounded up to a
    multiple of ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``; names follow Llama/LlamaGen so their weights map one to one."""

    def __init__(self, dim: int, hidden_dim: int | None = None, multiple_of: int = 256) -> None:
        super().__init__()
        hidden_dim = hidden_dim or swiglu_hidden_dim(dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
