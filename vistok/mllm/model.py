"""The MLLM: a Hugging Face causal LM + a frozen vistok tokenizer + a bridge, with images in (understanding) and out
(generation).

Build: :meth:`MLLM.build` loads the LLM (``vistok.mllm.llm``), the image tokenizer (a ``save_pretrained`` folder or an
instance; frozen), picks the bridge from the tokenizer's TokenSpec (``vocab`` → vocabulary, other kinds → adapter;
``bridge=`` overrides), adds the bridge's tokens to the text tokenizer, grows the LLM's embedding table with
``resize_token_embeddings(n, mean_resizing=True)`` (tied input/output tables stay one tensor), and marks what trains:

- ``bridge``: projector and head (adapter bridge); ``"head"``: the head alone (the projector keeps its initialization);
- ``new_rows``: the embedding rows of the added tokens only (a gradient mask keeps the LLM's own rows; with untied
  embeddings the output rows too); ``"output"``: they learn from the output side alone (the input lookup is
  detached);
- ``lora``: LoRA adapters through ``peft`` (``{r, alpha, dropout, target_modules}``);
- ``last_blocks``: the last N transformer blocks; ``all``: every LLM weight.

Save: ``save_pretrained(dir)`` writes ``config.json`` (how to rebuild: LLM source, bridge, trainable parts, template
settings), ``model.safetensors`` (only what differs from the rebuilt base: the trained weights by name — LoRA
deltas, new rows, trained blocks or all LLM weights — and the bridge), ``text_tokenizer/`` (the extended tokenizer
files), ``tokenizer/`` (a copy of the image tokenizer) and, with LoRA, ``lora_adapter/`` (peft's own adapter
files). ``vistok.load(dir)`` rebuilds the whole thing: the base LLM comes again from its source (a GGUF file, a
folder, a hub name, or the seeded random test LLM).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vistok.errors import CheckpointError, ConfigError
from vistok.hub import CONFIG_NAME, WEIGHTS_NAME, load_pretrained, load_state_dict_strict, read_config
from vistok.mllm.bridges import Bridge, default_bridge
from vistok.mllm.bridges.base import check_added
from vistok.mllm.llm import end_token_ids, load_llm
from vistok.mllm.sequences import IGNORE, ROLES, Sequence, SequenceBuilder, collate
from vistok.registry import build, register

TRAINABLE_DEFAULTS = {"bridge": True, "new_rows": True, "lora": None, "last_blocks": 0, "all": False}
FEATURES = ("codes", "semantic")


def _decoder_layers(llm: nn.Module) -> nn.ModuleList:
    n = getattr(llm.config, "num_hidden_layers", None)
    for module in llm.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} transformer blocks of {type(llm).__name__}; use trainable.lora or all")


def _cache_keyword(llm: nn.Module) -> str:
    """transformers 5 names the KV cache argument ``cache``; earlier versions ``past_key_values``."""
    import inspect

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@register("mllm", "mllm")
class MLLM(nn.Module):
    """Use :meth:`build` (from names and folders) or ``vistok.load`` (a saved MLLM)."""

    def __init__(self, llm: nn.Module, text_tokenizer: Any, image_tokenizer: nn.Module,
                 bridge: str | dict[str, Any] = "auto", trainable: dict[str, Any] | None = None,
                 llm_source: dict[str, Any] | None = None, chat_template: bool = True,
                 system_prompt: str | None = None, features: str = "codes") -> None:
        super().__init__()
        self.image_tokenizer = image_tokenizer.eval().requires_grad_(False)
        self.spec = image_tokenizer.token_spec
        self.text_tokenizer = text_tokenizer
        if features not in FEATURES:
            raise ConfigError(f"features must be one of {FEATURES}, got {features!r}")
        if features == "semantic" and not hasattr(getattr(image_tokenizer, "quantizer", None), "semantic_dim"):
            raise ConfigError("features=semantic needs a dual-codebook tokenizer (semantic + pixel codes)")
        self.features = features
        self.llm_source = dict(llm_source) if llm_source else None
        self.chat_template, self.system_prompt = chat_template, system_prompt
        self.trainable = {**TRAINABLE_DEFAULTS, **(trainable or {})}
        unknown = set(self.trainable) - set(TRAINABLE_DEFAULTS)
        if unknown:
            raise ConfigError(f"trainable has unknown keys {sorted(unknown)}; it takes {sorted(TRAINABLE_DEFAULTS)}")
        if text_tokenizer.pad_token is None:
            text_tokenizer.pad_token = text_tokenizer.eos_token

        bridge_cfg = {"name": bridge} if isinstance(bridge, str) else dict(bridge)
        if bridge_cfg.get("name", "auto") == "auto":
            bridge_cfg["name"] = default_bridge(self.spec)
        self.bridge_cfg = bridge_cfg
        hidden = llm.config.hidden_size
        extra = {"code_dim": self._code_dim()} if bridge_cfg["name"] == "adapter" else {}
        self.bridge: Bridge = build("mllm_bridge", bridge_cfg, spec=self.spec, hidden_size=hidden, **extra)
        self.bridge.__dict__["codes"] = self.codes

        # ---- the vocabulary: added tokens, grown (tied) embeddings ----
        self.base_rows = llm.get_input_embeddings().weight.shape[0]
        self.bridge.bind(check_added(text_tokenizer, self.bridge.added_tokens()))
        rows = max(len(text_tokenizer), self.base_rows)
        self.tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
        if rows != self.base_rows:
            llm.resize_token_embeddings(rows, mean_resizing=True)
        if self.tied and llm.get_output_embeddings().weight is not llm.get_input_embeddings().weight:
            llm.tie_weights()
        self.vocab_rows = rows
        self.bridge.match_embedding_scale(llm.get_input_embeddings().weight[: self.base_rows])
        self.llm = self._apply_trainable(llm)
        self.builder = SequenceBuilder(text_tokenizer, self.bridge, chat_template, system_prompt)
        self.end_ids = end_token_ids(text_tokenizer)

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, llm: str | dict[str, Any], tokenizer: str | Path | nn.Module, **options: Any) -> MLLM:
        """llm: a source string or ``{source, gguf_file}``; tokenizer: a vistok tokenizer folder or instance."""
        source = {"source": llm} if isinstance(llm, str) else dict(llm)
        model, text_tok = load_llm(source["source"], source.get("gguf_file"))
        image_tok = tokenizer if isinstance(tokenizer, nn.Module) else load_pretrained(tokenizer, kind="tokenizer")
        return cls(model, text_tok, image_tok, llm_source=source, **options)

    def _code_dim(self) -> int:
        return int(self.codes(torch.zeros(1, 1, *self.spec.token_shape[1:], dtype=torch.long)).shape[-1])

    @torch.no_grad()
    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n[, C]) -> the frozen tokenizer's code vectors (B, n, D) (semantic half with
        features=semantic)."""
        quantizer = getattr(self.image_tokenizer, "quantizer", None)
        if quantizer is None or not hasattr(quantizer, "indices_to_codes"):
            raise ConfigError(f"{type(self.image_tokenizer).__name__} has no quantizer.indices_to_codes; the adapter "
                              "bridge reads code vectors")
        codes = quantizer.indices_to_codes(tokens.long()).float()
        return codes[..., : quantizer.semantic_dim] if self.features == "semantic" else codes

    def _apply_trainable(self, llm: nn.Module) -> nn.Module:
        t = self.trainable
        llm.requires_grad_(False)
        if t["lora"]:
            from peft import LoraConfig, get_peft_model

            lora = dict(t["lora"])
            cfg = LoraConfig(r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 2 * int(lora.get("r", 8)))),
                             lora_dropout=float(lora.get("dropout", 0.0)),
                             target_modules=list(lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])),
                             bias="none", task_type="CAUSAL_LM")
            llm = get_peft_model(llm, cfg)  # freezes everything but the adapters
        base = llm.get_base_model() if t["lora"] else llm
        if t["all"]:
            for name, p in base.named_parameters():
                if "lora_" not in name:
                    p.requires_grad_(True)
        elif t["last_blocks"]:
            for block in list(_decoder_layers(base))[-int(t["last_blocks"]):]:
                for name, p in block.named_parameters():
                    if "lora_" not in name:
                        p.requires_grad_(True)
        # the added rows are saved whether they train or not: mean resizing draws them at random
        self._row_params: list[tuple[str, nn.Parameter]] = []
        if not t["all"] and self.vocab_rows > self.base_rows:
            emb_in, emb_out = base.get_input_embeddings().weight, base.get_output_embeddings().weight
            self._row_params = [("rows.input", emb_in)] + ([] if emb_out is emb_in else [("rows.output", emb_out)])
        if t["new_rows"] and self._row_params:
            mask = torch.zeros(self.vocab_rows, 1)
            mask[self.base_rows:] = 1.0
            for _, p in self._row_params:
                p.requires_grad_(True)
                p.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype))  # the LLM's own rows stay as they are
        self.bridge.requires_grad_(bool(t["bridge"]))
        if t["bridge"] == "head":  # the projector keeps its initialization: no gradient needs to reach the input
            if not hasattr(self.bridge, "head"):
                raise ConfigError("trainable.bridge='head' needs the adapter bridge (the vocabulary bridge writes "
                                  "images with the LLM's own head); use trainable.bridge=true")
            self.bridge.requires_grad_(False)
            self.bridge.head.requires_grad_(True)
        return llm

    def train(self, mode: bool = True) -> MLLM:
        super().train(mode)
        self.image_tokenizer.eval()  # frozen: batch norms and dropouts stay in inference mode
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def embed(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    # ---- training -----------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                image_tokens: torch.Tensor, num_slots: torch.Tensor, role: torch.Tensor,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A batch from :func:`collate` -> (loss, detached stats): the LM cross-entropy over every labelled token
        (answers, image ids of the vocabulary bridge, text) plus, for the adapter bridge, its head's loss on the
        generated images' tokens."""
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        # new_rows="output": no gradient through the input lookup, so with last_blocks (and nothing else below them
        # training) backward stops at the trained blocks instead of running through the whole LLM
        detach = self.trainable["new_rows"] == "output"
        embed = (lambda ids: self.embed(ids).detach()) if detach else self.embed
        if self.bridge.uses_embeddings_only:
            inputs = {"inputs_embeds": embed(input_ids)} if detach else {"input_ids": input_ids}
        else:
            inputs = {"inputs_embeds": self.bridge.inputs_embeds(embed, input_ids, image_tokens, num_slots)}
        # logits only where a label is (logits_to_keep=1 skips the LLM's own (B, T, vocab) product): the answers of
        # understanding rows are a few tokens, and a 49k-entry vocabulary over every position is most of the memory
        out = self.llm(**inputs, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True,
                       use_cache=False, logits_to_keep=1)
        hidden = out.hidden_states[-1]  # after the final norm
        targets = labels[:, 1:]
        counted = targets != IGNORE
        nll = self._lm_nll(hidden[:, :-1][counted], targets[counted])
        lm = nll.sum() / counted.sum().clamp(min=1)
        stats: dict[str, torch.Tensor] = {"lm": lm.detach()}
        position_role = role[:, None].expand_as(counted)[counted]
        for r, name in enumerate(ROLES):
            if (position_role == r).any():
                stats[f"lm_{name}"] = nll[position_role == r].mean().detach()
        loss = lm
        image = self.bridge.image_loss(hidden, input_ids, image_tokens, role == ROLES.index("generation"))
        if image is not None:
            image_loss, image_stats = image
            loss = loss + image_loss
            stats.update({"image": image_loss.detach(), **{f"image_{k}": v for k, v in image_stats.items()}})
        return loss, stats

    def _lm_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy (N,) of the LLM's head on hidden states (N, D). With the vocabulary bridge's
        ``image_softmax: codebook``, a target that decoding samples inside an image is scored among those ids only."""
        if getattr(self.bridge, "image_softmax", "full") != "codebook":
            return F.cross_entropy(self._lm_logits(hidden), targets, reduction="none")
        allowed = self.bridge.sampled_ids.to(targets.device)
        lookup = torch.full((self.vocab_rows,), -1, dtype=torch.long, device=targets.device)
        lookup[allowed] = torch.arange(len(allowed), device=targets.device)
        inside = lookup[targets]
        sampled = (inside >= 0).nonzero().squeeze(1)
        forced = (inside < 0).nonzero().squeeze(1)
        nll = hidden.new_zeros(len(targets), dtype=torch.float32)
        if len(sampled):
            ce = F.cross_entropy(self._lm_logits(hidden[sampled], allowed), inside[sampled], reduction="none")
            nll = nll.index_put((sampled,), ce)
        if len(forced):
            nll = nll.index_put((forced,), F.cross_entropy(self._lm_logits(hidden[forced]), targets[forced],
                                                           reduction="none"))
        return nll

    def _lm_logits(self, hidden: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The LLM's output head on final hidden states (N, D) -> float logits (N, V) (or (N, len(ids)): the rows of
        ``ids`` only), with the logit soft-capping of the models that have it (Gemma 2)."""
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        head = base.get_output_embeddings()
        if ids is None:
            logits = head(hidden).float()
        else:
            bias = head.bias[ids] if head.bias is not None else None
            logits = F.linear(hidden, head.weight[ids], bias).float()
        cap = getattr(base.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def collate(self, seqs: list[Sequence], length: int | None = None, left: bool = False) -> dict[str, torch.Tensor]:
        return collate(seqs, self.text_tokenizer.pad_token_id, self.spec.token_shape, length, left)

    # ---- inference ----------------------------------------------------------------------------------------------
    def _generator(self, seed: int | torch.Generator | None) -> torch.Generator:
        if isinstance(seed, torch.Generator):
            return seed
        return torch.Generator(device=self.device).manual_seed(0 if seed is None else int(seed))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> image tokens, with a one-line error for the wrong size."""
        res = self.image_tokenizer.resolution
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (res, res):
            raise ValueError(f"images must be (B, 3, {res}, {res}) in [-1, 1] for this model's tokenizer, got "
                             f"{tuple(images.shape)}; resize them first (vistok.data.center_crop_resize)")
        return self.image_tokenizer.encode(images.to(self.device))

    @torch.no_grad()
    def answer(self, images: torch.Tensor, question: str, max_new_tokens: int = 32, do_sample: bool = False,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Answer ``question`` about each image (understanding); greedy by default."""
        from transformers import GenerationConfig, LogitsProcessorList

        if not question or not question.strip():
            raise ValueError("the question is empty; ask something about the image, e.g. 'What is in this image?'")
        tokens = self.encode_images(images).cpu()
        batch = self.collate([self.builder.understanding(t, question) for t in tokens], left=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        processor = self._text_processor()
        gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                               top_p=top_p, eos_token_id=self.end_ids,
                               pad_token_id=self.text_tokenizer.pad_token_id)
        if do_sample:
            torch.manual_seed(seed)
        kwargs = {"attention_mask": batch["attention_mask"], "generation_config": gen,
                  "logits_processor": LogitsProcessorList([processor])}
        if self.bridge.uses_embeddings_only:
            out = self.llm.generate(input_ids=batch["input_ids"], **kwargs)[:, batch["input_ids"].shape[1]:]
        else:
            embeds = self.bridge.inputs_embeds(self.embed, batch["input_ids"], batch["image_tokens"],
                                               batch["num_slots"])
            out = self.llm.generate(inputs_embeds=embeds, **kwargs)  # returns the new tokens only
        return [s.strip() for s in self.text_tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def chat_text(self, question: str, max_new_tokens: int = 48, do_sample: bool = False, temperature: float = 1.0,
                  seed: int = 0) -> str:
        """A text-only turn (the LLM as it is, with image-only ids masked)."""
        from transformers import GenerationConfig, LogitsProcessorList

        if not question or not question.strip():
            raise ValueError("the question is empty; ask something, e.g. 'What is a circle?'")
        prompt, _ = self.builder.render(question.strip(), None)
        ids = torch.tensor([self.text_tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=self.device)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                               eos_token_id=self.end_ids, pad_token_id=self.text_tokenizer.pad_token_id)
        if do_sample:
            torch.manual_seed(seed)
        out = self.llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen,
                                logits_processor=LogitsProcessorList([self._text_processor()]))
        return self.text_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    def _text_processor(self):
        """Outside images: mask the ids that belong only inside an image; every text logit stays as it is."""
        from transformers import LogitsProcessor

        interior = self.bridge.interior_ids

        class MaskImageIds(LogitsProcessor):
            def __call__(self, input_ids, scores):
                scores = scores.clone()
                scores[:, interior.to(scores.device)] = float("-inf")
                return scores

        return MaskImageIds()

    def _prompt_batch(self, prompts: list[str | None], cfg: bool) -> dict[str, torch.Tensor]:
        seqs = [self.builder.generation(p) for p in prompts]
        if cfg:
            seqs += [self.builder.generation(None) for _ in prompts]
        for s in seqs:  # every row starts its image: <boi> is the first generated position's input
            s.input_ids = torch.cat([s.input_ids, torch.tensor([self.bridge.boi])])
            s.labels = torch.cat([s.labels, torch.tensor([IGNORE])])
        return {k: v.to(self.device) for k, v in self.collate(seqs, left=True).items()}

    @torch.no_grad()
    def generate_tokens(self, prompts: list[str | None], cfg_scale: float = 1.0, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 1.0, seed: int | torch.Generator | None = 0,
                        num_tokens: int | None = None) -> list[torch.Tensor]:
        """Image tokens for each prompt (None: unconditional), sampled through the LLM. CFG (scale != 1) runs
        each prompt's conditional row next to an ``<uncond>`` row. Returns one (n[, C]) tensor per prompt."""
        if num_tokens is not None and not (self.spec.prefix_ok and 1 <= num_tokens <= self.spec.length) \
                and num_tokens != self.spec.length:
            raise ValueError(f"num_tokens={num_tokens}: this tokenizer takes "
                             f"{'1..' if self.spec.prefix_ok else ''}{self.spec.length} tokens")
        cfg = float(cfg_scale) != 1.0
        batch = self._prompt_batch(prompts, cfg)
        rng = self._generator(seed)
        if self.bridge.uses_embeddings_only:
            return self._generate_vocabulary(batch, len(prompts), cfg, cfg_scale, temperature, top_k, top_p, rng,
                                             num_tokens)
        return self._generate_adapter(batch, len(prompts), cfg, cfg_scale, temperature, top_k, top_p, rng,
                                      num_tokens or self.spec.length)

    def _generate_vocabulary(self, batch, B, cfg, cfg_scale, temperature, top_k, top_p, rng, num_tokens):
        from transformers import GenerationConfig, LogitsProcessorList

        from vistok.mllm.decoding import ImageLogitsProcessor

        processor = ImageLogitsProcessor(self.bridge, cfg_scale, cfg, temperature, top_k, top_p, rng, num_tokens)
        gen = GenerationConfig(max_new_tokens=self.bridge.segment_length() - 1, do_sample=False,
                               eos_token_id=self.bridge.eoi, pad_token_id=self.text_tokenizer.pad_token_id)
        out = self.llm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                generation_config=gen, logits_processor=LogitsProcessorList([processor]))
        new = out[:B, batch["input_ids"].shape[1]:].cpu()
        return [self.bridge.tokens_from_ids(row) for row in new]

    def _generate_adapter(self, batch, B, cfg, cfg_scale, temperature, top_k, top_p, rng, n):
        """The adapter's loop with the LLM's KV cache: each step's hidden state goes through the head, the sampled
        slot's code vectors through the projector back into the LLM."""
        from transformers import DynamicCache

        mask = batch["attention_mask"]
        embeds = self.bridge.inputs_embeds(self.embed, batch["input_ids"], batch["image_tokens"], batch["num_slots"])
        position = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        cache_kw = _cache_keyword(self.llm)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position, use_cache=True,
                       output_hidden_states=True, logits_to_keep=1, **{cache_kw: cache})
        slots = []
        for i in range(n // self.bridge.per_slot):
            h = out.hidden_states[-1][:, -1]
            slot = self.bridge.sample(h[:B], h[B:] if cfg else None, cfg_scale, temperature, top_k, top_p, rng)
            slots.append(slot)  # (B, s²[, C]): one token, or a Token-Shuffle window
            if i == n // self.bridge.per_slot - 1:
                break
            step = self.bridge.project_slots(slot[:, None]).to(embeds.dtype)
            step = torch.cat([step, step]) if cfg else step
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position[:, -1:] + 1
            out = self.llm(inputs_embeds=step, attention_mask=mask, position_ids=position, use_cache=True,
                           output_hidden_states=True, logits_to_keep=1, **{cache_kw: cache})
        return list(self.bridge.from_slots(torch.stack(slots, dim=1)).cpu())

    @torch.no_grad()
    def generate_images(self, prompts: list[str | None], **kwargs: Any) -> torch.Tensor:
        """(B, 3, R, R) images in [-1, 1] for the prompts (kwargs: those of :meth:`generate_tokens`)."""
        tokens = self.generate_tokens(prompts, **kwargs)
        lengths = {t.shape[0] for t in tokens}
        if len(lengths) == 1:
            return self.image_tokenizer.decode(torch.stack(tokens).to(self.device))
        return torch.cat([self.image_tokenizer.decode(t[None].to(self.device)) for t in tokens])

    @torch.no_grad()
    def text_nll(self, texts: list[str], batch_size: int = 8) -> float:
        """Mean negative log-likelihood (nats per token) of plain texts: exp of it is the perplexity."""
        total, count = 0.0, 0
        for i in range(0, len(texts), batch_size):
            batch = self.collate([self.builder.text(t) for t in texts[i:i + batch_size]])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            targets = batch["labels"][:, 1:]
            nll = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE,
                                  reduction="sum")
            total += float(nll)
            count += int((targets != IGNORE).sum())
        return total / max(count, 1)

    # ---- save / load --------------------------------------------------------------------------------------------
    def delta_state(self) -> dict[str, torch.Tensor]:
        """What a save holds besides the rebuilt base: the bridge, the new rows, every trained LLM weight."""
        state = {f"bridge.{k}": v for k, v in self.bridge.state_dict().items()}
        row_ids = {id(p) for _, p in self._row_params}
        for key, p in self._row_params:
            state[key] = p[self.base_rows:]
        for name, p in self.llm.named_parameters():
            if p.requires_grad and id(p) not in row_ids:
                state[f"llm.{name}"] = p
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_delta_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.delta_state()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            raise CheckpointError(f"{source} does not match this MLLM: missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}, shape mismatch {shapes[:3]}; was it saved from another config?")
        load_state_dict_strict(self.bridge, {k[7:]: v for k, v in state.items() if k.startswith("bridge.")},
                               source)
        params = dict(self.llm.named_parameters())
        with torch.no_grad():
            for key, p in self._row_params:
                p[self.base_rows:] = state[key].to(p.device, p.dtype)
            for key, v in state.items():
                if key.startswith("llm."):
                    params[key[4:]].copy_(v.to(params[key[4:]].device, params[key[4:]].dtype))

    def config_dict(self) -> dict[str, Any]:
        from vistok import __version__

        return {"llm": self.llm_source, "bridge": self.bridge_cfg, "trainable": self.trainable,
                "chat_template": self.chat_template, "system_prompt": self.system_prompt, "features": self.features,
                "base_rows": self.base_rows, "vocab_rows": self.vocab_rows, "token_spec": self.spec.to_dict(),
                "_vistok": {"kind": "mllm", "name": "mllm", "class": f"{__name__}.MLLM", "config_version": 1,
                            "vistok_version": __version__}}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the folder atomically file by file (to a temporary folder, then moved in; config last)."""
        if not self.llm_source:
            raise ConfigError("this MLLM was built from an LLM instance without a source; build it with "
                              "MLLM.build(llm=<hub name | folder | .gguf>) so a save can rebuild it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            save_file(self.delta_state(), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            self.text_tokenizer.save_pretrained(str(tmp / "text_tokenizer"))
            self.image_tokenizer.save_pretrained(tmp / "tokenizer")
            if self.trainable["lora"]:
                self.llm.save_pretrained(str(tmp / "lora_adapter"), save_embedding_layers=False)  # peft's own files
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, sort_keys=True))
            for name in sorted(os.listdir(tmp), key=lambda n: n == CONFIG_NAME):
                target = directory / name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(tmp / name, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> MLLM:
        directory = Path(directory)
        cfg = read_config(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing; expected a folder written by MLLM.save_pretrained()")
        source = cfg["llm"]
        llm, text_tok = load_llm(source["source"], source.get("gguf_file"), tokenizer_dir=directory / "text_tokenizer")
        image_tok = load_pretrained(directory / "tokenizer", kind="tokenizer")
        model = cls(llm, text_tok, image_tok, bridge=cfg["bridge"], trainable=cfg["trainable"], llm_source=source,
                    chat_template=cfg["chat_template"], system_prompt=cfg["system_prompt"], features=cfg["features"])
        if model.vocab_rows != cfg["vocab_rows"]:
            raise CheckpointError(f"{directory}: the rebuilt vocabulary has {model.vocab_rows} rows, the save "
                                  f"{cfg['vocab_rows']}; was the LLM source changed?")
        model.load_delta_state(load_file(str(weights)), str(weights))
        return model.to(map_location).eval()

    def load_checkpoint_weights(self, folder: Path) -> None:
        """Resume: load a checkpoint's ``model/`` into this (already built) model."""
        weights = Path(folder) / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing; the checkpoint is incomplete")
        self.load_delta_state(load_file(str(weights)), str(weights))
