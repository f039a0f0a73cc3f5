"""The ``subvocab`` head: G sub-vocabularies per position (group LFQ, or an LFQ code split into sub-tokens of unequal
sizes such as Open-MAGVIT2's [6, 12] bits → 64 and 4096), as Open-MAGVIT2's AR model factorizes them.

- Input: the *sum* of G sub-token embeddings (one ``nn.Embedding(V_g, dim)`` per group).
- Output (``factorized_layers > 0``, Open-MAGVIT2's asymmetric factorization): a small causal "intra-token"
  transformer over [h, E(sub_0), ..., E(sub_{G-2})] (``channel_ar.ChannelAR``) whose output j predicts sub-token j
  with its own zero-initialised Linear, so p(t) = Π_g p(t_g | h, t_<g). With ``factorized_layers=0``: G
  independent softmax heads on h, p(t) = Π_g p(t_g | h).
- Loss: the sum over groups of the cross-entropies (nats per position), averaged over positions.
- Sampling: sub-token g is guided with its own scale, ``l_u + s_g·(l_c − l_u)``, both branches fed the same sampled
  earlier sub-tokens, then sampled with its own temperature, top-k and top-p: each setting is one value for all
  sub-tokens or a list with one per sub-token (Open-MAGVIT2's ``sample_Open_MAGVIT2``: e.g. CFG (1.75, 1.85) and
  temperature (1.1, 1.0) for its XL model). Open-MAGVIT2 skips the formula where s_g ≤ 1 and doubles the batch
  only when s_0 > 1; here the batch is doubled when any s_g ≠ 1 and every s_g goes through the formula (s_g = 1
  gives the conditional logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.generators.heads.base import TokenHead, pad_channel_logits
from vistok.generators.heads.channel_ar import ChannelAR
from vistok.generators.sampling import per_subtoken, sample_logits
from vistok.registry import register
from vistok.spec import TokenSpec


@register("head", "subvocab")
class SubvocabHead(TokenHead):
    """factorized_layers: depth of the intra-token transformer (Open-MAGVIT2-B uses 2; 0 = independent heads);
    factorized_heads: its attention heads (default dim // 64, at least 1)."""

    loss_name = "ce"

    def __init__(self, spec: TokenSpec, dim: int, factorized_layers: int = 2, factorized_heads: int = 0) -> None:
        super().__init__(spec, dim)
        self.sizes = list(spec.vocab_sizes)
        self.tok_embeddings = nn.ModuleList(nn.Embedding(v, dim) for v in self.sizes)
        if factorized_layers > 0:
            heads = factorized_heads or max(1, dim // 64)
            self.factorized = ChannelAR(dim, self.sizes, dim, factorized_layers, heads)
            self.outputs = None
        else:
            self.factorized = None
            self.outputs = nn.ModuleList(nn.Linear(dim, v, bias=False) for v in self.sizes)

    def init_weights(self) -> None:
        if self.factorized is not None:
            self.factorized.init_weights()
        else:
            for out in self.outputs:
                nn.init.zeros_(out.weight)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return sum(emb(tokens[..., g]) for g, emb in enumerate(self.tok_embeddings))  # (B, L, G) -> (B, L, dim)

    def channel_logits(self, hidden: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """hidden (N, dim), tokens (N, G) (read only as the earlier sub-tokens) -> [(N, V_g)] teacher-forced."""
        if self.factorized is None:
            return [out(hidden).to(torch.promote_types(hidden.dtype, torch.float32)) for out in self.outputs]
        return self.factorized.teacher_forced_logits(hidden, tokens)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flat_h, flat_t = hidden.flatten(0, 1), targets.flatten(0, 1)  # (N, dim), (N, G)
        logits = self.channel_logits(flat_h, flat_t)
        ces = [F.cross_entropy(lg, flat_t[:, g]) for g, lg in enumerate(logits)]
        with torch.no_grad():
            correct = torch.stack([lg.argmax(-1) == flat_t[:, g] for g, lg in enumerate(logits)], -1)
            stats = {"acc": correct.all(-1).float().mean(), **{f"ce_{g}": ce.detach() for g, ce in enumerate(ces)}}
        return sum(ces), stats

    def _decode(self, hidden_cond, hidden_uncond, cfg_scale, pick):
        """One position's G sub-tokens; ``cfg_scale``: one scale or one per sub-token; pick(g, guided_logits
        (N, V_g)) -> (N,)."""
        scales = per_subtoken(cfg_scale, len(self.sizes), "cfg_scale")

        def guide(g, lc, lu):
            return lc if lu is None else lu + scales[g] * (lc - lu)

        if self.factorized is not None:
            return self.factorized.decode(hidden_cond, hidden_uncond,
                                          lambda g, lc, lu: pick(g, guide(g, lc, lu)))[0]
        lcs = self.channel_logits(hidden_cond, None)
        lus = [None] * len(lcs) if hidden_uncond is None else self.channel_logits(hidden_uncond, None)
        return torch.stack([pick(g, guide(g, lc, lu)) for g, (lc, lu) in enumerate(zip(lcs, lus))], dim=-1)

    def sample(self, hidden_cond, hidden_uncond, cfg_scale, temperature=1.0, top_k=0, top_p=1.0, generator=None):
        """(N, G) sub-tokens; cfg_scale, temperature, top_k, top_p: one value, or a list with one per sub-token."""
        G = len(self.sizes)
        temps, ks, ps = (per_subtoken(temperature, G, "temperature"), per_subtoken(top_k, G, "top_k"),
                         per_subtoken(top_p, G, "top_p"))
        return self._decode(hidden_cond, hidden_uncond, cfg_scale,
                            lambda g, lg: sample_logits(lg, float(temps[g]), int(ks[g]), float(ps[g]), generator))

    def forced_logits(self, hidden_cond, hidden_uncond, cfg_scale, tokens):
        trace: list[torch.Tensor] = [None] * len(self.sizes)  # type: ignore[list-item]

        def pick(g, lg):
            trace[g] = lg
            return tokens[:, g].long()

        self._decode(hidden_cond, hidden_uncond, cfg_scale, pick)
        return pad_channel_logits(trace)  # (N, G, V_max)
