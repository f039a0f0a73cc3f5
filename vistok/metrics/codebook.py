"""Codebook health: usage and perplexity per index channel, of one batch (:func:`usage_stats`, what quantizers log)
or of a whole dataset (:class:`CodebookUsage`, what the evaluation reports). Both read histograms through
:func:`histogram_stats`, so the two agree on what the numbers mean.

Multi-channel tokens (G sub-vocabularies, K bits, D bins) get one histogram per channel, reported per channel and
averaged — a single histogram over mixed channels would be meaningless (vector-quantize-pytorch issue #109).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vistok.spec import TokenSpec


def histogram_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(usage, entropy) of one channel's code histogram ``counts`` (V,): the fraction of the V codes seen at least
    once and the Shannon entropy H in nats of the empirical code distribution (0·log 0 = 0; perplexity = exp(H))."""
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return (counts > 0).to(counts.dtype).mean(), entropy


def usage_stats(indices: torch.Tensor, codebook_sizes: int | Sequence[int]) -> dict[str, torch.Tensor]:
    """Batch usage and perplexity exp(H) of (B, N) indices (one codebook of ``codebook_sizes`` codes) or (B, N, C)
    indices (C channels of the given sizes): one histogram per channel, averaged over channels."""
    sizes = [codebook_sizes] if isinstance(codebook_sizes, int) else list(codebook_sizes)
    flat = indices.reshape(-1, len(sizes))
    stats = [histogram_stats(torch.bincount(flat[:, c], minlength=size).float()) for c, size in enumerate(sizes)]
    return {"usage": torch.stack([u for u, _ in stats]).mean(),
            "perplexity": torch.stack([h.exp() for _, h in stats]).mean()}


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
            used, entropy = histogram_stats(counts)
            h = entropy.item()
            usage.append(used.item())
            perplexity.append(math.exp(h))
            entropy_bits.append(h / math.log(2))
        n = len(self.counts)
        return {"codebook_usage": sum(usage) / n, "codebook_perplexity": sum(perplexity) / n,
                "code_entropy_bits": sum(entropy_bits) / n}
