"""The quantizer interface every quantizer implements (one file per quantizer, one return type for all).

Layout is fixed once, never inferred from ``ndim``: quantizers take channel-last latents ``z`` of shape (B, N, D) and
return a :class:`QuantizerOutput` whose ``indices`` are int64 (B, N) for one codebook or (B, N, C) for C
codebooks/groups/bits/dimensions. Tokenizers own the image ↔ sequence reshape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vistok.metrics.codebook import usage_stats  # noqa: F401  (re-exported: every quantizer logs these stats)


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    quantized: (B, N, D) codes fed to the decoder (straight-through: gradients flow to ``z`` in training).
    indices:   (B, N) or (B, N, C) int64 token indices.
    losses:    named scalar losses, **already weighted**: the training loss adds ``sum(losses.values())``.
    stats:     named detached scalars for logging (codebook usage, perplexity, entropy terms).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class. Subclasses set ``codebook_sizes`` (one entry per index channel), ``code_dim`` and ``kind``
    (the TokenSpec kind: "vocab", "subvocab", "bits" or "bins"), and implement ``forward`` and
    ``indices_to_codes`` (and ``codes_to_indices`` where codes map to indices by a fixed rule). ``input_dim`` is
    the width of ``z``; it equals ``code_dim`` unless the quantizer maps into another space (binary latents: K
    logits in, a code_dim-wide sum of bit vectors out; FSQ: one input per level)."""

    kind: str = "vocab"
    codebook_sizes: tuple[int, ...] = ()
    code_dim: int = 0
    # quantizing a code returns its own index (VQ, LFQ, PTQ bins); False where z passes through a bound (FSQ's tanh)
    # or codes live in another space than z (binary: sums of bit vectors)
    codes_are_fixed_points: bool = True

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Map (B, N[, C]) indices to the (B, N, D) codes ``forward`` would have returned for them."""
        raise NotImplementedError

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Map (..., D) codes to their (...[, C]) indices without running ``forward`` (no losses, no stats).

        Quantizers whose codes determine their indices by a fixed rule (FSQ's grid, LFQ's signs, the dimension-wise
        bins) implement it; the others (a learned codebook's nearest neighbour, sums of bit vectors) do not.
        """
        raise NotImplementedError(f"quantizer {getattr(self, 'registry_name', type(self).__name__)!r} has no "
                                  "codes_to_indices (its indices come from forward(z).indices)")

    @property
    def input_dim(self) -> int:
        return self.__dict__.get("_input_dim", self.code_dim)

    @input_dim.setter
    def input_dim(self, value: int) -> None:  # quantizers whose input and code widths differ set it
        self.__dict__["_input_dim"] = int(value)

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    @property
    def codebook_size(self) -> int:
        """How many distinct codes one position can take: the product of the per-channel ``codebook_sizes`` (the
        single size for one codebook; FSQ's ∏ levels, LFQ's 2^D, dimension-wise PTQ's B^D), whether or not it is
        materialised."""
        return math.prod(self.codebook_sizes)

