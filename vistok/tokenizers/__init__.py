"""Tokenizers: images ↔ tokens behind one interface (see ``base.py``)."""

from vistok.tokenizers import diffusers_kl, diffusers_vq  # noqa: F401  (diffusers is imported on first use)
from vistok.tokenizers.base import Tokenizer, TokenizerOutput
from vistok.tokenizers.continuous import KLAutoencoder  # noqa: F401
from vistok.tokenizers.conv2d import ConvTokenizer
from vistok.tokenizers.dual import DualCodebookTokenizer  # noqa: F401
from vistok.tokenizers.prefix import NestedDropout, TailTokenDrop  # noqa: F401
from vistok.tokenizers.vit1d import ViT1DTokenizer  # noqa: F401

__all__ = ["ConvTokenizer", "Tokenizer", "TokenizerOutput"]
