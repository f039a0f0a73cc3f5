"""Sampling utilities as pure functions (the split LlamaGen/gpt-fast use): top-k, top-p (nucleus, Holtzman et al.
2020), temperature, and the classifier-free-guidance scale schedule. Logits are (..., V) over the last axis."""

from __future__ import annotations

import torch

CFG_SCHEDULES = ("constant", "linear")


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties with the k-th are kept too), set the rest to -inf. k <= 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability mass is >= p, set the
    rest to -inf. A token is kept iff the mass of the tokens ranked above it is < p, so the top token is always
    kept. p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # (..., V): mass of the tokens ranked strictly higher
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of logits (..., V) -> (...,) int64. temperature 0 is greedy argmax (top-k/top-p
    are then irrelevant). ``generator`` must live on the logits' device; the same generator state gives the same
    draw."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = apply_top_p(apply_top_k(logits.float() / temperature, top_k), top_p)
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial takes (N, V)
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def cfg_scale_at(step: int, num_steps: int, scale: float, schedule: str = "constant") -> float:
    """The guidance scale for decoding step ``step`` of ``num_steps`` (0-based).

    - ``constant``: ``scale`` at every step.
    - ``linear``: ramps linearly from 1 (no guidance) at the first step to ``scale`` at the last,
      ``1 + (scale - 1) * step / (num_steps - 1)``; a single step gets ``scale``. Early tokens fix the global
      layout and benefit from diversity, later ones from guidance (the schedule of MUSE/MAR-style linear CFG).
    """
    if schedule == "constant":
        return float(scale)
    if schedule == "linear":
        if num_steps <= 1:
            return float(scale)
        return 1.0 + (scale - 1.0) * step / (num_steps - 1)
    raise ValueError(f"unknown cfg_schedule {schedule!r}; choose one of {CFG_SCHEDULES}")
