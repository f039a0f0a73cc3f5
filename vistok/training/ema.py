"""Exponential moving average of a model's trainable weights (LlamaGen ``--ema``, TiTok ``use_ema``, Open-MAGVIT2).

``shadow ← decay · shadow + (1 − decay) · weights`` every ``every`` optimizer steps from step ``start`` on; before
``start`` the shadow simply follows the weights. Only parameters with ``requires_grad`` are averaged (a frozen part,
such as an MLLM's language model, is the same in both and is not copied); buffers are always the live model's.

The EMA weights are used by swapping them into the live model (:meth:`EMA.swapped`) rather than by keeping a
second model, so the memory cost is one copy of the trainable parameters. Under FSDP (``fsdp.py``) each rank's shadow
holds the shard of the weights it holds; ``state_dict`` gathers the full weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, start: int = 0, every: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema.decay must be in (0, 1), got {decay}")
        if every < 1 or start < 0:
            raise ValueError(f"train.ema.every must be >= 1 and train.ema.start >= 0, got {every}, {start}")
        self.decay, self.start, self.every = decay, start, every
        self.shadow: dict[str, torch.Tensor] = {name: p.detach().clone() for name, p in self._params(model)}

    @staticmethod
    def _params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after the optimizer step that completed ``step`` steps."""
        if step < self.start:
            for name, p in self._params(model):
                self.shadow[name].copy_(p)
        elif step % self.every == 0:
            for name, p in self._params(model):
                self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block ``model`` holds the EMA weights; its own weights come back afterwards."""
        self._swap(model)
        try:
            yield model
        finally:
            self._swap(model)

    @torch.no_grad()
    def _swap(self, model: nn.Module) -> None:
        for name, p in self._params(model):
            tmp = p.detach().clone()
            p.copy_(self.shadow[name])
            self.shadow[name].copy_(tmp)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, p in self._params(model):
            p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full EMA weights (collective under FSDP, where each rank holds the shard of its parameters)."""
        from vistok.training.fsdp import full_tensor

        return {name: full_tensor(t.detach()).cpu().contiguous() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        from vistok.errors import CheckpointError
        from vistok.training.fsdp import like

        if set(state) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
            raise CheckpointError(f"{source}: EMA weights do not match the model's trainable parameters "
                                  f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for name, t in state.items():
            if t.shape != self.shadow[name].shape:
                raise CheckpointError(f"{source}: EMA weight {name} has shape {tuple(t.shape)}, the model "
                                      f"{tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(like(t, self.shadow[name]))
