"""Interleaved text + image sequences, built with the LLM's chat template where it has one, and their loss masks.

- Understanding (LLaVA, Liquid): user ``<image> question`` → assistant ``answer``; the loss sees the answer only.
- Generation (Liquid, Emu3): user ``prompt`` → assistant ``<boi> image <eoi>``; the loss sees the image segment
  (and the end of turn). With probability ``prompt_dropout`` (Liquid ~0.1, Emu3 0.05) the prompt is replaced by the
  ``<uncond>`` token, so that classifier-free guidance has an unconditional branch seen in training.
- Text only: plain text, every token scored (keeps the LLM's language; its held-out perplexity is reported).

The template is rendered to text with an image marker, split at the marker, and each text piece tokenized without
added special tokens (the template already writes them); the assistant part is what the full conversation adds to
the prompt rendered with ``add_generation_prompt=True``. Labels are -100 everywhere else (prompt, question, image
inputs, padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vistok.errors import ConfigError
from vistok.mllm.bridges.base import UNCOND, Bridge

IGNORE = -100
IMAGE_MARKER = "\x00vistok-image\x00"  # stands for an image segment inside rendered template text
ROLES = ("understanding", "generation", "text")


@dataclass
class Sequence:
    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,)
    image_tokens: torch.Tensor | None  # (n[, C]) of the one image it holds, or None
    role: str


class SequenceBuilder:
    """chat_template: use the text tokenizer's template when it has one; system_prompt: None keeps the template's
    default system turn, a string replaces it ("" for an empty one)."""

    def __init__(self, text_tokenizer: Any, bridge: Bridge, chat_template: bool = True,
                 system_prompt: str | None = None) -> None:
        self.tok, self.bridge = text_tokenizer, bridge
        self.use_template = bool(chat_template and getattr(text_tokenizer, "chat_template", None))
        self.system_prompt = system_prompt

    # ---- text rendering ---------------------------------------------------------------------------------------
    def _messages(self, user: str) -> list[dict[str, str]]:
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return [*system, {"role": "user", "content": user}]

    def render(self, user: str, assistant: str | None) -> tuple[str, str]:
        """(prompt text up to the assistant's turn, assistant text incl. its end-of-turn) for one exchange."""
        if not self.use_template:
            bos = self.tok.bos_token or ""
            return f"{bos}{user}\n", ("" if assistant is None else f"{assistant}{self.tok.eos_token or ''}")
        messages = self._messages(user)
        prompt = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if assistant is None:
            return prompt, ""
        full = self.tok.apply_chat_template([*messages, {"role": "assistant", "content": assistant}], tokenize=False)
        if not full.startswith(prompt):
            raise ConfigError("the text tokenizer's chat template does not render the conversation as prompt + "
                              "answer; set chat_template: false in the config")
        return prompt, full[len(prompt):]

    def _ids(self, text: str, image_tokens: torch.Tensor | None) -> torch.Tensor:
        pieces = text.split(IMAGE_MARKER)
        if len(pieces) > 2 or (len(pieces) == 2 and image_tokens is None):
            raise ValueError("one image per sequence")
        out: list[torch.Tensor] = []
        for i, piece in enumerate(pieces):
            if i:
                out.append(self.bridge.image_ids(image_tokens))
            if piece:
                out.append(torch.tensor(self.tok(piece, add_special_tokens=False)["input_ids"], dtype=torch.long))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    # ---- examples -----------------------------------------------------------------------------------------------
    def understanding(self, image_tokens: torch.Tensor, question: str, answer: str | None = None) -> Sequence:
        if not question or not question.strip():
            raise ValueError("the question is empty; ask something about the image, e.g. 'What is in this image?'")
        self.bridge.check_tokens(image_tokens)
        prompt, reply = self.render(f"{IMAGE_MARKER}\n{question.strip()}", answer)
        return self._join(prompt, reply, image_tokens, image_tokens, "understanding")

    def generation(self, prompt: str | None, image_tokens: torch.Tensor | None = None) -> Sequence:
        """``prompt`` None: the unconditional prompt. Without ``image_tokens``: the prompt alone, ending where the
        assistant's turn starts (decoding appends ``<boi>`` and samples the image)."""
        user = UNCOND if prompt is None else prompt
        if not user.strip():
            raise ValueError("the prompt is empty; describe the image to generate (or pass None for unconditional)")
        if image_tokens is not None:
            self.bridge.check_tokens(image_tokens)
        text, reply = self.render(user, None if image_tokens is None else IMAGE_MARKER)
        return self._join(text, reply, None, image_tokens, "generation")

    def text(self, text: str) -> Sequence:
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        ids = torch.tensor(bos + self.tok(text, add_special_tokens=False)["input_ids"] + eos, dtype=torch.long)
        labels = ids.clone()
        labels[: len(bos)] = IGNORE
        return Sequence(ids, labels, None, "text")

    def _join(self, prompt: str, reply: str, prompt_image, reply_image, role: str) -> Sequence:
        a = self._ids(prompt, prompt_image)
        b = self._ids(reply, reply_image) if reply else torch.zeros(0, dtype=torch.long)
        labels = torch.cat([torch.full_like(a, IGNORE), b.clone()])
        ids = torch.cat([a, b])
        labels[self.bridge.image_token_label_mask(ids)] = IGNORE  # adapter slots: scored by the head instead
        image = reply_image if reply_image is not None else prompt_image
        return Sequence(ids, labels, image, role)


def collate(seqs: list[Sequence], pad_id: int, spec_token_shape: tuple[int, ...], length: int | None = None,
            left: bool = False) -> dict[str, torch.Tensor]:
    """Pad sequences to one length (right-padded for training, left-padded for generation prompts).

    Returns input_ids, labels, attention_mask (B, T); image_tokens (B, L[, C]) zero where a row has no image;
    num_slots (B,) image positions per row; role (B,) index into ROLES."""
    T = max(len(s.input_ids) for s in seqs) if length is None else length
    if any(len(s.input_ids) > T for s in seqs):
        raise ValueError(f"a sequence of {max(len(s.input_ids) for s in seqs)} tokens exceeds the length {T}")
    B = len(seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    images = torch.zeros(B, *spec_token_shape, dtype=torch.long)
    slots = torch.zeros(B, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s.input_ids)
        where = slice(T - n, T) if left else slice(0, n)
        ids[b, where], labels[b, where], mask[b, where] = s.input_ids, s.labels, 1
        if s.image_tokens is not None:
            images[b, : s.image_tokens.shape[0]] = s.image_tokens.long()
            slots[b] = s.image_tokens.shape[0]
    role = torch.tensor([ROLES.index(s.role) for s in seqs])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "image_tokens": images, "num_slots": slots,
            "role": role}
