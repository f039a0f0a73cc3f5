"""Generators: a LlamaGen-style GPT whose embedding and head come from the tokenizer's TokenSpec.

Importing this package registers the ``gpt`` generator, the token heads (``head``) and the conditionings. Named
sizes: ``vistok.generators.gpt.gpt("gpt_b", token_spec=..., num_classes=...)`` (``GPT_SIZES``).
"""

from vistok.generators import conditioning, gpt, heads, text, xar  # noqa: F401  (run the @register decorators)
from vistok.generators.conditioning import ClassConditioning, Conditioning
from vistok.generators.gpt import GPT, GPT_SIZES, GeneratorOutput, rope_coords
from vistok.generators.heads import TokenHead, VocabHead, build_head
from vistok.generators.kv_cache import KVCache
from vistok.generators.sampling import apply_top_k, apply_top_p, cfg_scale_at, sample_logits

__all__ = [
    "GPT", "GPT_SIZES", "ClassConditioning", "Conditioning", "GeneratorOutput", "KVCache", "TokenHead",
    "VocabHead", "apply_top_k", "apply_top_p", "build_head", "cfg_scale_at", "rope_coords",
    "sample_logits",
]
