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
        # a head is registered under the TokenSpec kind it models (@register("head", kind))
        registered = getattr(type(self), "registry_kind", None) == "head"
        kind = type(self).registry_name if registered else None
        if kind is not None and spec.kind != kind:
            raise ConfigError(f"{type(self).__name__} takes a {kind!r} TokenSpec, got kind {spec.kind!r}")
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

    def forced_logits(self, hidden_cond: torch.Tensor, hidden_uncond: torch.Tensor | None, cfg_scale: float,
                      tokens: torch.Tensor) -> torch.Tensor:
        """The guided logits that ``sample`` draws ``tokens`` (B,) or (B, C) from, with those tokens forced
        (heads that predict a position's channels one after another condition each channel on the forced
        earlier ones). Shape (B, V) for ``vocab``; (B, C, V_max) for the other kinds (padded with -inf where a
        channel's vocabulary is smaller). ``-log_softmax`` of it at the tokens, summed over channels, is the
        negative log-likelihood that ``loss`` averages (without guidance)."""
        return self.guided_logits(hidden_cond, hidden_uncond, cfg_scale)

    # ---- continuous codes, for the flow-matching entity head (xAR) ----------------------------------------------
    def token_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (..., [C]) -> the continuous vectors (..., code_dim) a flow head regresses; heads that have a
        natural vector per token (bits ±1, bins' dequantized values) implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous codes; a flow-matching head needs them")

    def nearest_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """The inverse of ``token_codes``: codes (..., code_dim) -> the tokens of the nearest codes."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous codes; a flow-matching head needs them")


def pad_channel_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """Per-channel logits [(B, V_c)] -> (B, C, V_max), padded with -inf (probability 0) where V_c < V_max."""
    v_max = max(x.shape[-1] for x in logits)
    return torch.stack([torch.nn.functional.pad(x, (0, v_max - x.shape[-1]), value=float("-inf")) for x in logits],
                       dim=-2)


def build_head(spec: TokenSpec, dim: int, **options) -> TokenHead:
    """The registered head for ``spec.kind``, built for width ``dim`` with the head's own ``options``."""
    try:
        cls = lookup("head", spec.kind)
    except ConfigError:
        raise ConfigError(f"no generator head for TokenSpec kind {spec.kind!r} yet (heads exist for "
                          f"{list_names('head')}); add one as vistok/generators/heads/<file>.py with "
                          f"@register('head', {spec.kind!r})") from None
    return cls(spec, dim, **options)
