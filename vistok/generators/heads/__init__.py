"""Generator heads, one per TokenSpec kind (``@register("head", kind)``); importing this registers them."""

from vistok.generators.heads import vocab  # noqa: F401  (registers the "vocab" head)
from vistok.generators.heads.base import TokenHead, build_head
from vistok.generators.heads.vocab import VocabHead

__all__ = ["TokenHead", "VocabHead", "build_head"]
