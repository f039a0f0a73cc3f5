"""Sampling utilities as pure functions (the split LlamaGen/gpt-fast use): top-k, top-p (nucleus, Holtzman et al.
2020), temperature, and classifier-free guidance over the decoding steps (scale schedule, LlamaGen's
``cfg_interval``). Logits are (..., V) over the last axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vistok.errors import ConfigError

CFG_SCHEDULES = ("constant", "linear", "cosine")


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
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = apply_top_p(apply_top_k(logits.float() / temperature, top_k), top_p)
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial takes (N, V)
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def is_list(value: object) -> bool:
    """A per-sub-token list (any sequence but a string, e.g. an OmegaConf ListConfig)."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def per_subtoken(value: float | Sequence[float], count: int, name: str) -> list:
    """One value per sub-token: a list of ``count`` values as given, or one value repeated."""
    if not is_list(value):
        return [value] * count
    if len(value) != count:
        raise ConfigError(f"{name} has {len(value)} values for {count} sub-tokens; give one per sub-token or one "
                          "for all")
    return list(value)


def check_per_subtoken(kind: str, count: int, **options: object) -> None:
    """Per-sub-token lists (Open-MAGVIT2's per-sub-token CFG scales, temperatures, top-k, top-p) apply to
    ``subvocab`` tokens; for other kinds, or lists of the wrong length, fail with one line naming the option."""
    for name, value in options.items():
        if is_list(value):
            if kind != "subvocab":
                raise ConfigError(f"{name}={list(value)}: one value per sub-token applies to subvocab tokens; this "
                                  f"model's tokens are {kind!r}, give one number")
            per_subtoken(value, count, name)


def uses_guidance(scale: float | Sequence[float]) -> bool:
    """Whether a (per-sub-token) scale needs the unconditional branch: any value other than 1."""
    return any(float(s) != 1.0 for s in (scale if is_list(scale) else [scale]))


def cfg_scale_at(step: int, num_steps: int, scale: float | Sequence[float],
                 schedule: str = "constant") -> float | list[float]:
    """The guidance scale for decoding step ``step`` of ``num_steps`` (0-based). A step is one token, one
    token-shuffle window or one next-X entity: everything sampled from one backbone pass shares its scale. A list
    (one scale per sub-token) gives a list, each entry on the same schedule.

    - ``constant``: ``scale`` at every step (LlamaGen, Open-MAGVIT2).
    - ``linear``: from 1 (no guidance) at the first step to ``scale`` at the last,
      ``1 + (scale − 1)·r`` with ``r = step / (num_steps − 1)``; a single step gets ``scale``. This is xAR's
      per-entity ramp (OliverRensu/xAR: ``1 + (cfg − 1)·i / (clusters − 1)``) and the low-to-high guidance over the
      decoding steps that Token-Shuffle (Ma et al. 2025, arXiv 2504.17789) adds to its sampler; early steps fix the
      global layout and keep diversity, later ones follow the condition.
    - ``cosine``: the same end points on a cosine ease, ``1 + (scale − 1)·(1 − cos(π·r))/2``: slower at both ends
      (the increasing cosine schedule studied by Wang et al. 2024, "Analysis of Classifier-Free Guidance Weight
      Schedulers", arXiv 2404.13040).
    """
    if schedule not in CFG_SCHEDULES:
        raise ConfigError(f"unknown cfg_schedule {schedule!r}; choose one of {CFG_SCHEDULES}")
    if is_list(scale):
        return [cfg_scale_at(step, num_steps, float(s), schedule) for s in scale]
    if schedule == "constant" or num_steps <= 1:
        return float(scale)
    r = step / (num_steps - 1)
    if schedule == "cosine":
        r = (1 - math.cos(math.pi * r)) / 2
    return 1.0 + (scale - 1.0) * r


def cfg_guided_at(step: int, cfg_interval: int = -1) -> bool:
    """Whether decoding step ``step`` (0-based) is guided under LlamaGen's ``cfg_interval``
    (FoundationVision/LlamaGen ``autoregressive/models/generate.py``): -1 guides every step; c ≥ 0 guides the token
    sampled after the prefill and the decode steps ``i ≤ c`` of its loop (which samples token i + 1), i.e. steps
    0..c+1, and samples every later step from the conditional logits alone. As in LlamaGen the unconditional rows
    keep running (their cache stays filled); only their logits are no longer used."""
    if cfg_interval < -1:
        raise ConfigError(f"cfg_interval must be -1 (guide every step) or >= 0, got {cfg_interval}")
    return cfg_interval < 0 or step <= cfg_interval + 1


def guidance_plan(num_steps: int, scale: float | Sequence[float], schedule: str = "constant",
                  cfg_interval: int = -1) -> list[tuple[float | list[float], bool]]:
    """(scale, guided) for each of ``num_steps`` decoding steps: the schedule's scale and whether the step uses
    the unconditional branch at all (``cfg_interval``). Unknown schedules and bad intervals fail before sampling."""
    return [(cfg_scale_at(i, num_steps, scale, schedule), cfg_guided_at(i, cfg_interval)) for i in range(num_steps)]
