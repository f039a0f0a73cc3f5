"""Generator heads, one per TokenSpec kind (``@register("head", kind)``); importing this registers them. The
flow-matching entity head of next-X prediction lives in ``flow.py`` (it regresses code vectors, not a kind)."""

from vistok.generators.heads import bins, bits, subvocab, vocab  # noqa: F401  (register the heads)
from vistok.generators.heads.base import TokenHead, build_head
from vistok.generators.heads.bins import BinsHead
from vistok.generators.heads.bits import BitsHead
from vistok.generators.heads.flow import FlowMatchingHead
from vistok.generators.heads.subvocab import SubvocabHead
from vistok.generators.heads.vocab import VocabHead

__all__ = ["BinsHead", "BitsHead", "FlowMatchingHead", "SubvocabHead", "TokenHead", "VocabHead", "build_head"]
