"""The adapter bridge, for every TokenSpec kind (``vocab``, ``subvocab``, ``bits``, ``bins``): no vocabulary growth
beyond four markers; images enter through a projector and leave through a vistok token head.

- In (LLaVA's ``mlp2x_gelu`` projector; Janus's ``gen_aligner``; UniTok's ``TokenEmbedder`` → projector): each image
  position holds an ``<img>`` placeholder id whose input embedding is replaced by ``projector(code vector)``. The code
  vector is the frozen tokenizer's code for the position's indices (``quantizer.indices_to_codes``: one vector for a
  group LFQ position's G sub-codes, a binary position's K bits, a PTQ position's D bins), or, with
  ``features="semantic"`` on a dual-codebook tokenizer, the semantic half of its code (TokenFlow's understanding
  input).
- Out (Janus's ``gen_head``, UniTok's ``AR_head``): the registered vistok head for the spec's kind
  (``vistok.generators.heads``; built by ``build_head``) reads the LLM's last hidden state (after its final norm) at
  the position before each slot and scores / samples that slot's token: a softmax for ``vocab``, per-group softmaxes
  with Open-MAGVIT2's intra-token transformer for ``subvocab``, Bernoulli bits, TokenBridge's dimension-wise head.
- An image: ``<boi> <img>×n <eoi>`` (n = L, or a chosen prefix for ``prefix_ok`` tokenizers); the LLM's own position
  encoding orders the slots.
- ``window`` s > 1 (grid tokenizers): Token-Shuffle (Ma et al. 2025, "Token-Shuffle: Towards High-Resolution Image
  Generation with Autoregressive Models", arXiv 2504.17789, which applies it to a Llama MLLM): each s×s window of
  the grid fills one slot. In: the s² projected codes are compressed, concatenated and fused (the generator's
  ``TokenShuffle``); out: the slot's hidden state is split into s² hidden states, each scored by the head, so the
  s² tokens of a window are drawn together. An image costs L/s² LLM positions instead of L (Qwen2-VL's 2×2 merge
  and InternVL's pixel shuffle shorten understanding inputs the same way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.generators.heads import build_head
from vistok.generators.shuffle import TokenShuffle, check_window, from_windows, to_windows
from vistok.layers import RMSNorm
from vistok.mllm.bridges.base import BOI, EOI, UNCOND, Bridge
from vistok.registry import register
from vistok.spec import TokenSpec

IMG = "<img>"


@register("mllm_bridge", "adapter")
class AdapterBridge(Bridge):
    """code_dim: width of the code vectors (given by the MLLM); projector_depth: Linear layers of the projector
    (LLaVA 2: Linear-GELU-Linear); head: options of the token head (e.g. ``{factorized_layers: 1}``); window:
    Token-Shuffle window (1: one slot per token; 2: one slot per 2×2 window of a grid); output_norm: an RMSNorm on
    the slot embeddings whose gain starts at the RMS of the LLM's own input embeddings (``match_embedding_scale``),
    so that image slots enter at the scale of text tokens (unnormalized, a fresh projector's outputs were ~20× larger
    than SmolLM2's embeddings and dominated the residual stream)."""

    uses_embeddings_only = False

    def __init__(self, spec: TokenSpec, hidden_size: int, code_dim: int, projector_depth: int = 2,
                 head: dict[str, Any] | None = None, window: int = 1, output_norm: bool = True) -> None:
        super().__init__(spec, hidden_size)
        check_window(spec.grid, int(window))
        self.window, self.per_slot = int(window), int(window) ** 2
        self.shuffle = TokenShuffle(hidden_size, self.window) if self.window > 1 else None
        layers: list[nn.Module] = [nn.Linear(code_dim, hidden_size)]
        for _ in range(projector_depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        self.projector = nn.Sequential(*layers)
        self.output_norm = RMSNorm(hidden_size) if output_norm else None
        self.head = build_head(spec, hidden_size, **(head or {}))
        for m in self.head.modules():  # the GPT's generic init, then the head's own (zero output layers)
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.head.init_weights()

    def added_tokens(self) -> list[str]:
        return [BOI, EOI, UNCOND, IMG]

    def bind(self, token_ids: dict[str, int]) -> None:
        super().bind(token_ids)
        self.boi, self.eoi, self.uncond, self.img = (token_ids[t] for t in (BOI, EOI, UNCOND, IMG))

    def image_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.boi] + [self.img] * (tokens.shape[0] // self.per_slot) + [self.eoi])

    def check_tokens(self, tokens: torch.Tensor) -> None:
        super().check_tokens(tokens)
        if tokens.shape[0] % self.per_slot:
            raise ConfigError(f"{tokens.shape[0]} image tokens do not fill {self.window}×{self.window} windows")

    # ---- slots: one token (window 1) or the s² tokens of a window, in generation order --------------------------
    def to_slots(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n[, C]) tokens in raster order -> (B, n/s², s²[, C])."""
        return tokens[:, :, None] if self.window == 1 else to_windows(tokens, self.spec.grid, self.window)

    def from_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, U, s²[, C]) -> (B, U·s²[, C]) in raster order (the inverse of ``to_slots``)."""
        return slots.flatten(1, 2) if self.window == 1 else from_windows(slots, self.spec.grid, self.window)

    def project_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, U, s²[, C]) tokens -> (B, U, hidden) input embeddings: frozen codes, projector, fused windows."""
        B, U = slots.shape[:2]
        codes = self.codes(slots.flatten(1, 2)).to(self.projector[0].weight.dtype)
        embeds = self.projector(codes)
        if self.window > 1:
            embeds = self.shuffle.shuffle(embeds.view(B, U, self.per_slot, -1))
        return embeds if self.output_norm is None else self.output_norm(embeds)

    @torch.no_grad()
    def match_embedding_scale(self, embeddings: torch.Tensor) -> None:
        """Start the output norm's gain at the root-mean-square of the LLM's input embedding rows (V, hidden)."""
        if self.output_norm is not None:
            self.output_norm.weight.fill_(float(embeddings.float().pow(2).mean().sqrt()))

    def slot_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) states before N slots -> (N, s², hidden): one per token of each slot."""
        return hidden[:, None] if self.window == 1 else self.shuffle.unshuffle(hidden)

    def image_token_label_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.img

    @property
    def interior_ids(self) -> torch.Tensor:
        return torch.tensor([self.img, self.eoi])

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n[, C]) in raster order -> input embeddings (B, n/s², hidden), one per slot."""
        return self.project_slots(self.to_slots(tokens))

    def inputs_embeds(self, embed: nn.Module, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                      num_slots: torch.Tensor) -> torch.Tensor:
        slots = input_ids == self.img
        embeds = embed(torch.where(slots, torch.zeros_like(input_ids), input_ids))
        if not slots.any():
            return embeds
        projected = self.project(image_tokens)  # (B, L/s², hidden)
        take = torch.arange(projected.shape[1], device=input_ids.device)[None] < \
            (num_slots // self.per_slot)[:, None]
        projected = projected[take]  # row-major, as the slots appear in the sequence
        if projected.shape[0] != int(slots.sum()):
            raise ValueError(f"{int(slots.sum())} image slots in the sequences but {projected.shape[0]} image tokens")
        return embeds.masked_scatter(slots[..., None], projected.to(embeds.dtype))

    def predictor_mask(self, input_ids: torch.Tensor, generate_rows: torch.Tensor) -> torch.Tensor:
        """(B, T): positions whose hidden state predicts the next slot's token, in generation rows only."""
        slots = (input_ids == self.img) & generate_rows[:, None]
        before = torch.zeros_like(slots)
        before[:, :-1] = slots[:, 1:]
        return before

    def image_loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                   generate_rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        if not generate_rows.any():
            return None
        pred = self.predictor_mask(input_ids, generate_rows)
        num = (input_ids == self.img).sum(1)
        slots = self.to_slots(image_tokens)
        take = (torch.arange(slots.shape[1], device=input_ids.device)[None] < num[:, None]) & generate_rows[:, None]
        targets = slots[take].flatten(0, 1)  # (N·s²[, C]) in slot order
        h = self.slot_hidden(hidden[pred].to(torch.promote_types(hidden.dtype, torch.float32))).flatten(0, 1)
        return self.head.loss(h[None], targets[None].long())

    @torch.no_grad()
    def sample(self, hidden_cond: torch.Tensor, hidden_uncond: torch.Tensor | None, cfg_scale: float,
               temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
        """One slot's tokens for each row, (B, s²[, C]), from the last hidden states (B, hidden)."""
        B = hidden_cond.shape[0]
        hc = self.slot_hidden(hidden_cond.float()).flatten(0, 1)
        hu = None if hidden_uncond is None else self.slot_hidden(hidden_uncond.float()).flatten(0, 1)
        tokens = self.head.sample(hc, hu, cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                                  generator=generator)
        return tokens.unflatten(0, (B, self.per_slot))
