"""Tokenizers: images ↔ tokens behind one interface (see ``base.py``)."""

from vistok.tokenizers.base import Tokenizer, TokenizerOutput
from vistok.tokenizers.conv2d import ConvTokenizer

__all__ = ["ConvTokenizer", "Tokenizer", "TokenizerOutput"]
