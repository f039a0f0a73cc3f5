"""A small causal transformer over the channels of one position, shared by the factorized heads.

Open-MAGVIT2's "factorized (intra-token) transformer" for sub-vocabularies and TokenBridge's dimension-wise
autoregressive head for PTQ bins have the same shape: for each position, a length-C sequence

    [proj(h), E_0(t_{o_0}), ..., E_{C-2}(t_{o_{C-2}})]      (o = the channel order)

runs through a few causal Llama blocks (1D RoPE over the C steps); output j goes through its own bias-free
Linear to predict channel o_j. Training is teacher-forced over all C channels at once; sampling runs the C steps
one by one (C is small — 2 to 18 — so each step recomputes the short sequence; TokenBridge does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.layers import RMSNorm, RoPE, TransformerBlock


class ChannelAR(nn.Module):
    """in_dim: the backbone width; width/depth/heads: the small transformer's; vocab_sizes: per channel, in the
    channel (not prediction) order; order: the prediction order (a permutation of 0..C-1; default 0..C-1)."""

    def __init__(self, in_dim: int, vocab_sizes: Sequence[int], width: int, depth: int, heads: int,
                 order: Sequence[int] | None = None) -> None:
        super().__init__()
        C = len(vocab_sizes)
        order = list(range(C)) if order is None else [int(o) for o in order]
        if sorted(order) != list(range(C)):
            raise ConfigError(f"channel order must be a permutation of 0..{C - 1}, got {order}")
        if width % heads or (width // heads) % 2:
            raise ConfigError(f"channel transformer width {width} must split into {heads} heads of even size")
        self.order, self.vocab_sizes = order, [int(v) for v in vocab_sizes]
        self.cond_proj = nn.Linear(in_dim, width, bias=False)
        # E_j embeds the token of the j-th predicted channel, the input that predicts channel j + 1
        self.embeddings = nn.ModuleList(nn.Embedding(self.vocab_sizes[o], width) for o in order[:-1])
        self.blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.rope = RoPE(width // heads, n_axes=1)
        self.outputs = nn.ModuleList(nn.Linear(width, self.vocab_sizes[o], bias=False) for o in order)

    def init_weights(self) -> None:
        for out in self.outputs:
            nn.init.zeros_(out.weight)  # Open-MAGVIT2 zero-initialises the sub-token heads

    def _run(self, hidden: torch.Tensor, tokens: torch.Tensor | None, steps: int) -> torch.Tensor:
        """hidden (N, in_dim), tokens (N, C) in channel order (only the first steps-1 predicted channels are
        read) -> the transformer's outputs (N, steps, width)."""
        seq = [self.cond_proj(hidden)[:, None]]
        for j in range(steps - 1):
            seq.append(self.embeddings[j](tokens[:, self.order[j]])[:, None])
        x = torch.cat(seq, dim=1)
        cos, sin = self.rope(torch.arange(steps, device=x.device)[:, None], x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def teacher_forced_logits(self, hidden: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """hidden (N, in_dim), tokens (N, C) -> per-channel logits [(N, V_c)] in channel order (float32+)."""
        out = self._run(hidden, tokens, len(self.order))
        logits: list[torch.Tensor] = [None] * len(self.order)  # type: ignore[list-item]
        for j, o in enumerate(self.order):
            logits[o] = _f32(self.outputs[j](out[:, j]))
        return logits

    def decode(self, hidden_cond: torch.Tensor, hidden_uncond: torch.Tensor | None, choose: Callable[
            [int, torch.Tensor, torch.Tensor | None], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Predict the channels one by one. ``choose(c, logits_cond, logits_uncond)`` returns channel c's token
        (N,). Returns (tokens (N, C), per-channel conditional logits [(N, V_c)] in channel order)."""
        N, C = hidden_cond.shape[0], len(self.order)
        tokens = torch.zeros(N, C, dtype=torch.long, device=hidden_cond.device)
        cond_logits: list[torch.Tensor] = [None] * C  # type: ignore[list-item]
        for j, o in enumerate(self.order):
            lc = _f32(self.outputs[j](self._run(hidden_cond, tokens, j + 1)[:, j]))
            lu = None if hidden_uncond is None else _f32(self.outputs[j](self._run(hidden_uncond, tokens, j + 1)[:, j]))
            tokens[:, o] = choose(o, lc, lu)
            cond_logits[o] = lc
        return tokens, cond_logits


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
