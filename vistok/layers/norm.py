"""RMSNorm (Zhang & Sennrich 2019), as in Llama and LlamaGen: scale by the inverse root-mean-square, no bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32 at least (a bf16 mean of squares loses precision), then return the input's dtype.
        y = F.rms_norm(x.to(torch.promote_types(x.dtype, torch.float32)), x.shape[-1:], eps=self.eps)
        return y.type_as(x) * self.weight
