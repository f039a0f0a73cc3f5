"""Prefix regularizers for 1D tokenizers: train the decoder on truncated token sequences so that any prefix of
the tokens decodes to a (coarser) image. Two mechanisms, as their papers and code define them:

- :class:`TailTokenDrop` (One-D-Piece, arXiv 2501.10064): in training keep the first k tokens, k ~ U{1..K}, **one
  k per batch** (``torch.randint(1, K + 1)``, the fixed off-by-one), and *remove* the tail: the decoder runs on a
  shorter sequence. At inference a k-token prefix is decoded the same way.
- :class:`NestedDropout` (FlexTok, arXiv 2502.13967, ``MaskedNestedDropout``): in training draw k **per image**,
  uniform on {1..K} (``"uniform"``), uniform over powers of two {1, 2, 4, …, K} (``"pow2"``) or uniform then
  rounded up to a power of two (``"uniform_pow2"``); positions k.. are *overwritten by a learned mask token*, so
  the decoder always sees K slots. At inference a k-token prefix is padded with the mask token.
- :class:`NoPrefixRegularizer`: the control (plain TiTok); short prefixes are decoded by removing the tail.

Each module maps the decoder-side latent sequence ``(B, K, W)`` → ``(B, K', W)``; the tokenizer calls it on the
projected latents (so FlexTok's mask token lives in the decoder's width, as its learned register mask does).
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.registry import register


class PrefixRegularizer(nn.Module):
    """``forward(latents)`` in training applies the regularizer; ``prefix(latents, k)`` turns a k-token prefix
    (``latents`` of length k ≤ K) into what the decoder reads. ``pads_to_full`` says whether that is K slots."""

    pads_to_full: bool = False

    def __init__(self, num_tokens: int, width: int) -> None:
        super().__init__()
        self.num_tokens, self.width = num_tokens, width

    def forward(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def prefix(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def _check(self, latents: torch.Tensor) -> None:
        if latents.ndim != 3 or latents.shape[1] > self.num_tokens or latents.shape[1] < 1:
            raise ValueError(f"latents must be (B, k, W) with 1 <= k <= {self.num_tokens}, "
                             f"got {tuple(latents.shape)}")


@register("prefix", "none")
class NoPrefixRegularizer(PrefixRegularizer):
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


@register("prefix", "tail_drop")
class TailTokenDrop(PrefixRegularizer):
    """One-D-Piece's Tail Token Drop: one k ~ U{1..K} per batch, tokens k.. removed."""

    def __init__(self, num_tokens: int, width: int) -> None:
        super().__init__(num_tokens, width)
        self.last_k: int | None = None  # the k drawn by the latest training forward (for logging and tests)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        if not self.training:
            return latents
        k = int(torch.randint(1, latents.shape[1] + 1, ()).item())
        self.last_k = k
        return latents[:, :k]


@register("prefix", "nested_dropout")
class NestedDropout(PrefixRegularizer):
    """FlexTok's nested dropout: k per image, tokens k.. replaced by a learned mask token."""

    pads_to_full = True
    MODES = ("uniform", "pow2", "uniform_pow2")

    def __init__(self, num_tokens: int, width: int, mode: str = "pow2") -> None:
        super().__init__(num_tokens, width)
        if mode not in self.MODES:
            raise ValueError(f"nested_dropout mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.mask_token = nn.Parameter(torch.randn(width) * width**-0.5)
        self.last_keep: torch.Tensor | None = None  # (B,) k per image of the latest training forward

    def sample_keep(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) number of kept tokens per image."""
        n = self.num_tokens
        if self.mode == "pow2":
            powers = [2**i for i in range(n.bit_length()) if 2**i <= n]
            if powers[-1] != n:  # K not a power of two: K itself is the largest option, so the full code is seen
                powers.append(n)
            choice = torch.randint(0, len(powers), (batch,), device=device)
            return torch.tensor(powers, device=device)[choice]
        keep = torch.randint(1, n + 1, (batch,), device=device)
        if self.mode == "uniform_pow2":
            keep = (2 ** torch.ceil(torch.log2(keep.float()))).long().clamp_max(n)
        return keep

    def apply_mask(self, latents: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Positions ``>= keep[b]`` of image b become the mask token; the others are returned untouched."""
        dropped = torch.arange(latents.shape[1], device=latents.device)[None, :] >= keep[:, None]  # (B, K)
        return torch.where(dropped[..., None], self.mask_token.to(latents.dtype), latents)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        if not self.training:
            return latents
        keep = self.sample_keep(latents.shape[0], latents.device)
        self.last_keep = keep
        return self.apply_mask(latents, keep)

    def prefix(self, latents: torch.Tensor) -> torch.Tensor:
        """Pad a k-token prefix to K slots with the mask token (FlexTok's ``eval_keep_k``)."""
        self._check(latents)
        b, k, w = latents.shape
        if k == self.num_tokens:
            return latents
        pad = self.mask_token.to(latents.dtype).expand(b, self.num_tokens - k, w)
        return torch.cat([latents, pad], dim=1)
