"""Next-X prediction (xAR; Ren et al. 2025, "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation") on the LlamaGen backbone: the unit of prediction is an entity X (``entities.py``: token, cell k×k,
subsample, scale, image); the model is causal over entities and predicts all tokens of an entity in parallel.

Two sequence layouts (``layout``), with M entities E_0..E_{M-1} of N_m tokens each. Both use a learned query
vector q and a learned embedding pos[i] of each target token i ("which token does this slot predict"), and both
are block-causal over entities, so the prediction of E_m depends on earlier entities only (tested by perturbation).

``layout="shift"`` (xAR/VAR style; needs entities of equal size N: token, cell k×k, subsample, image):

    [prefix (P)] [Q_0] [content E_0 .. E_{M-2}]          (P + L positions)

- Q_0: N slots q + pos[token j of E_0]; their outputs predict E_0 (there is no previous entity to shift from).
- content slot j of E_{m-1} = embedding of E_{m-1}'s token j + pos[token j of E_m]; its output predicts token j of
  E_m (slot-aligned shift, like next-token prediction where token i's output predicts token i + 1).
- attention: block b = 0 is Q_0, block m is the content of E_{m-1}; a block sees the prefix, every earlier block
  and all of itself (so content sees Q_0, in training and decoding alike); the prefix is causal.
- RoPE: Q_0 at E_0's grid coordinates, a content token at its own token's coordinates (as in the GPT).
- one decoding step feeds N tokens (the previous entity's content), so next-cell does the linear-layer work of
  next-token in 1/N of the steps.

``layout="query"`` (our "content + query" layout; any entity sizes, required for ``scale``):

    [prefix (P)] [content E_0 .. E_{M-2}] [queries Q_0 .. Q_{M-1}]          (P + 2L - N_{M-1} positions)

- content tokens carry what is known of an entity (its embeddings, without pos); query Q_m has one slot
  q + pos[token] per token of E_m and its outputs predict E_m.
- attention: content of E_m sees the prefix and the content of E_0..E_m; query Q_m sees the prefix, the content of
  E_0..E_{m-1} and the other slots of Q_m; nothing sees a query.
- RoPE: a content token and a query slot sit at their token's grid coordinates.
- one decoding step feeds 2N tokens (content E_{m-1} + queries Q_m): twice the linear-layer work of "shift".

``layout="auto"`` (default) picks "shift" when all entities have the same size and "query" otherwise (scale);
asking for "shift" with unequal sizes is an error. Folders saved before this option existed load as "query".

Two entity heads:
- ``entity_head="discrete"``: the TokenSpec kind's head (``heads/``) classifies every token of the entity from the
  output that predicts it; contexts are the clean tokens (teacher forcing).
- ``entity_head="flow"``: the flow-matching head (``heads/flow.py``) regresses each token's continuous code vector
  (the tokenizer's code embedding for ``vocab`` — set with ``set_codebook`` — ±1 bits for ``bits``, dequantized
  values for ``bins``) from the output that predicts it. **Noisy Context Learning**: in training every context entity is
  replaced by its flow-matching interpolant x_t = t·x₁ + (1 − t)·ε at its own t ~ U(0, 1) (one t per image and
  entity), and its content token also receives an embedding of t; so the model never sees clean ground truth
  context and learns to work from imperfect context (no teacher forcing). At inference each entity is sampled by
  ``flow_steps`` Euler steps (CFG on the velocity), snapped to the nearest code (so the tokenizer can decode it),
  and fed back as clean context (t = 1).

Generation uses the static KV cache (P + L positions) and one step per entity. shift: step 0 feeds [prefix, Q_0],
step m the content of E_{m-1} (N new positions each; the layout and its mask are built once per call). query: the
prefix is prefilled, then step m feeds [content E_{m-1}, queries Q_m] and the next chunk overwrites the query
slots. ``use_cache=False`` recomputes the whole sequence each step (the reference the tests compare with).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vistok.generators.entities import build_entities
from vistok.generators.gpt import GPT, _init_weights, rope_coords
from vistok.generators.heads.flow import FlowMatchingHead, timestep_embedding
from vistok.generators.sampling import check_per_subtoken, guidance_plan, uses_guidance
from vistok.registry import register

PREFIX, CONTENT, QUERY = 0, 1, 2


@register("generator", "xar")
class XAR(GPT):
    """entity: an entity name or ``{"name": "cell", "size": 2}`` (``entities.build_entities``);
    entity_head: "discrete" or "flow"; flow: options of ``FlowMatchingHead`` (width, depth, batch_mul);
    flow_steps: Euler steps per entity at sampling; noisy_context: Noisy Context Learning (flow head only);
    layout: "shift", "query" or "auto" (shift for entities of equal size, else query; see the module docstring).
    The other arguments are the GPT's (token-shuffle is not combined with next-X: window is 1)."""

    default_cfg_schedule = "linear"  # xAR's: the scale rises linearly across entities, 1 → cfg

    def __init__(self, token_spec: dict, num_classes: int, dim: int = 256, depth: int = 6, heads: int = 8,
                 class_dropout: float = 0.1, dropout: float = 0.0, class_names: list[str] | None = None,
                 conditioning: str | dict = "class", head: dict | None = None, entity: str | dict = "cell",
                 entity_head: str = "discrete", flow: dict | None = None, flow_steps: int = 25,
                 noisy_context: bool = True, layout: str = "auto") -> None:
        super().__init__(token_spec, num_classes, dim, depth, heads, class_dropout, dropout, class_names,
                         conditioning, head)
        if entity_head not in ("discrete", "flow"):
            raise ValueError(f"entity_head must be 'discrete' or 'flow', got {entity_head!r}")
        self.entity_head, self.flow_steps, self.noisy_context = entity_head, int(flow_steps), bool(noisy_context)
        self.entities = build_entities(self.spec, entity)
        self.sizes = [len(e) for e in self.entities]
        equal = len(set(self.sizes)) == 1
        if layout == "auto":
            layout = "shift" if equal else "query"
        if layout not in ("shift", "query"):
            raise ValueError(f"layout must be 'shift', 'query' or 'auto', got {layout!r}")
        if layout == "shift" and not equal:
            raise ValueError(f"layout 'shift' needs entities of equal size, got sizes {sorted(set(self.sizes))} "
                             f"for entity {entity!r}; use layout='query'")
        self.layout = layout
        self.register_buffer("order", torch.cat(self.entities), persistent=False)  # (L,) generation order
        L = self.spec.length
        # per token (raster index): its entity; per sequence segment we read coordinates from the GPT's layout
        ent = torch.empty(L, dtype=torch.long)
        for m, e in enumerate(self.entities):
            ent[e] = m
        self.register_buffer("entity_of", ent, persistent=False)
        self.register_buffer("token_coords", rope_coords(self.spec, self.num_prefix)[self.num_prefix:],
                             persistent=False)  # (L, n_axes)
        self.query = nn.Parameter(torch.zeros(dim))
        self.query_pos = nn.Parameter(torch.zeros(L, dim))
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.query_pos, std=0.02)
        if entity_head == "flow":
            code_dim = self._code_dim()
            if self.spec.kind == "vocab":
                self.register_buffer("codebook", torch.zeros(self.spec.vocab_sizes[0], code_dim))
            self.content_proj = nn.Linear(code_dim, dim, bias=False)
            self.time_proj = nn.Linear(256, dim, bias=False)
            self.content_proj.apply(_init_weights)
            self.time_proj.apply(_init_weights)
            self.flow = FlowMatchingHead(code_dim, dim, **(flow or {}))
        elif flow:
            raise ValueError("flow options are given but entity_head is 'discrete'")

    @classmethod
    def _from_pretrained(cls, **kwargs: Any) -> XAR:
        kwargs.setdefault("layout", "query")  # folders saved before ``layout`` existed were trained in this layout
        return super()._from_pretrained(**kwargs)

    # ---- continuous codes --------------------------------------------------------------------------------------
    def _code_dim(self) -> int:
        if self.spec.kind == "vocab":
            if not self.spec.code_dim:
                raise ValueError("the flow head regresses code vectors: this 'vocab' TokenSpec has code_dim 0")
            return self.spec.code_dim
        if self.spec.kind in ("bits", "bins"):
            return self.spec.channels
        raise ValueError(f"the flow head has no code vectors for TokenSpec kind {self.spec.kind!r}; use "
                         "entity_head='discrete'")

    def set_codebook(self, codes: torch.Tensor) -> None:
        """The tokenizer's code vectors (V, code_dim) for a ``vocab`` spec (the targets the flow head regresses)."""
        self.codebook.copy_(codes.to(self.codebook))

    def token_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "vocab":
            return self.codebook[tokens.long()]
        return self.head.token_codes(tokens)

    def nearest_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "vocab":
            flat = codes.reshape(-1, codes.shape[-1]).to(self.codebook.dtype)
            return torch.cdist(flat, self.codebook).argmin(-1).view(codes.shape[:-1])
        return self.head.nearest_tokens(codes)

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
        vectors plus an embedding of their flow time t (B, n) (flow; t = 1 is clean)."""
        if self.entity_head == "discrete":
            return self.head.embed(tokens_or_codes)
        if t is None:
            t = torch.ones(tokens_or_codes.shape[:2], device=tokens_or_codes.device)
        temb = timestep_embedding(t.flatten(), 256).view(*t.shape, 256).to(self.content_proj.weight.dtype)
        return self.content_proj(tokens_or_codes.to(self.content_proj.weight.dtype)) + self.time_proj(temb)

    def _queries(self, token_idx: torch.Tensor, batch: int) -> torch.Tensor:
        return (self.query + self.query_pos[token_idx]).expand(batch, -1, -1)  # (B, n, dim)

    # ---- training ----------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | list[str]) -> Any:
        from vistok.generators.gpt import GeneratorOutput

        self.spec.validate(tokens)
        if tokens.shape[1] != self.spec.length:
            raise ValueError(f"next-X models train on full token maps of {self.spec.length}, got {tokens.shape[1]}")
        tokens = tokens.long()
        B, M, L = tokens.shape[0], len(self.entities), self.spec.length
        prefix = self.condition_prefix(labels, B, tokens.device)
        P = prefix.shape[1]
        ctx_tok = self.order[:L - self.sizes[-1]]  # context: E_0 .. E_{M-2}, in generation order
        targets = tokens[:, self.order]  # (B, L[, C]) in generation order == order of the predicting outputs
        if self.entity_head == "discrete":
            content = self._content(tokens[:, ctx_tok])
        else:
            x1 = self.token_codes(tokens[:, ctx_tok]).float()  # (B, n_ctx, code_dim)
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
        ordered = torch.cat(out, dim=1)  # (B, L[, C]) in generation order
        result = torch.empty_like(ordered)
        result[:, self.order] = ordered
        return result

    @torch.no_grad()
    def generate(self, labels, num_tokens=None, cfg_scale=1.0, cfg_schedule=None, temperature=1.0, top_k=0,
                 top_p=1.0, generator=None, use_cache=True, guidance=None, cfg_interval=-1) -> torch.Tensor:
        """Sample tokens (B, L[, C]), one entity per step (see ``GPT.generate`` for the arguments; the CFG schedule
        defaults to xAR's linear rise across entities; for the flow head, temperature scales the initial noise and
        top-k/top-p do not apply)."""
        check_per_subtoken(self.spec.kind, len(self.spec.vocab_sizes), temperature=temperature, top_k=top_k,
                           top_p=top_p)

        def choose(m, h_cond, h_uncond, scale):
            B, n = h_cond.shape[:2]
            hu = None if h_uncond is None else h_uncond.flatten(0, 1)
            if self.entity_head == "flow":
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
        forced logits (discrete head, (B, L, ...)) or the query hidden states (flow head, (B, L, dim), the
        conditional branch). Compares the cached and the full-recompute paths."""
        tokens = tokens.long()
        trace: list[torch.Tensor] = []

        def choose(m, h_cond, h_uncond, scale):
            ent_tokens = tokens[:, self.entities[m].to(tokens.device)]
            B, n = h_cond.shape[:2]
            if self.entity_head == "flow":
                trace.append(h_cond)
            else:
                hu = None if h_uncond is None else h_uncond.flatten(0, 1)
                lg = self.head.forced_logits(h_cond.flatten(0, 1), hu, scale, ent_tokens.flatten(0, 1))
                trace.append(lg.view(B, n, *lg.shape[1:]))
            return ent_tokens

        self._decode(labels, None, cfg_scale, cfg_schedule, use_cache, guidance, choose, cfg_interval)
        ordered = torch.cat(trace, dim=1)
        result = torch.empty_like(ordered)
        result[:, self.order] = ordered
        return result

    step_logits = step_outputs
