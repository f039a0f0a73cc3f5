"""Binary latents (Instella-T2I, AMD, arXiv 2506.21022: "1D binary latents"; AMD-AIG-AIMA/Instella-T2I
``bae/bnl.py``).

Each token is K bits. The input is K logits per token (the tokenizer's linear projection plays the role of
Instella's ``Linear(768 → 64)``):

- training:  b ~ Bernoulli(sigmoid(z / τ))   (τ = ``sample_temperature``, Instella's ``train_temp`` default 0.1)
- inference: b = 1[sigmoid(z) > 0.5]
- straight-through through the *untempered* sigmoid: b_st = sg(b) + p − sg(p), p = sigmoid(z)
- embedding: e = b_st @ E with a learned E of shape (K, code_dim): the sum of the active bits' vectors
- auxiliary loss ``mean(p · (1 − p))``, which pushes the probabilities toward 0 or 1.

Deviations, because the paper's values are not in the released code: the weight of
the p(1 − p) loss is ``aux_weight`` (default 0.01, our choice: at 0.1 the bits saturated within ~300 steps on
ImageNet at 64×64 — mean p(1 − p) 1e-4, so the straight-through gradient p(1 − p) vanished and the encoder stopped
learning: 12.4 dB at every prefix; at 0.01 it stays ~0.05 and the loss keeps falling); the paper anneals τ during
training, the schedule is unknown, so τ is fixed here (set ``sample_temperature`` per run). Tokens are (B, N, K) in
{0, 1}: TokenSpec kind "bits", so a generator models the K bits directly instead of a softmax over 2^K.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
from vistok.registry import register


@register("quantizer", "binary")
class BinaryQuantizer(Quantizer):
    kind = "bits"
    codes_are_fixed_points = False

    renamed_options = {"embed_dim": "code_dim", "temperature": "sample_temperature"}

    def __init__(self, num_bits: int = 64, code_dim: int = 64, sample_temperature: float = 0.1,
                 aux_weight: float = 0.01) -> None:
        super().__init__()
        if num_bits < 1 or code_dim < 1:
            raise ConfigError(f"binary quantizer needs num_bits >= 1 and code_dim >= 1, got {num_bits}, {code_dim}")
        if sample_temperature <= 0:
            raise ConfigError(f"binary quantizer sample_temperature must be > 0 (inference thresholds), "
                              f"got {sample_temperature}")
        self.num_bits, self.sample_temperature, self.aux_weight = num_bits, sample_temperature, aux_weight
        self.input_dim = num_bits
        self.code_dim = code_dim
        self.codebook_sizes = (2,) * num_bits
        self.bit_embedding = nn.Parameter(torch.randn(num_bits, code_dim) * num_bits**-0.5)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, K) logits → embeddings (B, N, code_dim), bits (B, N, K) int64 in {0, 1}."""
        if z.shape[-1] != self.num_bits:
            raise ValueError(f"binary quantizer with {self.num_bits} bits takes {self.num_bits} logits per token, "
                             f"got {z.shape[-1]}")
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            probs = torch.sigmoid(z)
            if self.training:
                bits = torch.bernoulli(torch.sigmoid(z / self.sample_temperature)).detach()
            else:
                bits = (probs > 0.5).float()
            bits_st = bits + probs - probs.detach()  # gradient through the untempered sigmoid
            embedded = bits_st @ self.bit_embedding
        losses = {"binary_aux": self.aux_weight * (probs * (1 - probs)).mean()} if self.training else {}
        flat = bits.detach().reshape(-1, self.num_bits)
        stats = {**usage_stats(flat.long(), self.codebook_sizes),  # per-bit histograms, as the evaluation's
                 "bit_mean": bits.mean().detach(),
                 # the fraction of the K bits that take both values in this batch (a dead bit is constant)
                 "live_bits": (flat.amax(0) != flat.amin(0)).float().mean(),
                 # how undecided the encoder still is: mean p(1-p) is 0.25 for coin flips, 0 for certain bits
                 "bit_uncertainty": (probs * (1 - probs)).mean().detach()}
        return QuantizerOutput(embedded, bits.long(), losses, stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return indices.float() @ self.bit_embedding
