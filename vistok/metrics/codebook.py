"""Codebook health over a whole dataset (not one batch): usage and perplexity per index channel.

Multi-channel tokens (G sub-vocabularies, K bits, D bins) get one histogram per channel, reported per channel and
averaged — a single histogram over mixed channels would be meaningless (vector-quantize-pytorch issue #109).
"""

from __future__ import annotations

import math

import torch

from vistok.spec import TokenSpec


class CodebookUsage:
    """Accumulate token histograms with ``update(tokens)``; ``result()`` gives usage, perplexity, entropy."""

    def __init__(self, spec: TokenSpec) -> None:
        self.spec = spec
        self.counts = [torch.zeros(v, dtype=torch.float64) for v in spec.vocab_sizes]

    def update(self, tokens: torch.Tensor) -> None:
        t = tokens.detach().cpu().reshape(tokens.shape[0] * tokens.shape[1], -1)  # (B·L, C)
        for ch, size in enumerate(self.spec.vocab_sizes):
            self.counts[ch] += torch.bincount(t[:, ch], minlength=size).double()

    def result(self) -> dict[str, float]:
        usage, perplexity, entropy_bits = [], [], []
        for counts in self.counts:
            p = counts / counts.sum().clamp_min(1)
            h = -(p[p > 0] * p[p > 0].log()).sum().item()
            usage.append((counts > 0).double().mean().item())
            perplexity.append(math.exp(h))
            entropy_bits.append(h / math.log(2))
        n = len(self.counts)
        return {"codebook_usage": sum(usage) / n, "codebook_perplexity": sum(perplexity) / n,
                "code_entropy_bits": sum(entropy_bits) / n}
