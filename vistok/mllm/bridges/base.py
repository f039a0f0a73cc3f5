"""The bridge interface: how an image's tokens become LLM positions, and how the LLM's positions become tokens.

A bridge owns the special tokens it adds to the text tokenizer, the id segment an image occupies in a sequence
(``<boi> … <eoi>``), what the LLM reads at those positions (its own embedding rows, or projected code vectors), and
the loss and sampling of generated image tokens. Two are registered (``@register("mllm_bridge", name)``):
``vocabulary`` (codes as new vocabulary entries; Chameleon, Liquid, Emu3) and ``adapter`` (a projector in, a vistok
token head out; LLaVA, Janus, UniTok). The tokenizer's :class:`TokenSpec` picks the default (:func:`default_bridge`).
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.spec import TokenSpec

BOI, EOI, UNCOND = "<boi>", "<eoi>", "<uncond>"


def default_bridge(spec: TokenSpec) -> str:
    """``vocab`` tokens join the vocabulary; several indices per position (subvocab, bits, bins) need the adapter."""
    return "vocabulary" if spec.kind == "vocab" else "adapter"


class Bridge(nn.Module):
    """Subclasses list their tokens in ``added_tokens()``, read their ids in ``bind``, and implement the rest.

    ``codes`` (set by the MLLM, not a submodule): tokens (B, L[, C]) -> the frozen tokenizer's code vectors
    (B, L, code_dim), for bridges that read code vectors."""

    uses_embeddings_only = True  # the LLM reads input_ids alone (no inputs_embeds needed)

    def __init__(self, spec: TokenSpec, hidden_size: int) -> None:
        super().__init__()
        self.spec, self.hidden_size = spec, hidden_size
        self.ids: dict[str, int] = {}
        self.__dict__["codes"] = None  # a function, not a submodule: the tokenizer belongs to the MLLM

    # ---- vocabulary ---------------------------------------------------------------------------------------------
    def added_tokens(self) -> list[str]:  # pragma: no cover - interface
        """Token strings to add to the text tokenizer, in order (ids are assigned contiguously)."""
        raise NotImplementedError

    def bind(self, token_ids: dict[str, int]) -> None:
        """Receive the ids the text tokenizer gave to ``added_tokens()``."""
        self.ids = dict(token_ids)

    # ---- sequences ----------------------------------------------------------------------------------------------
    def image_ids(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """One image's tokens (n[, C]) -> its id segment, ``<boi>`` … ``<eoi>`` included (S,)."""
        raise NotImplementedError

    def segment_length(self, num_tokens: int | None = None) -> int:
        return len(self.image_ids(torch.zeros(num_tokens or self.spec.length, *self.spec.token_shape[1:],
                                              dtype=torch.long)))

    def image_token_label_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions whose text label the LM loss must skip (the adapter's slots are scored by its head)."""
        return torch.zeros_like(input_ids, dtype=torch.bool)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """tokens (n[, C]) of one image must fit the spec (a prefix for ``prefix_ok`` tokenizers)."""
        self.spec.validate(tokens[None], "image tokens")

    # ---- what the LLM reads / how images are scored (adapter-style bridges override) ------------------------------
    def inputs_embeds(self, embed: nn.Module, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                      num_slots: torch.Tensor) -> torch.Tensor:
        return embed(input_ids)

    def match_embedding_scale(self, embeddings: torch.Tensor) -> None:
        """Called once at build with the LLM's own input embedding rows (V, hidden); bridges whose image inputs are
        not those rows start them at that scale."""

    def image_loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                   generate_rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """Loss on generated image tokens outside the LM head (None: the LM loss covers them)."""
        return None


def check_added(tokenizer, tokens: list[str]) -> dict[str, int]:
    """Add ``tokens`` as special tokens (kept whole, skipped when decoding text) unless already there (a saved
    extended tokenizer); return their ids."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    if any(i is None or i < 0 for i in ids.values()):
        raise ConfigError(f"the text tokenizer could not add {tokens[:3]}…; is it a fast tokenizer?")
    return ids
