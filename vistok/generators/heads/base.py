"""The generator's token interface: one :class:`TokenHead` per :class:`TokenSpec` kind.

The backbone (``vistok.generators.gpt``) is kind-agnostic: it maps input embeddings to hidden states. A head owns
both ends that depend on what a token is — the input embedding and the output distribution (loss, sampling,
guidance). Adding a kind (subvocab, bits, bins, continuous) is a new file with ``@register("head", kind)``.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.registry import list_names, lookup
from vistok.spec import TokenSpec


class TokenHead(nn.Module):
    """Base of every head. Token tensors are (B, L) for ``vocab`` specs and (B, L, C) otherwise; ``hidden`` is the
    backbone's final-normed output (B, L, dim), or (B, dim) for one decoding position."""

    loss_name = "nll"  # the key the GPT reports this head's loss under

    def __init__(self, spec: TokenSpec, dim: int) -> None:
        super().__init__()
        self.spec, self.dim = spec, dim

    def init_weights(self) -> None:
        """Called after the GPT's generic init (normal(0, 0.02) on every Linear/Embedding); override to change."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """tokens (B, L) or (B, L, C) -> input embeddings (B, L, dim)."""
        raise NotImplementedError

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """hidden (B, L, dim) at the positions that predict targets (B, L[, C]) -> (scalar loss, detached stats)."""
        raise NotImplementedError  # pragma: no cover - interface

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., dim) -> logits in float32 (float64 for a float64 model), for heads that have them."""
        raise NotImplementedError(f"{type(self).__name__} has no logits")

    def guided_logits(self, hidden_cond: torch.Tensor, hidden_uncond: torch.Tensor | None,
                      cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance on logits (Ho & Salimans 2022, as LlamaGen applies it):
        ``l_u + s · (l_c − l_u)``; the conditional logits alone when there is no unconditional branch. Heads
        that guide differently (probabilities per bit, continuous velocities) override this or ``sample``."""
        cond = self.logits(hidden_cond)
        if hidden_uncond is None:
            return cond
        uncond = self.logits(hidden_uncond)
        return uncond + cfg_scale * (cond - uncond)

    def sample(self, hidden_cond: torch.Tensor, hidden_uncond: torch.Tensor | None, cfg_scale: float,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """hidden (B, dim) for one position (and its unconditional twin for CFG) -> tokens (B,) or (B, C)."""
        raise NotImplementedError  # pragma: no cover - interface


def build_head(spec: TokenSpec, dim: int) -> TokenHead:
    """The registered head for ``spec.kind``, built for width ``dim``."""
    try:
        cls = lookup("head", spec.kind)
    except ConfigError:
        raise ConfigError(f"no generator head for TokenSpec kind {spec.kind!r} yet (heads exist for "
                          f"{list_names('head')}); add one as vistok/generators/heads/<file>.py with "
                          f"@register('head', {spec.kind!r})") from None
    return cls(spec, dim)
