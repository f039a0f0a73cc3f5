"""Plug a vistok tokenizer into a Hugging Face causal LM: images in (understanding) and out (generation), for every
token kind. See ``docs/mllm.md``. Importing this registers the ``mllm`` model and the ``mllm_bridge`` parts; it
does not import ``transformers`` (the ``mllm`` extra) until an LLM is loaded."""

from vistok.mllm import bridges  # noqa: F401  (registers the bridges)
from vistok.mllm.model import MLLM

__all__ = ["MLLM"]
