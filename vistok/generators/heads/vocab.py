"""The ``vocab`` head: one index in [0, V) per position (VQ, FSQ), LlamaGen's setting — an nn.Embedding(V, dim)
input, a Linear(dim, V) output, cross-entropy, and CFG on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.generators.heads.base import TokenHead
from vistok.generators.sampling import sample_logits
from vistok.registry import register
from vistok.spec import TokenSpec


@register("head", "vocab")
class VocabHead(TokenHead):
    loss_name = "ce"

    def __init__(self, spec: TokenSpec, dim: int) -> None:
        super().__init__(spec, dim)
        vocab_size = spec.vocab_sizes[0]
        self.tok_embeddings = nn.Embedding(vocab_size, dim)  # names follow LlamaGen
        self.output = nn.Linear(dim, vocab_size, bias=False)

    def init_weights(self) -> None:
        nn.init.zeros_(self.output.weight)  # LlamaGen: the model starts at the uniform distribution, loss = ln V

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)  # (B, L) -> (B, L, dim)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.output(hidden)  # (..., dim) -> (..., V)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(hidden)  # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean()
        return loss, {"acc": acc}

    def sample(self, hidden_cond: torch.Tensor, hidden_uncond: torch.Tensor | None, cfg_scale: float,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        logits = self.guided_logits(hidden_cond, hidden_uncond, cfg_scale)  # (B, V)
        return sample_logits(logits, temperature, top_k, top_p, generator)  # (B,)
