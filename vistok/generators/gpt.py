"""A LlamaGen-style class-conditional GPT (Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for
Scalable Image Generation") whose input embedding and output head come from the tokenizer's :class:`TokenSpec`.

The backbone is Llama: pre-norm blocks of RMSNorm → causal self-attention with RoPE → RMSNorm → SwiGLU, no
biases, a final RMSNorm. Everything that depends on what a token *is* lives in the head (``heads/``, chosen by
``spec.kind``); the condition is a prefix of P embedded tokens from a registered conditioning module.

Sequence and targets (P = the conditioning's prefix length, 1 for class labels, L tokens):

    input    [c_0 .. c_{P-1}] [t_0 .. t_{L-2}]      P + L - 1 positions
    predicts            t_0    t_1 .. t_{L-1}       hidden at position P-1+i predicts t_i

RoPE coordinates (``rope_coords``): a grid layout uses 2D RoPE with token (r, c) at (r + P, c + P) and prefix token
p at the diagonal point (p, p); a seq layout uses 1D RoPE with token i at P + i and prefix token p at p. So the
prefix (0, 0) sits one step before the first row and column of the image on both axes and no image token shares
its coordinates (LlamaGen instead gives the class token an all-zero rotation table; we keep a proper rotation).

Token-shuffle (``window`` s > 1, ``shuffle.py``): the sequence holds one fused token per s×s window instead of one
per token, and each hidden state is split into the s² predictions of the next window; the RoPE grid is then the
window grid (h/s, w/s). s = 1 is plain next-token prediction.

Conditions are class labels (B,) or, for a text conditioning, a list of B prompts (``conditioning.py``).

Generation (``generate``) uses a static KV cache (gpt-fast style, ``kv_cache.py``): ``new_cache`` → ``prefill``
(prefix) → ``decode_step`` per token; classifier-free guidance runs the conditional and the unconditional (null
condition) rows as one doubled batch and lets the head combine them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.generators.conditioning import Conditioning
from vistok.generators.heads.base import TokenHead, build_head
from vistok.generators.kv_cache import KVCache
from vistok.generators.sampling import check_per_subtoken, guidance_plan, uses_guidance
from vistok.generators.shuffle import TokenShuffle, check_window, from_windows, to_windows
from vistok.hub import PretrainedModel
from vistok.layers import RMSNorm, RoPE, TransformerBlock
from vistok.registry import build, lookup, register
from vistok.spec import TokenSpec

# LlamaGen's sizes (GPT-B/L/XL/XXL); gpt_tiny is for CPU tests and demos.
GPT_SIZES: dict[str, dict[str, int]] = {
    "gpt_tiny": {"dim": 256, "depth": 6, "heads": 8},
    "gpt_b": {"dim": 768, "depth": 12, "heads": 12},
    "gpt_l": {"dim": 1024, "depth": 24, "heads": 16},
    "gpt_xl": {"dim": 1280, "depth": 36, "heads": 20},
    "gpt_xxl": {"dim": 1536, "depth": 48, "heads": 24},
}


@dataclass
class GeneratorOutput:
    """A training forward's result. loss: the scalar to minimize (the sum of ``losses``); losses: named scalar
    losses; stats: named detached scalars for logging."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def rope_coords(spec: TokenSpec, num_prefix: int, window: int = 1) -> torch.Tensor:
    """Integer RoPE coordinates (P + L/s², n_axes) of the sequence [prefix, tokens (or s×s windows)]; see the
    module docstring."""
    P, L = num_prefix, spec.length // (window * window)
    if spec.layout == "grid":
        h, w = spec.grid[0] // window, spec.grid[1] // window
        rows = torch.arange(h).repeat_interleave(w)  # (L,) raster order: row-major
        cols = torch.arange(w).repeat(h)  # (L,)
        tokens = torch.stack([rows, cols], dim=1) + P  # (L, 2)
        prefix = torch.arange(P)[:, None].expand(P, 2)  # (P, 2): (p, p)
    else:
        tokens = (torch.arange(L) + P)[:, None]  # (L, 1)
        prefix = torch.arange(P)[:, None]  # (P, 1)
    return torch.cat([prefix, tokens]).long()


@register("generator", "gpt")
class GPT(PretrainedModel):
    """Class-conditional autoregressive generator over any TokenSpec that has a head.

    token_spec: ``TokenSpec.to_dict()`` of the tokenizer whose tokens this models.
    class_dropout: probability of replacing the condition by the null condition in training (LlamaGen: 0.1).
    dropout: on input embeddings, attention weights and residual branches.
    conditioning: a registered conditioning name, or a config section ``{"name": ..., **options}``; ``dim`` and
        ``num_classes`` are passed to it when its constructor takes them.
    head: options of the TokenSpec kind's head (e.g. ``{"factorized_layers": 2}`` for ``subvocab``).
    window: token-shuffle window s (1 = next-token; 2 or 4 merge s×s tokens per step).
    size: a named size of ``GPT_SIZES`` (``gpt_b``, …) for dim/depth/heads; any of the three given explicitly wins
        (default without a size: ``gpt_tiny``).
    """

    default_cfg_schedule = "constant"  # LlamaGen's; ``generate(cfg_schedule=None)`` uses the model's default

    def __init__(self, token_spec: dict, num_classes: int, dim: int | None = None, depth: int | None = None,
                 heads: int | None = None, class_dropout: float = 0.1, dropout: float = 0.0,
                 class_names: list[str] | None = None, conditioning: str | dict = "class", head: dict | None = None,
                 window: int = 1, size: str | None = None) -> None:
        super().__init__()
        dim, depth, heads = resolve_size(size, dim=dim, depth=depth, heads=heads)
        self.spec = TokenSpec.from_dict(token_spec)
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.num_classes, self.class_names = num_classes, list(class_names) if class_names else None
        self.dim, self.depth, self.heads = dim, depth, heads
        self.class_dropout = class_dropout

        self.cond: Conditioning = _build_conditioning(conditioning, dim=dim, num_classes=num_classes)
        self.head: TokenHead = build_head(self.spec, dim, **(head or {}))
        check_window(self.spec.grid, window)
        self.window = int(window)
        self.shuffle = TokenShuffle(dim, self.window) if self.window > 1 else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.rope = RoPE(dim // heads, n_axes=2 if self.spec.layout == "grid" else 1)
        # (P + L, n_axes) integer coordinates; an int buffer, so .to(dtype) leaves it alone; not saved.
        self.register_buffer("coords", rope_coords(self.spec, self.cond.num_prefix, self.window), persistent=False)

        self.apply(_init_weights)
        self.head.init_weights()

    @property
    def token_spec(self) -> TokenSpec:
        return self.spec

    @property
    def num_prefix(self) -> int:
        return self.cond.num_prefix

    @property
    def conditions_on_text(self) -> bool:
        """True when conditions are prompts (a list of strings) rather than class labels."""
        return bool(getattr(self.cond, "takes_text", False))

    # ---- token-shuffle layout: units of s² tokens (s = 1: one token per unit) --------------------------------
    def to_units(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n, *rest) tokens in raster order -> (B, n/s², s², *rest) in generation order."""
        if self.window == 1:
            return tokens[:, :, None]
        return to_windows(tokens, self.spec.grid, self.window)

    def from_units(self, units: torch.Tensor) -> torch.Tensor:
        """(B, U, s², *rest) -> (B, U·s², *rest) in raster order; the inverse of ``to_units``."""
        if self.window == 1:
            return units.flatten(1, 2)
        return from_windows(units, self.spec.grid, self.window)

    def embed_units(self, units: torch.Tensor) -> torch.Tensor:
        """(B, U, s²[, C]) tokens -> (B, U, dim) backbone inputs (the head's embedding, fused when s > 1)."""
        if self.window == 1:
            return self.head.embed(units[:, :, 0])
        B, U = units.shape[:2]
        emb = self.head.embed(units.flatten(1, 2)).view(B, U, self.window ** 2, self.dim)
        return self.shuffle.shuffle(emb)

    def unit_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., dim) backbone output per unit -> (..., s², dim) one hidden state per token it predicts."""
        return hidden[..., None, :] if self.window == 1 else self.shuffle.unshuffle(hidden)

    # ---- backbone -----------------------------------------------------------------------------------------------
    def backbone(self, x: torch.Tensor, start: int = 0, cache: list[KVCache] | None = None,
                 coords: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings x (B, T, dim) at sequence positions start..start+T-1 -> final-normed hidden (B, T, dim).
        Without a cache, causal attention over x alone (start must then be 0); with one, over the cache too.
        ``coords`` (T, n_axes) and a bool ``mask`` (T, start+T) override the causal layout (next-X models)."""
        T = x.shape[1]
        if coords is None:
            if start + T > self.coords.shape[0]:
                raise ValueError(f"positions {start}..{start + T - 1} exceed the sequence length "
                                 f"{self.coords.shape[0]}")
            coords = self.coords[start:start + T]
        if cache is None and start != 0:
            raise ValueError("without a KV cache the input must start at position 0")
        cos, sin = self.rope(coords, x.dtype)  # each (T, head_dim/2), float32 or float64
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if cache is None else cache[i], start, mask)
        return self.norm(x)

    # ---- training -----------------------------------------------------------------------------------------------
    def condition_prefix(self, labels: torch.Tensor | list[str], batch: int, device: torch.device) -> torch.Tensor:
        """The (B, P, dim) prefix, with each condition dropped (null) with probability ``class_dropout`` in
        training mode."""
        drop = None
        if self.training and self.class_dropout > 0:
            drop = torch.rand(batch, device=device) < self.class_dropout  # (B,) bool
        return self.cond(labels, drop)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | list[str]) -> GeneratorOutput:
        """Next-token (next-window) loss of tokens (B, n[, C]) given conditions ``labels`` (B,) (or B prompts);
        n == L, or 1..L for prefix_ok specs. In training mode each condition is replaced by the null one with
        probability ``class_dropout``."""
        self.spec.validate(tokens)
        tokens = tokens.long()
        prefix = self.condition_prefix(labels, tokens.shape[0], tokens.device)  # (B, P, dim)
        units = self.to_units(tokens)  # (B, U, s²[, C])
        x = torch.cat([prefix, self.embed_units(units[:, :-1])], dim=1)  # (B, P + U - 1, dim)
        hidden = self.backbone(x)[:, prefix.shape[1] - 1:]  # (B, U, dim): position P-1+i predicts unit i
        hidden = self.unit_hidden(hidden).flatten(1, 2)  # (B, U·s², dim), in unit order like the targets
        loss, stats = self.head.loss(hidden, units.flatten(1, 2))
        return GeneratorOutput(loss=loss, losses={self.head.loss_name: loss}, stats=stats)

    # ---- generation -----------------------------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """A fresh static KV cache (one :class:`KVCache` per block) for ``batch`` rows and ``max_len`` positions."""
        p = next(self.parameters())
        return [KVCache(batch, max_len, self.heads, self.dim // self.heads, dtype or p.dtype, p.device)
                for _ in self.blocks]

    def prefill(self, cond_prefix_embeddings: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """Run the prefix (B, P, dim) through the model, filling positions 0..P-1 of ``cache``; returns the last
        position's hidden state (B, dim), which predicts token 0."""
        return self.backbone(cond_prefix_embeddings, 0, cache)[:, -1]

    def decode_step(self, token_embedding: torch.Tensor, position: int, cache: list[KVCache]) -> torch.Tensor:
        """One token's embedding (B, 1, dim) at sequence position ``position`` (token i sits at P + i) attending
        over the cache; returns its hidden state (B, dim), which predicts the next token."""
        if token_embedding.ndim == 2:
            token_embedding = token_embedding[:, None]  # (B, dim) -> (B, 1, dim)
        return self.backbone(token_embedding, position, cache)[:, -1]

    @torch.no_grad()
    def generate(self, labels: torch.Tensor | list[str], num_tokens: int | None = None, cfg_scale: float = 1.0,
                 cfg_schedule: str | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 guidance: bool | None = None, cfg_interval: int = -1) -> torch.Tensor:
        """Sample tokens (B, n[, C]) for conditions ``labels`` (B,) (or B prompts for a text conditioning).

        num_tokens: n, default the spec's length; shorter only for ``prefix_ok`` specs.
        cfg_scale, cfg_schedule: classifier-free guidance (``sampling.cfg_scale_at``; None: the model's
            ``default_cfg_schedule``), by batch doubling, per decoding step (a token, or a token-shuffle window).
        cfg_interval: LlamaGen's ``cfg_interval`` (``sampling.cfg_guided_at``): -1 guides every step; c >= 0
            guides steps 0..c+1 and samples the rest from the conditional logits alone.
        For ``subvocab`` tokens cfg_scale, temperature, top_k and top_p may be lists, one value per sub-token
        (Open-MAGVIT2's per-sub-token sampling settings).
        temperature (0 = greedy), top_k (0 = off), top_p (1 = off): see ``sampling.sample_logits``.
        generator: a ``torch.Generator`` on the model's device; the same seed gives the same tokens.
        use_cache: False recomputes the whole sequence at every step (the slow reference path).
        guidance: run the unconditional branch; None (default) does so iff ``cfg_scale != 1``.
        """
        check_per_subtoken(self.spec.kind, len(self.spec.vocab_sizes), temperature=temperature, top_k=top_k,
                           top_p=top_p)

        def choose(i: int, h_cond: torch.Tensor, h_uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
            # h (B, s², dim): the s² tokens of a unit are sampled together (one head call on B·s² rows)
            B, n = h_cond.shape[:2]
            flat_u = None if h_uncond is None else h_uncond.flatten(0, 1)
            tok = self.head.sample(h_cond.flatten(0, 1), flat_u, scale, temperature, top_k, top_p, generator)
            return tok.view(B, n, *tok.shape[1:])

        return self._decode(labels, num_tokens, cfg_scale, cfg_schedule, use_cache, guidance, choose, cfg_interval)

    @torch.no_grad()
    def step_logits(self, labels: torch.Tensor | list[str], tokens: torch.Tensor, cfg_scale: float = 1.0,
                    cfg_schedule: str | None = None, use_cache: bool = True,
                    guidance: bool | None = None, cfg_interval: int = -1) -> torch.Tensor:
        """The (guided) logits (B, n, ...) that ``generate`` samples each token from, with the given tokens
        (B, n[, C]) forced instead of sampled (``TokenHead.forced_logits``: (B, n, V) for ``vocab``, (B, n, C,
        V_max) otherwise): runs the exact decoding loop of ``generate``, so the cached and the full-recompute
        paths can be compared step by step."""
        trace: list[torch.Tensor] = []
        units = self.to_units(tokens.long())  # (B, U, s²[, C])

        def choose(i: int, h_cond: torch.Tensor, h_uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
            B, n = h_cond.shape[:2]
            flat_u = None if h_uncond is None else h_uncond.flatten(0, 1)
            logits = self.head.forced_logits(h_cond.flatten(0, 1), flat_u, scale, units[:, i].flatten(0, 1))
            trace.append(logits.view(B, n, *logits.shape[1:]))
            return units[:, i]

        self._decode(labels, tokens.shape[1], cfg_scale, cfg_schedule, use_cache, guidance, choose, cfg_interval)
        return self.from_units(torch.stack(trace, dim=1))

    def _decode(self, labels: torch.Tensor, num_tokens: int | None, cfg_scale: float, cfg_schedule: str | None,
                use_cache: bool, guidance: bool | None,
                choose: Callable[[int, torch.Tensor, torch.Tensor | None, float], torch.Tensor],
                cfg_interval: int = -1) -> torch.Tensor:
        """The one decoding loop behind ``generate`` and ``step_logits``: one step per unit (a token, or an s×s
        window); ``choose(i, h_cond, h_uncond, scale)`` returns unit i's tokens (B, s²[, C]) from the hidden
        states (B, s², dim) that predict them (``h_uncond`` is None on unguided steps)."""
        n = self._check_num_tokens(num_tokens) // (self.window ** 2)  # decoding steps
        check_per_subtoken(self.spec.kind, len(self.spec.vocab_sizes), cfg_scale=cfg_scale)
        plan = guidance_plan(n, cfg_scale, cfg_schedule or self.default_cfg_schedule, cfg_interval)
        B = len(labels)
        guided = uses_guidance(cfg_scale) if guidance is None else guidance
        prefix = self.cond(labels)  # (B, P, dim)
        if guided:  # rows 0..B-1 conditional, B..2B-1 unconditional
            prefix = torch.cat([prefix, self.cond.null(B).to(prefix.dtype)])  # (2B, P, dim)
        P = prefix.shape[1]
        if use_cache:
            cache = self.new_cache(prefix.shape[0], P + n - 1)
            hidden = self.prefill(prefix, cache)  # (B or 2B, dim)
        else:
            seq = prefix
            hidden = self.backbone(seq)[:, -1]
        out = []
        for i in range(n):
            per_token = self.unit_hidden(hidden)  # (B or 2B, s², dim)
            scale, guided_now = plan[i]
            unit = choose(i, per_token[:B], per_token[B:] if guided and guided_now else None, scale)
            out.append(unit)
            if i == n - 1:
                break
            x = self.embed_units(unit[:, None])  # (B, 1, s²[, C]) -> (B, 1, dim)
            if guided:
                x = torch.cat([x, x])  # both branches continue with the same token: (2B, 1, dim)
            if use_cache:
                hidden = self.decode_step(x, P + i, cache)
            else:
                seq = torch.cat([seq, x], dim=1)  # (B or 2B, P + i + 1, dim)
                hidden = self.backbone(seq)[:, -1]
        return self.from_units(torch.stack(out, dim=1))  # (B, n) or (B, n, C), raster order

    def _check_num_tokens(self, num_tokens: int | None) -> int:
        L = self.spec.length
        if num_tokens is None or num_tokens == L:
            return L
        if not self.spec.prefix_ok:
            raise ConfigError(f"num_tokens={num_tokens}: this tokenizer's tokens are always {L} long "
                              "(only prefix_ok specs can be cut short)")
        if not 1 <= num_tokens <= L:
            raise ConfigError(f"num_tokens must be in 1..{L}, got {num_tokens}")
        return int(num_tokens)


def resolve_size(size: str | None, **given: int | None) -> tuple[int, int, int]:
    """(dim, depth, heads) of the named ``size`` (``gpt_tiny`` when None), with the explicitly given ones winning."""
    if size is not None and size not in GPT_SIZES:
        raise ConfigError(f"unknown GPT size {size!r}; choose one of {sorted(GPT_SIZES)}")
    named = GPT_SIZES[size or "gpt_tiny"]
    dim, depth, heads = (given[k] if given.get(k) is not None else named[k] for k in ("dim", "depth", "heads"))
    return int(dim), int(depth), int(heads)


def gpt(size: str, **kwargs: Any) -> GPT:
    """A GPT of a named size (``GPT_SIZES``), e.g. ``gpt("gpt_b", token_spec=spec.to_dict(), num_classes=1000)``."""
    return GPT(size=size, **kwargs)


def _build_conditioning(cfg: str | dict, **available: Any) -> Conditioning:
    """Build a registered conditioning, passing it those of ``available`` that its constructor takes."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    params = inspect.signature(lookup("conditioning", cfg.get("name", ""))).parameters
    return build("conditioning", cfg, **{k: v for k, v in available.items() if k in params and k not in cfg})


def _init_weights(module: nn.Module) -> None:
    """LlamaGen's init: normal(0, 0.02) for every Linear and Embedding (no biases exist)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
