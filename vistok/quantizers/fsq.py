"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple"), with the
bounding FlexTok uses (Bachmann et al. 2025, "FlexTok", arXiv 2502.13967; apple/ml-flextok
``regularizers/quantize_fsq.py``).

Each of the D = len(levels) channels is squashed to a bounded range and rounded to one of L_d levels; the implicit
codebook is the product grid, ∏ L_d entries (FlexTok's [8, 8, 8, 5, 5, 5] → 64,000). Per channel:

    half_l = (L − 1)(1 + ε) / 2,   offset = 0.5 if L is even else 0,   shift = atanh(offset / half_l)
    bounded = tanh(z + shift) · half_l − offset          (so round() gives exactly L integer values)
    code    = round_ST(bounded) / floor(L / 2)           (codes in [−1, 1])
    index   = Σ_d (code_d · floor(L_d/2) + floor(L_d/2)) · basis_d,   basis = cumprod([1, L_0, …, L_{D−2}])

Rounding uses the straight-through estimator. There is no codebook and no auxiliary loss.
FlexTok's optional training tricks (``drop_quant_p``, ``corrupt_tokens_p``) default to 0 there and are not included.
"""

from __future__ import annotations

import math

import torch

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
from vistok.registry import register


@register("quantizer", "fsq")
class FiniteScalarQuantizer(Quantizer):
    kind = "vocab"
    codes_are_fixed_points = False

    def __init__(self, levels: list[int] = (8, 8, 8, 5, 5, 5), eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ConfigError(f"fsq levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels = levels
        self.eps = eps
        self.code_dim = len(levels)
        self.input_dim = len(levels)
        self.codebook_sizes = (math.prod(levels),)
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), dim=0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` so that rounding yields exactly L integer values per channel."""
        half_l = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, D) with D = len(levels) → codes (B, N, D) in [−1, 1], indices (B, N) in [0, ∏ levels)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"fsq with levels {self.levels} takes latents with {self.code_dim} channels, "
                             f"got {z.shape[-1]}")
        with torch.autocast(z.device.type, enabled=False):
            bounded = self.bound(z.float())
            rounded = bounded + (bounded.round() - bounded).detach()  # straight-through rounding
            codes = rounded / self._half_width
        indices = self.codes_to_indices(codes.detach())
        return QuantizerOutput(codes, indices, {}, usage_stats(indices, self.codebook_size))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes * self._half_width + self._half_width).round().long()
        return (digits * self._basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits.float() - self._half_width) / self._half_width
