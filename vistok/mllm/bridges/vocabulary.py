"""The vocabulary bridge (Chameleon, Liquid, Show-o, Emu3): every code of a ``vocab`` tokenizer becomes an LLM token
``<img_i>``, so the LLM reads images through its own (grown) embedding table and writes them with its own head.

- Added tokens: ``<boi>``, ``<eoi>``, ``<uncond>`` (the dropped prompt of CFG training, as Liquid's
  ``<unconditional>``), then for grid layouts a row-end ``<eor>`` and the size tokens ``<h_H>``, ``<w_W>``
  (Emu3 writes the size before the rows and ends each row with ``[eol]``; Lumina-mGPT uses an h- and a w-token and
  a newline token per row), then ``<img_0>`` … ``<img_{V-1}>`` with contiguous ids (Liquid: id = code + offset).
- An image: ``<boi> <h_H> <w_W> (<img>×W <eor>)×H <eoi>`` on a grid; ``<boi> <img>×n <eoi>`` for 1D tokenizers,
  where ``prefix_ok`` tokenizers may stop early (any 1 ≤ n ≤ L), so the ``<eoi>`` marks the length.
- The embedding table grows with ``resize_token_embeddings(..., mean_resizing=True)`` (done by the MLLM), which
  starts the new rows at the mean of the old ones (Liquid's ``expand_vocabulary.py``); tied input/output tables stay
  one tensor.
- Loss on image positions (``image_softmax``): ``"full"`` (Chameleon, Liquid) is the LLM's softmax over its whole
  vocabulary; ``"codebook"`` is the softmax over the ids decoding may draw there (:attr:`sampled_ids`: the codes,
  and ``<eoi>`` for ``prefix_ok`` tokenizers), the distribution constrained decoding samples from. It skips the
  (positions × whole vocabulary) logits and their backward (docs/mllm.md measures the saving).
- Decoding: :meth:`step_rule` says, for the k-th position after ``<boi>``, which ids are allowed (image ids, and
  ``<eoi>`` for an early stop) or which single id is forced (size tokens, row ends, the closing ``<eoi>``).
"""

from __future__ import annotations

import torch

from vistok.errors import ConfigError
from vistok.mllm.bridges.base import BOI, EOI, UNCOND, Bridge
from vistok.registry import register
from vistok.spec import TokenSpec

EOR = "<eor>"
MAX_IMAGE_VOCAB = 1 << 18  # 262,144 new rows (Emu3 adds 32,768): more would dwarf any LLM's own vocabulary


@register("mllm_bridge", "vocabulary")
class VocabularyBridge(Bridge):
    """max_image_vocab: the largest codebook accepted (each code is an embedding row and an output logit);
    image_softmax: ``"full"`` or ``"codebook"`` (the module docstring)."""

    def __init__(self, spec: TokenSpec, hidden_size: int, max_image_vocab: int = MAX_IMAGE_VOCAB,
                 image_softmax: str = "full") -> None:
        super().__init__(spec, hidden_size)
        if image_softmax not in ("full", "codebook"):
            raise ConfigError(f"bridge.image_softmax must be 'full' or 'codebook', got {image_softmax!r}")
        self.image_softmax = image_softmax
        if spec.kind != "vocab":
            raise ConfigError(f"the vocabulary bridge takes 'vocab' tokens (one index per position); this tokenizer's "
                              f"are {spec.kind!r} with vocabularies {spec.vocab_sizes}: use bridge=adapter")
        self.image_vocab = spec.vocab_sizes[0]
        if self.image_vocab > max_image_vocab:
            raise ConfigError(f"the tokenizer has {self.image_vocab} codes; the vocabulary bridge adds at most "
                              f"{max_image_vocab} LLM tokens (bridge.max_image_vocab): use bridge=adapter, or a "
                              "smaller codebook")
        self.grid = spec.grid

    def added_tokens(self) -> list[str]:
        layout = [EOR, f"<h_{self.grid[0]}>", f"<w_{self.grid[1]}>"] if self.grid else []
        return [BOI, EOI, UNCOND, *layout, *(f"<img_{i}>" for i in range(self.image_vocab))]

    def bind(self, token_ids: dict[str, int]) -> None:
        super().bind(token_ids)
        base = token_ids["<img_0>"]
        got = torch.tensor([token_ids[f"<img_{i}>"] for i in range(self.image_vocab)])
        if not torch.equal(got, torch.arange(base, base + self.image_vocab)):
            raise ConfigError("the text tokenizer gave the <img_i> tokens non-contiguous ids; they must be added to "
                              "a tokenizer that has none of them yet")
        self.img_base = base
        self.boi, self.eoi, self.uncond = token_ids[BOI], token_ids[EOI], token_ids[UNCOND]
        if self.grid:
            self.eor = token_ids[EOR]
            self.size_ids = (token_ids[f"<h_{self.grid[0]}>"], token_ids[f"<w_{self.grid[1]}>"])

    # ---- sequences ----------------------------------------------------------------------------------------------
    def image_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.long().cpu() + self.img_base
        if self.grid:
            h, w = self.grid
            rows = torch.cat([ids.view(h, w), torch.full((h, 1), self.eor)], dim=1).flatten()
            return torch.cat([torch.tensor([self.boi, *self.size_ids]), rows, torch.tensor([self.eoi])])
        return torch.cat([torch.tensor([self.boi]), ids, torch.tensor([self.eoi])])

    def tokens_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """An image's generated ids (anything between ``<boi>`` and ``<eoi>``) -> its tokens (n,)."""
        ids = ids.long()
        keep = (ids >= self.img_base) & (ids < self.img_base + self.image_vocab)
        return ids[keep] - self.img_base

    @property
    def interior_ids(self) -> torch.Tensor:
        """Ids that may only appear inside an image (image codes, row ends, size tokens, ``<eoi>``)."""
        extra = [self.eoi, *([self.eor, *self.size_ids] if self.grid else [])]
        return torch.cat([torch.arange(self.img_base, self.img_base + self.image_vocab), torch.tensor(extra)])

    @property
    def sampled_ids(self) -> torch.Tensor:
        """Ids decoding may draw inside an image (the rest is forced): the codes, and ``<eoi>`` for prefix images."""
        codes = torch.arange(self.img_base, self.img_base + self.image_vocab)
        return torch.cat([codes, torch.tensor([self.eoi])]) if self.spec.prefix_ok and not self.grid else codes

    def step_rule(self, k: int, num_tokens: int | None = None) -> tuple[str, int | bool]:
        """What may follow the k-th position after ``<boi>`` (k = tokens already written after it):
        ``("force", id)``, or ``("image", eoi_allowed)`` for a sampled image id, or ``("closed", 0)`` past the end.
        ``num_tokens``: for prefix_ok tokenizers, the length to stop at (None: the model chooses, up to L)."""
        if self.grid:
            h, w = self.grid
            if k < 2:
                return "force", self.size_ids[k]
            j = k - 2
            row, col = divmod(j, w + 1)
            if row < h:
                return ("image", False) if col < w else ("force", self.eor)
            return ("force", self.eoi) if j == h * (w + 1) else ("closed", 0)
        length = self.spec.length
        if num_tokens is not None:
            length = min(int(num_tokens), length)
            return ("image", False) if k < length else (("force", self.eoi) if k == length else ("closed", 0))
        if k < length:
            return "image", bool(self.spec.prefix_ok and k >= 1)
        return ("force", self.eoi) if k == length else ("closed", 0)
