"""MLLM bridges (``@register("mllm_bridge", name)``); importing this registers them."""

from vistok.mllm.bridges.adapter import AdapterBridge
from vistok.mllm.bridges.base import Bridge, default_bridge
from vistok.mllm.bridges.vocabulary import VocabularyBridge

__all__ = ["AdapterBridge", "Bridge", "VocabularyBridge", "default_bridge"]
