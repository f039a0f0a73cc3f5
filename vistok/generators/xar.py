"""Next-X prediction (xAR; Ren et al. 2025, "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation", arXiv 2502.20388, github.com/OliverRensu/xAR) on the LlamaGen backbone: the unit of prediction is an
entity X (``entities.py``: token, cell k×k, subsample, scale, image); the model is causal over entities and produces
all tokens of an entity together. M entities E_0..E_{M-1} of N_m tokens each, in generation order.

Three entity heads (``entity_head``):

``"flow"`` — xAR as its paper and official code build it (models/xar.py, models/sampler.py): **the transformer is the
denoiser**. Every token carries a continuous code vector x (``token_codes``: the tokenizer's VQ code for ``vocab``,
standardized by the codebook's mean and spread when ``code_norm``; ±1 for ``bits``; the dequantized value for
``bins``), and the sequence is the entities themselves, [E_0 .. E_{M-1}] (no prefix token):

- input: Linear(x) + a learned position embedding, RMSNorm; 2D RoPE at each token's grid coordinates;
- blocks: the GPT's Llama blocks with xAR's AdaLN: shift/scale/gate of both sub-layers from
  c = condition + TimestepEmbedder(t of the token's entity) (``AdaLNBlock``); the condition is the conditioning's
  prefix averaged over its P tokens (the class embedding for class labels; the null one for CFG);
- attention: block-causal — a token attends to every token of its own entity and of earlier entities;
- output: final RMSNorm, Linear -> the velocity of each token.

Training (Noisy Context Learning): each image and entity draws its own t ~ logit-normal(0, 1) and noise ε,
x_t = (1 − t)·x + t·ε; the whole noised sequence goes through the transformer once and the loss is the MSE to the
velocities v = ε − x of every entity. So entity m is denoised from earlier entities that are themselves noisy (at
their own levels): the model never sees clean context in training (no teacher forcing).

Sampling: entity by entity; entity m starts from ε ~ N(0, I) (times ``temperature``) and takes ``flow_steps``
Euler–Maruyama steps from t = 1 to 0.04 and a last deterministic step to 0 (``heads.flow.euler_maruyama``). Its
first step feeds [E_{m-1} clean (t = 0), E_m noisy], which writes E_{m-1} into the KV cache; later steps feed E_m
alone, attending to the cache and to itself. The tokens of an entity interact at every denoising step. CFG doubles
the batch with the null condition and guides the velocity; its scale rises linearly across entities by default
(``cfg_i = 1 + (cfg − 1)·i/(M − 1)``). The sampled codes are snapped to the nearest token for the tokenizer, while
the raw sample is what the next entity sees as context (as in xAR). ``use_cache=False`` recomputes
[E_0 .. E_{m-1} clean, E_m noisy] at every step (the reference the tests compare with). ``flow_steps`` default 50.

``"flow_mlp"`` — a per-token design (MAR's diffusion head on an AR backbone): the backbone's output for a token
conditions a small AdaLN MLP (``heads.flow.FlowMatchingHead``) that regresses that token's code by flow matching,
each token of an entity independently given the backbone output. Context entities are content tokens (a projection
of their codes plus an embedding of their flow time); in training each is replaced by x_t = t·x + (1 − t)·ε at its
own t ~ U(0, 1) (Noisy Context Learning, ``noisy_context``); at inference each entity is sampled by ``flow_steps``
Euler steps (default 25) of the head, snapped to the nearest code and fed back clean (t = 1).

``"discrete"`` — the TokenSpec kind's head (``heads/``) classifies every token of the entity; clean context
(teacher forcing).

``"auto"`` (default) is ``"flow"`` when the tokens have code vectors (``vocab`` with a code_dim, ``bits``,
``bins``) and ``"discrete"`` otherwise (``subvocab``).

The two query-based heads (flow_mlp, discrete) use one of two sequence layouts (``layout``). Both use a learned
query vector q and a learned embedding pos[i] of each target token i ("which token does this slot predict"), and
both are block-causal over entities, so the prediction of E_m depends on earlier entities only.

``layout="shift"`` (xAR/VAR style; needs entities of equal size N: token, cell k×k, subsample, image):

    [prefix (P)] [Q_0] [content E_0 .. E_{M-2}]          (P + L positions)

- Q_0: N slots q + pos[token j of E_0]; their outputs predict E_0 (there is no previous entity to shift from).
- content slot j of E_{m-1} = embedding of E_{m-1}'s token j + pos[token j of E_m]; its output predicts token j of
  E_m (slot-aligned shift, like next-token prediction where token i's output predicts token i + 1).
- attention: block b = 0 is Q_0, block m is the content of E_{m-1}; a block sees the prefix, every earlier block
  and all of itself; the prefix is causal.
- RoPE: Q_0 at E_0's grid coordinates, a content token at its own token's coordinates (as in the GPT).
- one decoding step feeds N tokens (the previous entity's content).

``layout="query"`` (our "content + query" layout; any entity sizes, required for ``scale``):

    [prefix (P)] [content E_0 .. E_{M-2}] [queries Q_0 .. Q_{M-1}]          (P + 2L - N_{M-1} positions)

- content tokens carry what is known of an entity (its embeddings, without pos); query Q_m has one slot
  q + pos[token] per token of E_m and its outputs predict E_m.
- attention: content of E_m sees the prefix and the content of E_0..E_m; query Q_m sees the prefix, the content of
  E_0..E_{m-1} and the other slots of Q_m; nothing sees a query.
- one decoding step feeds 2N tokens (content E_{m-1} + queries Q_m).

``layout="auto"`` picks "shift" when all entities have the same size and "query" otherwise (scale). The flow head
has no layout (its sequence is the entities). Folders saved before ``layout`` existed load as "query", and folders
saved when ``entity_head: flow`` meant the per-token head load as ``flow_mlp``.

Generation for the query-based heads uses the static KV cache and one step per entity: shift feeds [prefix, Q_0]
then the content of E_{m-1}; query prefills the prefix, then feeds [content E_{m-1}, queries Q_m] and the next
chunk overwrites the query slots.

The backbone's size and the other GPT options come by keyword (``size: gpt_b`` or ``dim``/``depth``/``heads``,
``conditioning``, ``class_dropout``, …; see ``GPT``); token-shuffle (``window``) is not combined with next-X.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.generators.entities import build_entities
from vistok.generators.gpt import GPT, GeneratorOutput, _init_weights, rope_coords
from vistok.generators.heads.bins import dequantized_bin_values
from vistok.generators.heads.flow import (
    TimestepEmbedder,
    euler_maruyama,
    logit_normal,
    timestep_embedding,
)
from vistok.generators.sampling import check_per_subtoken, guidance_plan, uses_guidance
from vistok.layers import RMSNorm, TransformerBlock
from vistok.registry import build, register

PREFIX, CONTENT, QUERY = 0, 1, 2
ENTITY_HEADS = ("auto", "flow", "flow_mlp", "discrete")
T_MIN = 0.04  # xAR's last SDE time before the final deterministic step to 0


class AdaLNBlock(TransformerBlock):
    """The GPT's Llama block with xAR's AdaLN: SiLU → Linear(dim, 6·dim) of the condition gives the gates, scales
    and shifts of both sub-layers, x += γ₁·attn(norm(x)·(1 + a₁) + b₁); x += γ₂·mlp(norm(x)·(1 + a₂) + b₂)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__(dim, heads, dropout)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cond: torch.Tensor,
                groups: torch.Tensor, cache=None, start: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """cond (B, G, dim): one condition per group of tokens; groups (T,): each token's group."""
        mod = self.ada_lin(cond)[:, groups]  # per group, then gathered per token: (B, T, 6·dim)
        gate1, gate2, scale1, scale2, shift1, shift2 = mod.chunk(6, dim=-1)  # xAR's order
        h = self.attention(self.attention_norm(x) * (1 + scale1) + shift1, cos, sin, cache, start, mask)
        x = x + self.drop(h * gate1)
        return x + self.drop(self.feed_forward(self.ffn_norm(x) * (1 + scale2) + shift2) * gate2)


def _xavier(module: nn.Module) -> None:
    """xAR's init of its own layers (JAX ViT's): xavier-uniform weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register("generator", "xar")
class XAR(GPT):
    """entity: an entity name or ``{"name": "cell", "size": 2}`` (``entities.build_entities``);
    entity_head: "auto", "flow", "flow_mlp" or "discrete" (module docstring);
    flow: options of the flow_mlp head (registered ``entity_head``, ``FlowMatchingHead``: width, depth, batch_mul);
    flow_steps: sampling steps per entity (default 50 for flow, xAR's Euler–Maruyama; 25 Euler steps for flow_mlp);
    noisy_context: Noisy Context Learning for flow_mlp (the flow head's is built in);
    layout: "shift", "query" or "auto" for the query-based heads;
    code_norm: standardize VQ code vectors by the codebook's mean and spread (flow heads; ``vocab`` tokens);
    gpt: the GPT's options by keyword (``size``, ``dim``, ``depth``, ``heads``, ``class_dropout``, ``dropout``,
    ``class_names``, ``conditioning``, ``head``)."""

    default_cfg_schedule = "linear"  # xAR's: the scale rises linearly across entities, 1 → cfg

    def __init__(self, token_spec: dict, num_classes: int, *, entity: str | dict = "cell", entity_head: str = "auto",
                 flow: dict | None = None, flow_steps: int | None = None, noisy_context: bool = True,
                 layout: str = "auto", code_norm: bool = True, **gpt: Any) -> None:
        if gpt.get("window", 1) != 1:
            raise ConfigError(f"xar: window={gpt['window']}: token-shuffle is not combined with next-X prediction; "
                              "leave window at 1 (use entity: cell for groups of neighbouring tokens)")
        super().__init__(token_spec, num_classes, **gpt)
        if entity_head not in ENTITY_HEADS:
            raise ConfigError(f"xar: entity_head must be one of {ENTITY_HEADS}, got {entity_head!r}")
        if entity_head == "auto":
            entity_head = "flow" if self._has_codes() else "discrete"
        self.entity_head, self.noisy_context, self.code_norm = entity_head, bool(noisy_context), bool(code_norm)
        self.flow_steps = int(flow_steps if flow_steps is not None else 50 if entity_head == "flow" else 25)
        L, dim = self.spec.length, self.dim
        with torch.device("cpu"):  # index bookkeeping, also when the model is built on the meta device
            self.entities = build_entities(self.spec, entity)
            ent = torch.empty(L, dtype=torch.long)  # per token (raster index): its entity
            for m, e in enumerate(self.entities):
                ent[e] = m
            coords = rope_coords(self.spec, self.num_prefix)[self.num_prefix:]  # (L, n_axes)
        self.sizes = [len(e) for e in self.entities]
        self.register_buffer("order", torch.cat(self.entities), persistent=False)  # (L,) generation order
        self.register_buffer("entity_of", ent, persistent=False)
        self.register_buffer("token_coords", coords, persistent=False)
        if entity_head != "discrete":
            code_dim = self._code_dim()
            if self.spec.kind == "vocab":  # the targets, filled by set_codebook from the tokenizer
                self.register_buffer("codebook", torch.zeros(self.spec.vocab_sizes[0], code_dim))
            if self.spec.kind == "bins":
                kind = (gpt.get("head") or {}).get("bin_values", "gaussian")
                self.register_buffer("bin_values", dequantized_bin_values(self.spec.vocab_sizes[0], kind),
                                     persistent=False)
        if entity_head == "flow":
            if flow:
                raise ConfigError("xar: `flow` options configure the per-token head; with entity_head 'flow' the "
                                  "transformer is the denoiser (set flow_steps, or entity_head: flow_mlp)")
            if not noisy_context:
                raise ConfigError("xar: noisy_context=false: with entity_head 'flow' every context entity is noised "
                                  "by construction (the denoised sequence is the context); use flow_mlp to turn it off")
            if layout != "auto":
                raise ConfigError(f"xar: layout={layout!r} applies to the query-based heads (flow_mlp, discrete); "
                                  "the flow head's sequence is the entities themselves")
            self.layout = "entities"
            self._build_denoiser(code_dim)
            return
        equal = len(set(self.sizes)) == 1
        if layout == "auto":
            layout = "shift" if equal else "query"
        if layout not in ("shift", "query"):
            raise ValueError(f"layout must be 'shift', 'query' or 'auto', got {layout!r}")
        if layout == "shift" and not equal:
            raise ValueError(f"layout 'shift' needs entities of equal size, got sizes {sorted(set(self.sizes))} "
                             f"for entity {entity!r}; use layout='query'")
        self.layout = layout
        self.query = nn.Parameter(torch.zeros(dim))
        self.query_pos = nn.Parameter(torch.zeros(L, dim))
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.query_pos, std=0.02)
        if entity_head == "flow_mlp":
            self.content_proj = nn.Linear(code_dim, dim, bias=False)
            self.time_proj = nn.Linear(256, dim, bias=False)
            self.content_proj.apply(_init_weights)
            self.time_proj.apply(_init_weights)
            self.flow = build("entity_head", {**(flow or {}), "name": entity_head}, code_dim=code_dim, cond_dim=dim)
        elif flow:
            raise ValueError("flow options are given but entity_head is 'discrete'")

    def _build_denoiser(self, code_dim: int) -> None:
        """xAR's denoising transformer: the GPT's blocks with AdaLN, an input projection of the code vectors with
        a learned position embedding, a timestep embedder and a velocity output; the kind head is not used."""
        dim, L = self.dim, self.spec.length
        self.head = None  # the sequence carries code vectors, not token embeddings, and predicts velocities
        self.blocks = nn.ModuleList(AdaLNBlock(dim, self.heads, self.drop.p) for _ in range(self.depth))
        self.blocks.apply(_init_weights)  # LlamaGen's init for the shared Llama layers
        self.z_proj = nn.Linear(code_dim, dim)
        self.z_norm = RMSNorm(dim)
        self.pos_embed = nn.Parameter(torch.zeros(L, dim))  # per generation-order position, like xAR's
        nn.init.normal_(self.pos_embed, std=0.02)
        self.time_embed = TimestepEmbedder(dim)
        self.pred = nn.Linear(dim, code_dim)
        for module in (self.z_proj, self.time_embed, self.pred, *(b.ada_lin for b in self.blocks)):
            module.apply(_xavier)
        seq_entity = self.entity_of[self.order]  # (L,) the entity of each sequence position
        self.register_buffer("seq_entity", seq_entity, persistent=False)
        self.register_buffer("seq_coords", self.token_coords[self.order], persistent=False)
        # block-causal: position i may attend position j iff j's entity is i's or an earlier one
        self.register_buffer("seq_mask", seq_entity[None, :] <= seq_entity[:, None], persistent=False)
        self.offsets = [0, *itertools.accumulate(self.sizes)]  # entity m spans positions offsets[m]..offsets[m+1]

    @classmethod
    def _from_pretrained(cls, **kwargs: Any) -> XAR:
        kwargs.pop("_vistok", None)  # the hub mixin hands the whole config to an __init__ that takes **kwargs
        kwargs.setdefault("layout", "query")  # folders saved before ``layout`` existed were trained in this layout
        if kwargs.get("entity_head") == "flow" and _has_key(kwargs.get("model_id"), "flow.input_proj.weight"):
            # saved when entity_head 'flow' meant the per-token head, which regressed raw codes
            kwargs.update(entity_head="flow_mlp", code_norm=False)
        return super()._from_pretrained(**kwargs)

    # ---- continuous codes --------------------------------------------------------------------------------------
    def _has_codes(self) -> bool:
        return (self.spec.kind == "vocab" and bool(self.spec.code_dim)) or self.spec.kind in ("bits", "bins")

    def _code_dim(self) -> int:
        if self.spec.kind == "vocab":
            if not self.spec.code_dim:
                raise ValueError("the flow heads regress code vectors: this 'vocab' TokenSpec has code_dim 0; use "
                                 "entity_head='discrete'")
            return self.spec.code_dim
        if self.spec.kind in ("bits", "bins"):
            return self.spec.channels
        raise ValueError(f"the flow heads have no code vectors for TokenSpec kind {self.spec.kind!r}; use "
                         "entity_head='discrete'")

    def set_codebook(self, codes: torch.Tensor) -> None:
        """The tokenizer's code vectors (V, code_dim) for a ``vocab`` spec (the targets the flow heads regress)."""
        self.codebook.copy_(codes.to(self.codebook))

    def _code_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and one overall spread of the codebook (a single scale keeps nearest-code search
        the same in both spaces); identity without ``code_norm``."""
        if not self.code_norm:
            return torch.zeros_like(self.codebook[0]), torch.ones_like(self.codebook[0, 0])
        mean = self.codebook.mean(0)
        return mean, (self.codebook - mean).pow(2).mean().sqrt().clamp_min(1e-6)

    def _normalized_codebook(self) -> torch.Tensor:
        mean, std = self._code_stats()
        return (self.codebook - mean) / std

    def token_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n[, C]) -> the vectors the flow heads regress (B, n, code_dim)."""
        if self.spec.kind == "vocab":
            return self._normalized_codebook()[tokens.long()]
        if self.spec.kind == "bits":
            return tokens.float() * 2 - 1  # the binary latent itself
        return self.bin_values[tokens.long()]  # bins: the dequantized (normalized) values

    def nearest_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """The inverse of ``token_codes``: the tokens of the nearest codes (Voronoi assignment)."""
        if self.spec.kind == "vocab":
            book = self._normalized_codebook()
            flat = codes.reshape(-1, codes.shape[-1]).to(book.dtype)
            return torch.cdist(flat, book).argmin(-1).view(codes.shape[:-1])
        if self.spec.kind == "bits":
            return (codes > 0).long()
        return (codes[..., None] - self.bin_values).abs().argmin(-1)

    # ---- the flow head: xAR's denoising transformer -------------------------------------------------------------
    def condition_vector(self, labels: torch.Tensor | list[str], drop: torch.Tensor | None = None) -> torch.Tensor:
        """The AdaLN condition (B, dim): the conditioning's prefix averaged over its P tokens."""
        return self.cond(labels, drop).mean(1)

    def denoise(self, x_t: torch.Tensor, cond: torch.Tensor, groups: torch.Tensor, start: int = 0,
                cache: list | None = None) -> torch.Tensor:
        """Velocities (B, T, code_dim) of x_t (B, T, code_dim) at sequence positions start..start+T-1, with one
        AdaLN condition per group, cond (B, G, dim), groups (T,); block-causal over the whole sequence up to
        start + T (earlier positions from ``cache``; without a cache start must be 0)."""
        T = x_t.shape[1]
        end = start + T
        if cache is None and start != 0:
            raise ValueError("without a KV cache the input must start at position 0")
        h = self.z_norm(self.z_proj(x_t.to(self.z_proj.weight.dtype)) + self.pos_embed[start:end])
        cos, sin = self.rope(self.seq_coords[start:end], h.dtype)
        mask = self.seq_mask[start:end, :end]
        h = self.drop(h)
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, cond, groups, None if cache is None else cache[i], start, mask)
        return self.pred(self.norm(h))

    def _flow_loss(self, tokens: torch.Tensor, labels: torch.Tensor | list[str]) -> GeneratorOutput:
        B, M = tokens.shape[0], len(self.entities)
        x = self.token_codes(tokens)[:, self.order].to(self.z_proj.weight.dtype)  # (B, L, C) generation order
        # in eval mode fixed draws, so that a model's evaluation loss is a deterministic number
        gen = None if self.training else torch.Generator(x.device).manual_seed(0)
        t = logit_normal((B, M), generator=gen, device=x.device).to(x.dtype)  # one time per image and entity
        tt = t[:, self.seq_entity, None]  # (B, L, 1)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x_t = (1 - tt) * x + tt * noise  # xAR's path: t = 1 is noise
        drop = None
        if self.training and self.class_dropout > 0:
            drop = torch.rand(B, device=x.device) < self.class_dropout
        cond = self.condition_vector(labels, drop)[:, None] + self.time_embed(t)  # (B, M, dim)
        v = self.denoise(x_t, cond, self.seq_entity)
        loss = F.mse_loss(v.float(), (noise - x).float())
        return GeneratorOutput(loss=loss, losses={"flow": loss}, stats={})

    def _flow_decode(self, labels, cfg_scale, cfg_schedule, cfg_interval, use_cache, guidance, temperature=1.0,
                     generator=None, forced: torch.Tensor | None = None, probe: bool = False) -> torch.Tensor:
        """Entity-by-entity sampling; returns codes (B, L, code_dim) in generation order. ``forced`` (B, L, C) in
        generation order replaces each sampled entity as the context of the next; ``probe`` returns instead, per
        entity, the guided velocity of its first step (t = 1) at x = 0, with the earlier entities forced."""
        M = len(self.entities)
        plan = guidance_plan(M, cfg_scale, cfg_schedule or self.default_cfg_schedule, cfg_interval)
        B = len(labels)
        guided = uses_guidance(cfg_scale) if guidance is None else guidance
        c = self.condition_vector(labels)
        if guided:
            c = torch.cat([c, self.cond.null(B).mean(1).to(c.dtype)])
        rows, dtype, C = c.shape[0], c.dtype, self._code_dim()
        cache = self.new_cache(rows, self.spec.length) if use_cache else None
        clean_t = self.time_embed(torch.zeros(1, device=c.device))  # context entities are clean: t = 0
        offsets = self.offsets
        context: list[torch.Tensor] = []  # clean codes of the entities so far (rows, N_j, C)
        out: list[torch.Tensor] = []
        for m in range(M):
            a, b, n = offsets[m], offsets[m + 1], self.sizes[m]
            scale, guide_now = plan[m]

            def velocity(x: torch.Tensor, t: float, i: int, a: int = a, n: int = n, scale: float = scale,
                         guide_now: bool = guide_now) -> torch.Tensor:
                xx = torch.cat([x, x]) if guided else x
                cond = torch.stack([c + clean_t, c + self.time_embed(torch.full((1,), t, device=c.device))], 1)
                if use_cache:  # the first step writes the previous entity (clean) into the cache
                    prev = context[-1:] if i == 0 else []
                    start = a - (prev[0].shape[1] if prev else 0)
                else:  # recompute: every earlier entity, clean, then this one
                    prev, start = context, 0
                inp = torch.cat([*prev, xx], dim=1)
                groups = (torch.arange(inp.shape[1], device=c.device) >= inp.shape[1] - n).long()
                v = self.denoise(inp, cond, groups, start, cache)[:, -n:]
                if not guided:
                    return v
                v_cond, v_uncond = v.chunk(2)
                return v_uncond + scale * (v_cond - v_uncond) if guide_now else v_cond

            if probe:
                x = velocity(torch.zeros(B, n, C, device=c.device, dtype=dtype), 1.0, 0)
            else:
                noise = torch.randn((B, n, C), generator=generator, device=c.device, dtype=dtype)
                x = euler_maruyama(velocity, temperature * noise, self.flow_steps, T_MIN, generator)
            out.append(x)
            nxt = forced[:, a:b].to(dtype) if forced is not None else x
            context.append(torch.cat([nxt, nxt]) if guided else nxt)
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def sample_codes(self, labels, cfg_scale: float = 1.0, cfg_schedule: str | None = None,
                     temperature: float = 1.0, generator: torch.Generator | None = None, use_cache: bool = True,
                     guidance: bool | None = None, cfg_interval: int = -1) -> torch.Tensor:
        """The flow head's samples (B, L, code_dim) in raster order, before snapping to tokens."""
        if self.entity_head != "flow":
            raise ValueError(f"sample_codes is the flow head's sampler; this model's entity_head is "
                             f"{self.entity_head!r}")
        codes = self._flow_decode(labels, cfg_scale, cfg_schedule, cfg_interval, use_cache, guidance, temperature,
                                  generator)
        return self._to_raster(codes)

    def _to_raster(self, ordered: torch.Tensor) -> torch.Tensor:
        result = torch.empty_like(ordered)
        result[:, self.order] = ordered
        return result

    # ---- layout ------------------------------------------------------------------------------------------------
    def _shift_layout(self, P: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE coordinates (P + L, n_axes) and block-causal mask (P + L, P + L) of the shift sequence
        [prefix][Q_0][content E_0 .. E_{M-2}]; decoding slices both."""
        L, N = self.spec.length, self.sizes[0]
        device = self.order.device
        coords = torch.cat([self.coords[:P], self.token_coords[self.order[:N]], self.token_coords[self.order[:L - N]]])
        block = torch.cat([torch.arange(-P, 0, device=device), torch.arange(L, device=device) // N])
        return coords, block[None, :] <= block[:, None]  # row i may attend column j iff block[j] <= block[i]

    def _segments(self, content: int, queries: list[int], P: int) -> dict[str, torch.Tensor]:
        """Query layout: labels of [prefix P][content of entities 0..content-1][query slots of ``queries``]:
        kind, entity and raster token index per position (-1 in the prefix), and RoPE coordinates."""
        device = self.order.device
        tok_c = torch.cat([self.entities[m] for m in range(content)]).to(device) if content else \
            torch.zeros(0, dtype=torch.long, device=device)
        tok_q = torch.cat([self.entities[m] for m in queries]).to(device)
        kind = torch.cat([torch.full((P,), PREFIX), torch.full((len(tok_c),), CONTENT),
                          torch.full((len(tok_q),), QUERY)]).to(device)
        tok = torch.cat([torch.full((P,), -1, device=device), tok_c, tok_q])
        ent = torch.where(tok >= 0, self.entity_of[tok.clamp_min(0)], -1)
        coords = torch.cat([self.coords[:P], self.token_coords[tok_c], self.token_coords[tok_q]])
        return {"kind": kind, "entity": ent, "token": tok, "coords": coords}

    @staticmethod
    def _mask(seg: dict[str, torch.Tensor], rows: slice = slice(None)) -> torch.Tensor:
        """Query layout: block-causal attention (rows × all positions; True = may attend)."""
        rk, re = seg["kind"][rows, None], seg["entity"][rows, None]
        ck, ce = seg["kind"][None], seg["entity"][None]
        pos = torch.arange(len(seg["kind"]), device=rk.device)
        rp, cp = pos[rows, None], pos[None]
        return (((ck == PREFIX) & ((rk != PREFIX) | (cp <= rp)))
                | ((ck == CONTENT) & (rk == CONTENT) & (ce <= re))
                | ((ck == CONTENT) & (rk == QUERY) & (ce < re))
                | ((ck == QUERY) & (rk == QUERY) & (ce == re)))

    def _content(self, tokens_or_codes: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Content embeddings (B, n, dim): the kind head's token embedding (discrete), or a projection of code
        vectors plus an embedding of their flow time t (B, n) (flow_mlp; t = 1 is clean)."""
        if self.entity_head == "discrete":
            return self.head.embed(tokens_or_codes)
        if t is None:
            t = torch.ones(tokens_or_codes.shape[:2], device=tokens_or_codes.device)
        temb = timestep_embedding(t.flatten(), 256).view(*t.shape, 256).to(self.content_proj.weight.dtype)
        return self.content_proj(tokens_or_codes.to(self.content_proj.weight.dtype)) + self.time_proj(temb)

    def _queries(self, token_idx: torch.Tensor, batch: int) -> torch.Tensor:
        return (self.query + self.query_pos[token_idx]).expand(batch, -1, -1)  # (B, n, dim)

    # ---- training ----------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | list[str]) -> GeneratorOutput:
        """The training loss of full token maps (B, L[, C]): the flow head's velocity MSE over all entities, the
        per-token flow-matching loss (flow_mlp) or the kind head's likelihood (discrete)."""
        self.spec.validate(tokens)
        if tokens.shape[1] != self.spec.length:
            raise ValueError(f"next-X models train on full token maps of {self.spec.length}, got {tokens.shape[1]}")
        tokens = tokens.long()
        if self.entity_head == "flow":
            return self._flow_loss(tokens, labels)
        B, M, L = tokens.shape[0], len(self.entities), self.spec.length
        prefix = self.condition_prefix(labels, B, tokens.device)
        P = prefix.shape[1]
        ctx_tok = self.order[:L - self.sizes[-1]]  # context: E_0 .. E_{M-2}, in generation order
        targets = tokens[:, self.order]  # (B, L[, C]) in generation order == order of the predicting outputs
        if self.entity_head == "discrete":
            content = self._content(tokens[:, ctx_tok])
        else:
            x1 = self.token_codes(tokens[:, ctx_tok])  # (B, n_ctx, code_dim)
            x1 = x1.to(torch.promote_types(x1.dtype, torch.float32))
            t = torch.ones(B, len(ctx_tok), device=tokens.device)
            if self.noisy_context and self.training:  # Noisy Context Learning: one t per image and entity
                t = torch.rand(B, M, device=tokens.device)[:, self.entity_of[ctx_tok]]
                x1 = t[..., None] * x1 + (1 - t[..., None]) * torch.randn_like(x1)
            content = self._content(x1, t)
        if self.layout == "shift":  # [prefix][Q_0][content E_0 .. E_{M-2} + pos of the token each slot predicts]
            N = self.sizes[0]
            x = torch.cat([prefix, self._queries(self.order[:N], B), content + self.query_pos[self.order[N:]]], 1)
            coords, mask = self._shift_layout(P)
            hidden = self.backbone(x, coords=coords, mask=mask)[:, P:]  # (B, L, dim)
        else:  # [prefix][content E_0 .. E_{M-2}][Q_0 .. Q_{M-1}]
            seg = self._segments(M - 1, list(range(M)), P)
            x = torch.cat([prefix, content, self._queries(self.order, B)], dim=1)
            hidden = self.backbone(x, coords=seg["coords"], mask=self._mask(seg))[:, P + len(ctx_tok):]  # (B, L, dim)
        if self.entity_head == "discrete":
            loss, stats = self.head.loss(hidden, targets)
            return GeneratorOutput(loss=loss, losses={self.head.loss_name: loss}, stats=stats)
        loss = self.flow.loss(hidden.flatten(0, 1), self.token_codes(targets).flatten(0, 1).to(hidden.dtype))
        return GeneratorOutput(loss=loss, losses={"flow": loss}, stats={})

    # ---- generation --------------------------------------------------------------------------------------------
    def _decode(self, labels, num_tokens, cfg_scale, cfg_schedule, use_cache, guidance,
                choose: Callable[[int, torch.Tensor, torch.Tensor | None, float], torch.Tensor],
                cfg_interval: int = -1) -> torch.Tensor:
        """One step per entity; ``choose(m, h_cond (B, N_m, dim), h_uncond, scale)`` returns entity m's tokens
        (B, N_m[, C]); returns the tokens in raster order. The CFG schedule runs over entities (default linear)."""
        if num_tokens not in (None, self.spec.length):
            raise ValueError(f"next-X models generate all {self.spec.length} tokens (num_tokens={num_tokens})")
        M = len(self.entities)
        check_per_subtoken(self.spec.kind, len(self.spec.vocab_sizes), cfg_scale=cfg_scale)
        plan = guidance_plan(M, cfg_scale, cfg_schedule or self.default_cfg_schedule, cfg_interval)
        B = len(labels)
        guided = uses_guidance(cfg_scale) if guidance is None else guidance
        prefix = self.cond(labels)
        if guided:
            prefix = torch.cat([prefix, self.cond.null(B).to(prefix.dtype)])
        P, rows = prefix.shape[1], prefix.shape[0]
        if use_cache:
            cache = self.new_cache(rows, P + self.spec.length)
        if self.layout == "shift":  # the layout, its mask and the entities' indices, once per call
            N = self.sizes[0]
            coords, mask = self._shift_layout(P)
            ents = self.order.view(M, N)  # (M, N): entity m's raster token indices
            q0 = self._queries(ents[0], rows).to(prefix.dtype)
        elif use_cache:
            self.backbone(prefix, 0, cache, coords=self.coords[:P])
        contents: list[torch.Tensor] = []  # content embeddings of the entities generated so far
        out: list[torch.Tensor] = []
        for m in range(M):
            if self.layout == "shift":  # [prefix, Q_0, content E_0 .. E_{m-1}] up to position end
                end = P + (m + 1) * N
                if use_cache:  # step 0 feeds [prefix, Q_0], step m the content of E_{m-1}
                    new = torch.cat([prefix, q0], dim=1) if m == 0 else contents[-1]
                    start = end - new.shape[1]
                    hidden = self.backbone(new, start, cache, coords=coords[start:end], mask=mask[start:end, :end])
                else:
                    x = torch.cat([prefix, q0, *contents], dim=1)
                    hidden = self.backbone(x, coords=coords[:end], mask=mask[:end, :end])
            else:
                seg = self._segments(m, [m], P)
                queries = self._queries(self.entities[m].to(prefix.device), rows).to(prefix.dtype)
                if use_cache:
                    # [content of the previous entity, queries of this one]; the queries' cache slots are
                    # overwritten by the next chunk, so the cache only keeps prefix + content
                    chunk = torch.cat(contents[-1:] + [queries], dim=1)
                    start = len(seg["kind"]) - chunk.shape[1]
                    hidden = self.backbone(chunk, start, cache, coords=seg["coords"][start:],
                                           mask=self._mask(seg, slice(start, None)))
                else:
                    x = torch.cat([prefix, *contents, queries], dim=1)
                    hidden = self.backbone(x, coords=seg["coords"], mask=self._mask(seg))
            h = hidden[:, -self.sizes[m]:]
            ent_tokens = choose(m, h[:B], h[B:] if guided and plan[m][1] else None, plan[m][0])
            out.append(ent_tokens)
            if m < M - 1:
                ctx = ent_tokens if self.entity_head == "discrete" else self.token_codes(ent_tokens)
                c = self._content(ctx)
                if self.layout == "shift":  # slot j of E_m predicts token j of E_{m+1}
                    c = c + self.query_pos[ents[m + 1]]
                c = c.to(prefix.dtype)
                contents.append(torch.cat([c, c]) if guided else c)
        return self._to_raster(torch.cat(out, dim=1))  # (B, L[, C]) generation order -> raster order

    @torch.no_grad()
    def generate(self, labels, num_tokens=None, cfg_scale=1.0, cfg_schedule=None, temperature=1.0, top_k=0,
                 top_p=1.0, generator=None, use_cache=True, guidance=None, cfg_interval=-1) -> torch.Tensor:
        """Sample tokens (B, L[, C]), one entity at a time (see ``GPT.generate`` for the arguments; the CFG
        schedule defaults to xAR's linear rise across entities; for the flow heads temperature scales the initial
        noise and top-k/top-p do not apply)."""
        check_per_subtoken(self.spec.kind, len(self.spec.vocab_sizes), temperature=temperature, top_k=top_k,
                           top_p=top_p)
        if self.entity_head == "flow":
            if num_tokens not in (None, self.spec.length):
                raise ValueError(f"next-X models generate all {self.spec.length} tokens (num_tokens={num_tokens})")
            codes = self.sample_codes(labels, cfg_scale, cfg_schedule, temperature, generator, use_cache, guidance,
                                      cfg_interval)
            return self.nearest_tokens(codes)

        def choose(m, h_cond, h_uncond, scale):
            B, n = h_cond.shape[:2]
            hu = None if h_uncond is None else h_uncond.flatten(0, 1)
            if self.entity_head == "flow_mlp":
                codes = self.flow.sample(h_cond.flatten(0, 1), hu, scale, self.flow_steps, temperature, generator)
                tok = self.nearest_tokens(codes)
            else:
                tok = self.head.sample(h_cond.flatten(0, 1), hu, scale, temperature, top_k, top_p, generator)
            return tok.view(B, n, *tok.shape[1:])

        return self._decode(labels, num_tokens, cfg_scale, cfg_schedule, use_cache, guidance, choose, cfg_interval)

    @torch.no_grad()
    def step_outputs(self, labels, tokens: torch.Tensor, cfg_scale: float = 1.0, cfg_schedule: str | None = None,
                     use_cache: bool = True, guidance: bool | None = None, cfg_interval: int = -1) -> torch.Tensor:
        """With ``tokens`` forced, what each decoding step computes for every token, in raster order: the guided
        forced logits (discrete head, (B, L, ...)), the query hidden states (flow_mlp, (B, L, dim), the
        conditional branch), or the guided velocity of each entity's first denoising step at t = 1 from x = 0 with
        the earlier entities forced to ``tokens``' codes (flow, (B, L, code_dim)). Compares the cached and the
        full-recompute paths."""
        tokens = tokens.long()
        if self.entity_head == "flow":
            forced = self.token_codes(tokens)[:, self.order]
            v = self._flow_decode(labels, cfg_scale, cfg_schedule, cfg_interval, use_cache, guidance,
                                  forced=forced, probe=True)
            return self._to_raster(v)
        trace: list[torch.Tensor] = []

        def choose(m, h_cond, h_uncond, scale):
            ent_tokens = tokens[:, self.entities[m].to(tokens.device)]
            B, n = h_cond.shape[:2]
            if self.entity_head == "flow_mlp":
                trace.append(h_cond)
            else:
                hu = None if h_uncond is None else h_uncond.flatten(0, 1)
                lg = self.head.forced_logits(h_cond.flatten(0, 1), hu, scale, ent_tokens.flatten(0, 1))
                trace.append(lg.view(B, n, *lg.shape[1:]))
            return ent_tokens

        self._decode(labels, None, cfg_scale, cfg_schedule, use_cache, guidance, choose, cfg_interval)
        return self._to_raster(torch.cat(trace, dim=1))

    step_logits = step_outputs


def _has_key(folder: str | None, key: str) -> bool:
    """Whether the weights of a local ``save_pretrained`` folder hold ``key``."""
    weights = Path(folder) / "model.safetensors" if folder else None
    if weights is None or not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return key in list(f.keys())
