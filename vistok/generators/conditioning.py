"""Conditioning modules: the condition becomes a prefix of P embedded tokens that the GPT reads before the image.

Interface (:class:`Conditioning`): ``num_prefix`` (P), ``forward(cond, drop_mask=None) -> (B, P, dim)`` and
``null(batch) -> (B, P, dim)``, the learned "no condition" prefix used for condition dropout in training and as the
unconditional branch of classifier-free guidance. The GPT draws the dropout mask (probability ``class_dropout``,
training only); the module only substitutes its null prefix where the mask is True. A text conditioning (prompt
embeddings projected to P prefix tokens) is a new file with ``@register("conditioning", "text")``.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.registry import register


class Conditioning(nn.Module):
    """Base of conditioning modules."""

    num_prefix: int = 1

    def forward(self, cond: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def null(self, batch: int) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface


@register("conditioning", "class")
class ClassConditioning(Conditioning):
    """Class labels -> one prefix token (LlamaGen's LabelEmbedder): a table of num_classes + 1 rows whose last row
    is the learned null class."""

    num_prefix = 1

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, cond: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """labels (B,) int64 in [0, num_classes); drop_mask (B,) bool, True -> null class. Returns (B, 1, dim)."""
        if cond.ndim != 1:
            raise ValueError(f"class labels must be (B,), got {tuple(cond.shape)}")
        if cond.numel() and (cond.min() < 0 or cond.max() >= self.num_classes):
            raise ValueError(f"class labels must lie in [0, {self.num_classes}), got {cond.min()}..{cond.max()}")
        if drop_mask is not None:
            cond = torch.where(drop_mask, torch.full_like(cond, self.num_classes), cond)
        return self.embedding(cond)[:, None]  # (B,) -> (B, 1, dim)

    def null(self, batch: int) -> torch.Tensor:
        null = self.embedding.weight[self.num_classes]  # (dim,)
        return null.expand(batch, 1, -1)  # (B, 1, dim)
