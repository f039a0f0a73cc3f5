"""The ``bits`` head: K binary digits per position (binary latents), as Instella-T2I's AR model treats them.

- Input: a linear embedding of the bit vector mapped to ±1 (``Linear(K, dim)``), instead of a 2^K-row table.
- Output: K independent Bernoulli logits (``Linear(dim, K)``), p(t) = Π_k σ(±l_k) given the hidden state.
- Loss: the sum over bits of the binary cross-entropies (nats per position), averaged over positions.
- CFG on each bit's logit, l_u + s·(l_c − l_u). Sampling reuses the categorical sampler on the two-class logits
  [0, l_k] (softmax([0, l]) = [1 − σ(l), σ(l)]), so temperature divides l, top-k 1 is greedy and top-p keeps a
  bit's likelier value alone once its probability reaches p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.generators.heads.base import TokenHead
from vistok.generators.sampling import sample_logits
from vistok.registry import register
from vistok.spec import TokenSpec


@register("head", "bits")
class BitsHead(TokenHead):
    loss_name = "bce"

    def __init__(self, spec: TokenSpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.num_bits = spec.channels
        self.bit_embedding = nn.Linear(self.num_bits, dim, bias=False)
        self.output = nn.Linear(dim, self.num_bits, bias=False)

    def init_weights(self) -> None:
        nn.init.zeros_(self.output.weight)  # start at p = 1/2 per bit: loss = K ln 2

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bit_embedding(self.token_codes(tokens).to(self.bit_embedding.weight.dtype))  # (B, L, dim)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.output(hidden)  # (..., K): log-odds of bit = 1
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(hidden)  # (B, L, K)
        bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
        with torch.no_grad():
            bit_acc = ((logits > 0).long() == targets).float().mean()
        return bce.sum(-1).mean(), {"bit_acc": bit_acc}

    def two_class(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., K) bit log-odds -> (..., K, 2) categorical logits [0, l]."""
        return torch.stack([torch.zeros_like(logits), logits], dim=-1)

    def forced_logits(self, hidden_cond, hidden_uncond, cfg_scale, tokens):
        return self.two_class(self.guided_logits(hidden_cond, hidden_uncond, cfg_scale))  # (N, K, 2)

    def sample(self, hidden_cond, hidden_uncond, cfg_scale, temperature=1.0, top_k=0, top_p=1.0, generator=None):
        logits = self.two_class(self.guided_logits(hidden_cond, hidden_uncond, cfg_scale))
        return sample_logits(logits, temperature, top_k, top_p, generator)  # (N, K)

    def token_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float() * 2 - 1  # {0, 1} -> {-1, +1}, the binary latent itself

    def nearest_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes > 0).long()
