"""Vector quantizer with an l2-normalized codebook (LlamaGen / ViT-VQGAN).

Both the latents and the codebook are l2-normalized before the nearest-neighbour lookup, so the search is by cosine
similarity and the codes live on the unit sphere; with a low code dimension (LlamaGen: 16,384 codes × 8 dims) this
keeps codebook usage high. Losses (VQ-VAE): codebook ``mean((q - sg(z))²)`` and commitment
``β · mean((sg(q) - z)²)`` with β = 0.25; gradients reach the encoder through the straight-through estimator
``z + sg(q - z)``. LlamaGen's optional entropy term is ``entropy_weight`` (0 by default, as in its configs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
from vistok.registry import register
from vistok.training.distributed import batch_mean


@register("quantizer", "vq")
class VectorQuantizer(Quantizer):
    kind = "vocab"

    def __init__(self, codebook_size: int = 1024, code_dim: int = 8, l2_norm: bool = True,
                 commitment_weight: float = 0.25, codebook_weight: float = 1.0, entropy_weight: float = 0.0,
                 entropy_temperature: float = 0.01) -> None:
        super().__init__()
        self.codebook_sizes = (codebook_size,)
        self.code_dim = code_dim
        self.l2_norm = l2_norm
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @property
    def codebook_size(self) -> int:
        return self.codebook_sizes[0]

    def _codes(self) -> torch.Tensor:
        w = self.codebook.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, D) → quantized (B, N, D), indices (B, N)."""
        # The lookup runs in fp32 even under autocast: distances between near-unit vectors lose ties in bf16.
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            if self.l2_norm:
                z = F.normalize(z, dim=-1)
            codes = self._codes()
            flat = z.reshape(-1, self.code_dim)  # (B·N, D)
            # ‖z − c‖² = ‖z‖² + ‖c‖² − 2 z·c
            dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()  # (B·N, K)
            indices = dist.argmin(dim=1)
            quantized = codes[indices].view_as(z)

            losses: dict[str, torch.Tensor] = {}
            if self.training:
                losses["codebook"] = self.codebook_weight * F.mse_loss(quantized, z.detach())
                losses["commitment"] = self.commitment_weight * F.mse_loss(z, quantized.detach())
                if self.entropy_weight > 0:
                    losses["entropy"] = self.entropy_weight * _entropy_loss(-dist, self.entropy_temperature)
            quantized = z + (quantized - z).detach()  # straight-through

        indices = indices.view(z.shape[:-1])
        return QuantizerOutput(quantized, indices, losses, usage_stats(indices.detach(), self.codebook_size))

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self._codes()[indices]


def _entropy_loss(affinity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample entropy minus codebook (batch-averaged) entropy of softmax(affinity / T), as in LlamaGen/MaskGIT:
    low per-sample entropy makes assignments confident; high codebook entropy spreads usage."""
    probs = F.softmax(affinity / temperature, dim=-1)
    log_probs = F.log_softmax(affinity / temperature, dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg = batch_mean(probs)  # the codebook's usage over the (global, under DDP) batch
    codebook_entropy = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
    return sample_entropy - codebook_entropy
