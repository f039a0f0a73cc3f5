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
"""

from __future__ import annotations

from typing import Any

import torch

from vistok.spec import TokenSpec

ENTITIES = ("token", "cell", "subsample", "scale", "image")


def _grid(spec: TokenSpec, name: str) -> tuple[int, int]:
    if spec.layout != "grid":
        raise ValueError(f"entity {name!r} needs a grid tokenizer; a 1D sequence takes 'token', 'cell' or 'image'")
    return spec.grid


def build_entities(spec: TokenSpec, cfg: str | dict[str, Any] = "token") -> list[torch.Tensor]:
    """The partition named by ``cfg`` ("cell" or {"name": "cell", "size": 2}; "subsample" takes "stride",
    "scale" takes optional "strides") as a list of LongTensors of raster token indices."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    name = cfg.pop("name", "token")
    L = spec.length
    idx = torch.arange(L)
    if name == "token":
        parts = [idx[i:i + 1] for i in range(L)]
    elif name == "image":
        parts = [idx]
    elif name == "cell":
        k = int(cfg.pop("size", 2))
        if spec.layout == "seq":
            if L % k:
                raise ValueError(f"entity cell size={k} does not divide the sequence length {L}")
            parts = [idx[i:i + k] for i in range(0, L, k)]
        else:
            h, w = spec.grid
            if h % k or w % k:
                raise ValueError(f"entity cell size={k} does not tile the {h}×{w} token grid; choose a size that "
                                 "divides both sides")
            g = idx.view(h // k, k, w // k, k).permute(0, 2, 1, 3).reshape(-1, k * k)
            parts = list(g)
    elif name == "subsample":
        s = int(cfg.pop("stride", 2))
        h, w = _grid(spec, name)
        if h % s or w % s:
            raise ValueError(f"entity subsample stride={s} does not tile the {h}×{w} token grid")
        g = idx.view(h // s, s, w // s, s).permute(1, 3, 0, 2).reshape(s * s, -1)
        parts = list(g)
    elif name == "scale":
        h, w = _grid(spec, name)
        strides = cfg.pop("strides", None)
        if strides is None:
            top = 1
            while top * 2 < min(h, w):
                top *= 2
            strides = [top >> i for i in range(top.bit_length())]
        strides = [int(s) for s in strides]
        if strides[-1] != 1 or any(a <= b for a, b in zip(strides, strides[1:])):
            raise ValueError(f"scale strides must decrease and end at 1, got {strides}")
        rows, cols = idx // w, idx % w
        seen = torch.zeros(L, dtype=torch.bool)
        parts = []
        for s in strides:
            on = (rows % s == 0) & (cols % s == 0) & ~seen
            parts.append(idx[on])
            seen |= on
    else:
        raise ValueError(f"unknown entity {name!r}; choose one of {ENTITIES}")
    if cfg:
        raise ValueError(f"entity {name!r} got unknown options {sorted(cfg)}")
    parts = [p.clone() for p in parts if len(p)]
    check_partition(parts, L)
    return parts


def check_partition(parts: list[torch.Tensor], length: int) -> None:
    """Raise unless ``parts`` cover 0..length-1 exactly once."""
    flat = torch.cat(parts)
    if len(flat) != length or not torch.equal(flat.sort().values, torch.arange(length)):
        raise ValueError("entities must cover every token exactly once")
