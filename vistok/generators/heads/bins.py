"""The ``bins`` head: D dimensions × B bins per position (TokenBridge's post-training dimension-wise quantization).

- Input: a linear embedding of the **dequantized vector** (``Linear(D, dim)``). The TokenSpec carries bin indices
  only, so the head rebuilds the dequantized values from TokenBridge's fixed construction: Gaussian-quantile bins
  on the normalized range [−3, 3] (boundaries Φ⁻¹(j/B), clamped to ±3) with the truncated-normal conditional mean
  of each bin as its value. TokenBridge's inverse affine map back to the latent range is linear, and the Linear
  embedding absorbs it, so this *is* the dequantized vector up to that map. ``bin_values="uniform"`` uses bin
  centres of a uniform quantizer instead (for PTQ tokenizers with uniform bins).
- Output: TokenBridge's lightweight dimension-wise autoregressive head (``channel_ar.ChannelAR``): a small causal
  transformer over [proj(h), E_0(t_{o_0}), ..., E_{D-2}(t_{o_{D-2}})] with one 64-entry (B-entry) table per step
  and one Linear per dimension, predicting the D dimensions in TokenBridge's fixed order
  [8, 1, 10, 9, 6, 12, 4, 0, 3, 11, 7, 14, 2, 15, 13, 5] when D = 16, in index order otherwise. Default size:
  width = dim, depth 4, 8 heads (TokenBridge-B/L's head). Deviation: TokenBridge conditions its blocks with
  AdaLN-Zero on proj(h) + a step embedding; here proj(h) is the sequence's first token (as Open-MAGVIT2's
  factorized transformer) and the steps are told apart by RoPE.
- Loss: sum over dimensions of the cross-entropies (nats per position), averaged over positions.
- CFG on the *feature* h before the channel head, h_u + s·(h_c − h_u), as TokenBridge applies it; the D dimensions
  are then sampled from the guided feature with temperature/top-k/top-p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.generators.heads.base import TokenHead, pad_channel_logits
from vistok.generators.heads.channel_ar import ChannelAR
from vistok.generators.sampling import sample_logits
from vistok.registry import register
from vistok.spec import TokenSpec

TOKENBRIDGE_ORDER_16 = (8, 1, 10, 9, 6, 12, 4, 0, 3, 11, 7, 14, 2, 15, 13, 5)
BIN_VALUES = ("gaussian", "uniform")


def dequantized_bin_values(num_bins: int, kind: str = "gaussian", std_range: float = 3.0) -> torch.Tensor:
    """(num_bins,) dequantized value of each bin on the normalized range [−std_range, std_range]."""
    if kind == "uniform":
        edges = torch.linspace(-std_range, std_range, num_bins + 1, dtype=torch.float64)
        return ((edges[:-1] + edges[1:]) / 2).float()
    if kind != "gaussian":
        raise ConfigError(f"bin_values must be one of {BIN_VALUES}, got {kind!r}")
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    q = torch.arange(num_bins + 1, dtype=torch.float64) / num_bins
    edges = normal.icdf(q.clamp(1e-12, 1 - 1e-12)).clamp(-std_range, std_range)  # Φ⁻¹(j/B), clamped
    a, b = edges[:-1], edges[1:]
    pdf = lambda x: torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5  # noqa: E731
    return ((pdf(a) - pdf(b)) / (normal.cdf(b) - normal.cdf(a))).float()  # truncated-normal mean of each bin


@register("head", "bins")
class BinsHead(TokenHead):
    """head_width/head_depth/head_heads: the dimension-wise AR head's size (default dim, 4, 8);
    order: "tokenbridge" (the fixed order for D = 16, index order otherwise), "index", or a list."""

    loss_name = "ce"

    def __init__(self, spec: TokenSpec, dim: int, head_width: int = 0, head_depth: int = 4, head_heads: int = 8,
                 order: str | list[int] = "tokenbridge", bin_values: str = "gaussian") -> None:
        super().__init__(spec, dim)
        D, B = spec.channels, spec.vocab_sizes[0]
        if order == "tokenbridge":
            order = list(TOKENBRIDGE_ORDER_16) if D == 16 else list(range(D))
        elif order == "index":
            order = list(range(D))
        self.register_buffer("values", _bin_values(B, bin_values), persistent=False)  # (B,)
        self.value_embedding = nn.Linear(D, dim, bias=False)
        self.channel_ar = ChannelAR(dim, spec.vocab_sizes, head_width or dim, head_depth, head_heads, order)

    def init_weights(self) -> None:
        self.channel_ar.init_weights()

    def token_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.values[tokens.long()]  # (..., D) dequantized (normalized) values

    def nearest_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes[..., None] - self.values).abs().argmin(-1)  # Voronoi assignment, as TokenBridge

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.value_embedding(self.token_codes(tokens).to(self.value_embedding.weight.dtype))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flat_h, flat_t = hidden.flatten(0, 1), targets.flatten(0, 1)  # (N, dim), (N, D)
        logits = torch.stack(self.channel_ar.teacher_forced_logits(flat_h, flat_t), dim=1)  # (N, D, B)
        ce = F.cross_entropy(logits.flatten(0, 1), flat_t.flatten(), reduction="none").view(flat_t.shape)
        with torch.no_grad():
            dim_acc = (logits.argmax(-1) == flat_t).float().mean()
        return ce.sum(-1).mean(), {"dim_acc": dim_acc}

    def _guided_feature(self, hidden_cond, hidden_uncond, cfg_scale):
        return hidden_cond if hidden_uncond is None else hidden_uncond + cfg_scale * (hidden_cond - hidden_uncond)

    def sample(self, hidden_cond, hidden_uncond, cfg_scale, temperature=1.0, top_k=0, top_p=1.0, generator=None):
        h = self._guided_feature(hidden_cond, hidden_uncond, cfg_scale)
        return self.channel_ar.decode(h, None, lambda c, lc, lu: sample_logits(lc, temperature, top_k, top_p,
                                                                                 generator))[0]  # (N, D)

    def forced_logits(self, hidden_cond, hidden_uncond, cfg_scale, tokens):
        h = self._guided_feature(hidden_cond, hidden_uncond, cfg_scale)
        _, logits = self.channel_ar.decode(h, None, lambda c, lc, lu: tokens[:, c].long())
        return pad_channel_logits(logits)  # (N, D, B)


_bin_values = dequantized_bin_values
