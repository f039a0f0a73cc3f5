"""Dual-codebook quantizer with one shared index (TokenFlow, Qu et al., CVPR 2025, arXiv 2412.03069).

Each position carries a semantic latent (first ``semantic_dim`` channels) and a pixel latent (last ``pixel_dim``
channels). Two codebooks of the same size K, E_sem (K × semantic_dim) and E_pix (K × pixel_dim), share one index:

    k* = argmin_k  w_sem · ‖ẑ_sem − ê_sem,k‖² + w_pix · ‖ẑ_pix − ê_pix,k‖²

with inputs and codes l2-normalised per half (ẑ, ê), as in TokenFlow's code (there w_sem = 1, w_pix = 1.0). The
output is concat(ê_sem[k*], ê_pix[k*]). With w_sem = 0 the index is pixel-only VQ, with w_pix = 0 semantic-only
VQ (both tested). TokenFlow's maintainers note this equals one concatenated table searched with a weighted
distance; keeping two tables makes the branches' codes separately addressable.

Losses (TokenFlow ``vq_loss.py``): codebook ``mean((q − sg(ẑ))²)`` (weight 1) and commitment
``0.25 · mean((sg(q) − ẑ)²)`` on the concatenated normalised vectors; straight-through ``ẑ + sg(q − ẑ)``.
Deviation: TokenFlow quantizes a VAR-style multi-scale residual pyramid with this codebook; here it is one scale
(one index per grid position), which keeps the tokens a plain ``vocab`` grid like the other 2D tokenizers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
from vistok.registry import register


@register("quantizer", "dual")
class DualCodebookQuantizer(Quantizer):
    """(B, N, semantic_dim + pixel_dim) → one shared index (B, N) into two codebooks. TokenSpec: ``vocab`` of K."""

    kind = "vocab"

    def __init__(self, codebook_size: int = 1024, semantic_dim: int = 32, pixel_dim: int = 8,
                 semantic_weight: float = 1.0, pixel_weight: float = 1.0, commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0) -> None:
        super().__init__()
        if semantic_weight < 0 or pixel_weight < 0 or semantic_weight + pixel_weight == 0:
            raise ConfigError(f"dual: semantic_weight and pixel_weight must be >= 0 and not both 0, got "
                              f"{semantic_weight}, {pixel_weight}")
        self.codebook_sizes = (codebook_size,)
        self.semantic_dim, self.pixel_dim = semantic_dim, pixel_dim
        self.code_dim = semantic_dim + pixel_dim
        self.semantic_weight, self.pixel_weight = semantic_weight, pixel_weight
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        self.semantic_codebook = nn.Embedding(codebook_size, semantic_dim)
        self.pixel_codebook = nn.Embedding(codebook_size, pixel_dim)
        for table in (self.semantic_codebook, self.pixel_codebook):
            nn.init.uniform_(table.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) → l2-normalised (semantic, pixel) halves."""
        sem, pix = z.split([self.semantic_dim, self.pixel_dim], dim=-1)
        return F.normalize(sem, dim=-1), F.normalize(pix, dim=-1)

    def codebooks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.semantic_codebook.weight, dim=-1), F.normalize(self.pixel_codebook.weight, dim=-1)

    def distances(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances (M, K) of the normalised semantic and pixel halves of (M, D) latents to every code."""
        sem, pix = self.split(z)
        e_sem, e_pix = self.codebooks()
        # for unit vectors ‖a − b‖² = 2 − 2⟨a, b⟩
        return 2 - 2 * sem @ e_sem.t(), 2 - 2 * pix @ e_pix.t()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        e_sem, e_pix = self.codebooks()
        return torch.cat([e_sem[indices], e_pix[indices]], dim=-1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, semantic_dim + pixel_dim) → quantized (B, N, same), indices (B, N)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"dual: expected {self.code_dim} = {self.semantic_dim} + {self.pixel_dim} channels, "
                             f"got {z.shape[-1]}")
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            d_sem, d_pix = self.distances(z.reshape(-1, self.code_dim))
            indices = (self.semantic_weight * d_sem + self.pixel_weight * d_pix).argmin(dim=1).view(z.shape[:-1])
            z_norm = torch.cat(self.split(z), dim=-1)
            quantized = self.indices_to_codes(indices)
            losses: dict[str, torch.Tensor] = {}
            if self.training:
                losses["codebook"] = self.codebook_weight * F.mse_loss(quantized, z_norm.detach())
                losses["commitment"] = self.commitment_weight * F.mse_loss(z_norm, quantized.detach())
            quantized = z_norm + (quantized - z_norm).detach()
        return QuantizerOutput(quantized, indices, losses, usage_stats(indices.detach(), self.codebook_sizes[0]))
