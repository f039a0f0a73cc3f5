"""TokenSpec: the contract between any tokenizer and the one generator.

A tokenizer publishes a :class:`TokenSpec`; the generator builds its input embedding and output head from it and
never imports a tokenizer. Token tensors themselves stay plain ``torch.long`` tensors (they batch, index, save
and cache like any tensor); the spec says how to read them:

- layout: ``grid`` (h × w positions in raster order, e.g. a 2D conv VQ) or ``seq`` (a 1D sequence of ``length``
  positions; ``prefix_ok`` says whether any shorter prefix is a valid token sequence, as for tail-drop/nested-
  dropout 1D tokenizers).
- kind, per position:
    - ``vocab``    one index in [0, V)                              tokens (B, L)
    - ``subvocab`` G indices, index g in [0, V_g) (group LFQ)       tokens (B, L, G)
    - ``bits``     K bits in {0, 1} (binary latents)                tokens (B, L, K)
    - ``bins``     D dimensions, each a bin index in [0, B) (PTQ)   tokens (B, L, D)
  Internally every kind is "C channels with vocabulary sizes ``vocab_sizes``" (C = 1, G, K or D), so generic code
  (bits per image, range checks) needs no special cases; the ``kind`` picks the generator's embedding and head.
- ``code_dim``: the dimension of the tokenizer's code vectors (for heads that regress continuous codes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

KINDS = ("vocab", "subvocab", "bits", "bins")
LAYOUTS = ("grid", "seq")


@dataclass(frozen=True)
class TokenSpec:
    kind: str
    vocab_sizes: tuple[int, ...]
    layout: str
    length: int
    grid: tuple[int, int] | None = None
    prefix_ok: bool = False
    code_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        if self.grid is not None:
            object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))
        if self.kind not in KINDS:
            raise ValueError(f"TokenSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"TokenSpec.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.vocab_sizes or min(self.vocab_sizes) < 2:
            raise ValueError(f"TokenSpec.vocab_sizes must be non-empty and each >= 2, got {self.vocab_sizes}")
        if self.kind == "vocab" and len(self.vocab_sizes) != 1:
            raise ValueError("TokenSpec kind 'vocab' has exactly one vocabulary")
        if self.kind == "bits" and set(self.vocab_sizes) != {2}:
            raise ValueError("TokenSpec kind 'bits' has vocabulary size 2 per channel")
        if self.layout == "grid":
            if self.grid is None or self.grid[0] * self.grid[1] != self.length:
                raise ValueError(f"grid layout needs grid=(h, w) with h*w == length, got {self.grid}, {self.length}")
            if self.prefix_ok:
                raise ValueError("a grid layout cannot be truncated to a prefix (prefix_ok must be False)")
        elif self.grid is not None:
            raise ValueError("seq layout takes no grid")

    # ---- constructors, one per kind -------------------------------------------------------------------------
    @classmethod
    def _with_layout(cls, kind: str, sizes: tuple[int, ...], grid, length, prefix_ok, code_dim) -> TokenSpec:
        if (grid is None) == (length is None):
            raise ValueError("give exactly one of grid=(h, w) or length=L")
        if grid is not None:
            return cls(kind, sizes, "grid", grid[0] * grid[1], tuple(grid), False, code_dim)
        return cls(kind, sizes, "seq", int(length), None, prefix_ok, code_dim)

    @classmethod
    def vocab(cls, size: int, *, grid=None, length=None, prefix_ok=False, code_dim=0) -> TokenSpec:
        """One vocabulary of ``size`` entries per position (VQ, FSQ)."""
        return cls._with_layout("vocab", (size,), grid, length, prefix_ok, code_dim)

    @classmethod
    def subvocab(cls, sizes, *, grid=None, length=None, prefix_ok=False, code_dim=0) -> TokenSpec:
        """G sub-vocabularies per position (group LFQ; sizes may differ, as in asymmetric factorization)."""
        return cls._with_layout("subvocab", tuple(sizes), grid, length, prefix_ok, code_dim)

    @classmethod
    def bits(cls, num_bits: int, *, grid=None, length=None, prefix_ok=False, code_dim=0) -> TokenSpec:
        """K binary digits per position (binary latents)."""
        return cls._with_layout("bits", (2,) * num_bits, grid, length, prefix_ok, code_dim)

    @classmethod
    def bins(cls, num_dims: int, num_bins: int, *, grid=None, length=None, prefix_ok=False, code_dim=0) -> TokenSpec:
        """D dimensions × B bins per position (dimension-wise post-training quantization)."""
        return cls._with_layout("bins", (num_bins,) * num_dims, grid, length, prefix_ok, code_dim)

    # ---- derived facts --------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """Indices per position: 1 for ``vocab``, else G, K or D."""
        return len(self.vocab_sizes)

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one image's tokens: (L,) for ``vocab``, (L, C) otherwise."""
        return (self.length,) if self.kind == "vocab" else (self.length, self.channels)

    @property
    def bits_per_token(self) -> float:
        return float(sum(math.log2(v) for v in self.vocab_sizes))

    def bits_per_image(self, num_tokens: int | None = None) -> float:
        return self.bits_per_token * (self.length if num_tokens is None else num_tokens)

    def validate(self, tokens: torch.Tensor, name: str = "tokens") -> None:
        """Raise a clear error if ``tokens`` do not fit this spec (dtype, shape, range)."""
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name} must be an integer tensor, got {tokens.dtype}")
        want = 2 if self.kind == "vocab" else 3
        if tokens.ndim != want or (want == 3 and tokens.shape[2] != self.channels):
            raise ValueError(f"{name} must have shape (B, L{'' if want == 2 else f', {self.channels}'}) "
                             f"for a '{self.kind}' spec, got {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if n != self.length and not (self.prefix_ok and 1 <= n <= self.length):
            allowed = f"1..{self.length}" if self.prefix_ok else str(self.length)
            raise ValueError(f"{name} has {n} positions; this tokenizer takes {allowed}")
        sizes = torch.tensor(self.vocab_sizes, device=tokens.device)
        if tokens.numel() and (tokens.min() < 0 or (tokens.view(*tokens.shape[:2], -1) >= sizes).any()):
            raise ValueError(f"{name} has indices outside the vocabulary sizes {self.vocab_sizes}")

    # ---- (de)serialization for config.json ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vocab_sizes"] = list(self.vocab_sizes)
        d["grid"] = list(self.grid) if self.grid else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenSpec:
        d = dict(d)
        d["vocab_sizes"] = tuple(d["vocab_sizes"])
        d["grid"] = tuple(d["grid"]) if d.get("grid") else None
        return cls(**d)
