"""Constrained image decoding as a ``transformers`` LogitsProcessor (the vocabulary bridge), and the KV-cached loop of
the adapter bridge.

:class:`ImageLogitsProcessor` reads each row's ids (so it needs no state across steps and works with any cache):

- outside an image, the ids that only belong inside one (image codes, row ends, size tokens, ``<eoi>``) are masked
  and every text logit is left as it is, so text generation (understanding answers) is unchanged;
- inside an image (after the last ``<boi>``), the bridge's :meth:`~VocabularyBridge.step_rule` either forces one id
  (size tokens, ``<eor>`` at the end of each row, ``<eoi>`` at the end) or allows only image ids (plus ``<eoi>`` for
  an early stop of a ``prefix_ok`` tokenizer);
- classifier-free guidance (Liquid, Emu3, Janus): the batch holds B conditional rows then their B unconditional rows;
  a sampled position gets ``l_u + s·(l_c − l_u)`` over the allowed ids, one draw with temperature / top-k / top-p
  from the processor's seeded ``torch.Generator``, and the drawn id is forced in both rows (``generate`` then runs
  greedy), so both branches of a pair stay the same image and the same seed gives the same image.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from vistok.generators.sampling import sample_logits


class ImageLogitsProcessor(LogitsProcessor):
    """bridge: a bound VocabularyBridge; cfg_rows: True when the batch is [conditional; unconditional] rows."""

    def __init__(self, bridge, cfg_scale: float = 1.0, cfg_rows: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 num_tokens: int | None = None) -> None:
        self.bridge, self.cfg_scale, self.cfg_rows = bridge, float(cfg_scale), cfg_rows
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator
        self.num_tokens = num_tokens
        self.interior = bridge.interior_ids
        self.image_range = (bridge.img_base, bridge.img_base + bridge.image_vocab)

    def state(self, row: torch.Tensor) -> int | None:
        """Tokens written since the open ``<boi>`` of this row, or None outside an image."""
        boi = (row == self.bridge.boi).nonzero()
        if not len(boi):
            return None
        last_boi = int(boi[-1])
        eoi = (row[last_boi:] == self.bridge.eoi).nonzero()
        return None if len(eoi) else row.shape[0] - 1 - last_boi

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        B = scores.shape[0] // 2 if self.cfg_rows else scores.shape[0]
        for b in range(B):
            rows = [b, b + B] if self.cfg_rows else [b]
            k = self.state(input_ids[b])
            if k is None:
                for r in rows:
                    scores[r, self.interior.to(scores.device)] = float("-inf")
                continue
            what, arg = self.bridge.step_rule(k, self.num_tokens)
            if what == "force" or what == "closed":
                chosen = arg if what == "force" else self.bridge.eoi
            else:
                lo, hi = self.image_range
                cand = torch.arange(lo, hi, device=scores.device)
                if arg:  # <eoi> allowed: a prefix_ok image may stop here
                    cand = torch.cat([cand, torch.tensor([self.bridge.eoi], device=scores.device)])
                logits = scores[b, cand].float()
                if self.cfg_rows:
                    uncond = scores[b + B, cand].float()
                    logits = uncond + self.cfg_scale * (logits - uncond)
                pick = sample_logits(logits[None], self.temperature, self.top_k, self.top_p, self.generator)
                chosen = int(cand[int(pick)])
            for r in rows:
                scores[r].fill_(float("-inf"))
                scores[r, chosen] = 0.0
        return scores
