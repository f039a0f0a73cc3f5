"""The ``mllm`` stage's config: typed defaults (OmegaConf structured) ← YAML ← ``key=value`` overrides, as the other
stages (``vistok.training.config``), with the trainer's own sections (``train``, ``sample``, ``eval``) reused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vistok.errors import ConfigError
from vistok.training.config import EvalConfig, SampleConfig, TrainConfig, merge_yaml_and_overrides


@dataclass
class LLMSource:
    source: str = "smollm2"  # hub name | folder | .gguf file | smollm2 | random:tiny-llama
    gguf_file: str | None = None  # a GGUF file inside a folder source


@dataclass
class Trainable:
    bridge: Any = True  # true: projector + head (adapter bridge); "head": the head alone (the projector stays at
    # its initialization, so with last_blocks nothing below the trained blocks needs a gradient: a step costs a
    # forward pass plus the trained blocks' backward)
    new_rows: Any = True  # embedding rows of the added tokens; "output": trained from the output side only (the input
    # lookup is detached: with last_blocks, backward then stops at the trained blocks)
    lora: Any = None  # None, or {r, alpha, dropout, target_modules}
    last_blocks: int = 0
    all: bool = False


@dataclass
class Objectives:
    """Weights of the three kinds of training sequences (each item draws one)."""

    understanding: float = 1.0
    generation: float = 1.0
    text: float = 0.0


@dataclass
class MLLMEval:
    understanding_images: int = 64  # held-out images answered per evaluation
    text_chunks: int = 16  # held-out text chunks for the perplexity check
    generation_images: int = 0  # images generated per evaluation and scored by the shapes judge (0: off; shapes only)
    judge_steps: int = 1000  # training steps of that judge (on real shapes, once per run)
    judge_train_size: int = 16000  # real shapes it trains on


@dataclass
class MLLMRunConfig:
    stage: str = "mllm"
    run_dir: str = "runs/mllm"
    data: dict[str, Any] = field(default_factory=lambda: {"name": "shapes", "resolution": 32})
    tokenizer: str | None = None  # folder of a trained vistok tokenizer
    token_cache_dir: str = "runs/.cache/tokens"
    llm: LLMSource = field(default_factory=LLMSource)
    bridge: Any = "auto"  # auto | vocabulary | adapter | {name: ..., options}
    features: str = "codes"  # codes | semantic (dual tokenizers: the semantic codes)
    trainable: Trainable = field(default_factory=Trainable)
    objectives: Objectives = field(default_factory=Objectives)
    prompt_dropout: float = 0.1  # generation prompts dropped to <uncond> for CFG (Liquid ~0.1)
    chat_template: bool = True
    system_prompt: str | None = None  # None: the template's default system turn
    question: str = "What is in this image?"
    text_chars: int = 800  # the text objective's chunks hold text_chars/2 to text_chars characters (~4 per token):
    # a batch pads to its longest row, so chunks much longer than the image sequences multiply a step's cost
    answer: str = "class"  # class: "a red circle" (shapes) / the class name | caption: the full caption
    prompt: str = "caption"  # generation prompts: caption | class
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mllm_eval: MLLMEval = field(default_factory=MLLMEval)


def yaml_stage(path: str | Path | None) -> str | None:
    """The ``stage`` a YAML file declares (None when it has none or cannot be read here)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return OmegaConf.load(path).get("stage")
    except OmegaConfBaseException:
        return None


def load_mllm_config(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    cfg = merge_yaml_and_overrides(OmegaConf.structured(MLLMRunConfig), path, overrides)
    if not cfg.tokenizer:
        raise ConfigError("stage 'mllm' needs tokenizer=<folder of a trained vistok tokenizer>")
    if cfg.answer not in ("class", "caption") or cfg.prompt not in ("class", "caption"):
        raise ConfigError(f"answer and prompt must be 'class' or 'caption', got {cfg.answer!r}, {cfg.prompt!r}")
    if not 0 <= cfg.prompt_dropout < 1:
        raise ConfigError(f"prompt_dropout must be in [0, 1), got {cfg.prompt_dropout}")
    t = cfg.trainable
    if t.new_rows and not t.all and cfg.train.weight_decay > 0:
        raise ConfigError("train.weight_decay must be 0 while trainable.new_rows trains part of the embedding table "
                          "(decay would move the LLM's own rows); set train.weight_decay=0 or trainable.all=true")
    if t.new_rows not in (True, False, "output"):
        raise ConfigError(f"trainable.new_rows must be true, false or 'output', got {t.new_rows!r}")
    if t.bridge not in (True, False, "head"):
        raise ConfigError(f"trainable.bridge must be true, false or 'head', got {t.bridge!r}")
    if not (t.bridge or t.new_rows or t.lora or t.last_blocks or t.all):
        raise ConfigError("trainable: nothing trains; enable bridge, new_rows, lora, last_blocks or all")
    if cfg.train.ema.decay > 0:
        raise ConfigError("train.ema is not supported by the mllm stage (its saves hold trained deltas only)")
    return cfg
