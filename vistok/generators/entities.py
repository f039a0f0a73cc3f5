"""Entity partitions for next-X prediction (xAR): which grid tokens form each prediction unit, in generation order.

An entity is a set of token positions (raster indices into the h×w grid) predicted together in one step; a
partition lists the entities in generation order and covers every token exactly once (``check_partition``).

- ``token``: every token alone, raster order (plain next-token prediction; a ``seq`` layout too).
- ``cell`` (size k): k×k neighbouring tokens, cells in raster order (k consecutive tokens for a ``seq`` layout).
- ``subsample`` (stride s): s² non-local groups, group (a, b) = tokens (r, c) with r ≡ a, c ≡ b (mod s); each
  group is the image subsampled by s (a different phase each), groups in raster order of (a, b).
- ``scale``: coarse to fine on the token grid. With strides s_0 > s_1 > ... > 1 (powers of two), entity k holds
  the tokens on the stride-s_k lattice that are not on a coarser one, so entities 0..k together are the image at
  resolution (h/s_k)×(w/s_k). Deviation: VAR/xAR's scales come from a multi-scale (residual) tokenizer; ours
  partitions one single-scale grid, so every token still belongs to exactly one entity.
- ``image``: all tokens in one entity.

Each partition is a function registered as ``entity`` (``vistok.registry``); ``build_entities`` builds one by name.
"""

from __future__ import annotations

from typing import Any

import torch

from vistok.registry import build, register
from vistok.spec import TokenSpec


def _grid(spec: TokenSpec, name: str) -> tuple[int, int]:
    if spec.layout != "grid":
        raise ValueError(f"entity {name!r} needs a grid tokenizer; a 1D sequence takes 'token', 'cell' or 'image'")
    return spec.grid


@register("entity", "token")
def token_entities(spec: TokenSpec) -> list[torch.Tensor]:
    """Every token alone, in raster order."""
    return list(torch.arange(spec.length).view(-1, 1))


@register("entity", "image")
def image_entities(spec: TokenSpec) -> list[torch.Tensor]:
    """All tokens in one entity."""
    return [torch.arange(spec.length)]


@register("entity", "cell")
def cell_entities(spec: TokenSpec, size: int = 2) -> list[torch.Tensor]:
    """size×size neighbouring tokens, cells in raster order (``size`` consecutive tokens for a ``seq`` layout)."""
    k, L = int(size), spec.length
    idx = torch.arange(L)
    if spec.layout == "seq":
        if L % k:
            raise ValueError(f"entity cell size={k} does not divide the sequence length {L}")
        return [idx[i:i + k] for i in range(0, L, k)]
    h, w = spec.grid
    if h % k or w % k:
        raise ValueError(f"entity cell size={k} does not tile the {h}×{w} token grid; choose a size that "
                         "divides both sides")
    return list(idx.view(h // k, k, w // k, k).permute(0, 2, 1, 3).reshape(-1, k * k))


@register("entity", "subsample")
def subsample_entities(spec: TokenSpec, stride: int = 2) -> list[torch.Tensor]:
    """stride² groups, each the token grid subsampled by ``stride`` at one phase, phases in raster order."""
    s = int(stride)
    h, w = _grid(spec, "subsample")
    if h % s or w % s:
        raise ValueError(f"entity subsample stride={s} does not tile the {h}×{w} token grid")
    return list(torch.arange(spec.length).view(h // s, s, w // s, s).permute(1, 3, 0, 2).reshape(s * s, -1))


@register("entity", "scale")
def scale_entities(spec: TokenSpec, strides: list[int] | None = None) -> list[torch.Tensor]:
    """Coarse to fine: entity k holds the stride-strides[k] lattice tokens not on a coarser one. ``strides``
    decrease and end at 1; by default the powers of two below the grid's shorter side, down to 1."""
    h, w = _grid(spec, "scale")
    if strides is None:
        top = 1
        while top * 2 < min(h, w):
            top *= 2
        strides = [top >> i for i in range(top.bit_length())]
    strides = [int(s) for s in strides]
    if strides[-1] != 1 or any(a <= b for a, b in zip(strides, strides[1:])):
        raise ValueError(f"scale strides must decrease and end at 1, got {strides}")
    idx = torch.arange(spec.length)
    rows, cols = idx // w, idx % w
    seen = torch.zeros(spec.length, dtype=torch.bool)
    parts = []
    for s in strides:
        on = (rows % s == 0) & (cols % s == 0) & ~seen
        parts.append(idx[on])
        seen |= on
    return parts


def build_entities(spec: TokenSpec, cfg: str | dict[str, Any] = "token") -> list[torch.Tensor]:
    """The partition named by ``cfg`` ("cell" or {"name": "cell", "size": 2}; "subsample" takes "stride",
    "scale" takes optional "strides"; a dict without "name" means "token") as a list of LongTensors of raster
    token indices, built by the ``entity`` registry (unknown names and options raise ``ConfigError``)."""
    cfg = {"name": cfg} if isinstance(cfg, str) else {"name": "token", **cfg}
    parts = [p.clone() for p in build("entity", cfg, spec=spec) if len(p)]
    check_partition(parts, spec.length)
    return parts


def check_partition(parts: list[torch.Tensor], length: int) -> None:
    """Raise unless ``parts`` cover 0..length-1 exactly once."""
    flat = torch.cat(parts)
    if len(flat) != length or not torch.equal(flat.sort().values, torch.arange(length)):
        raise ValueError("entities must cover every token exactly once")
