"""The experiment config: YAML files merged over typed defaults, with ``key=value`` CLI overrides (OmegaConf).

Component sections (``data``, ``model``) are free-form dicts handed to the registry, whose builders validate their
own keys; the trainer's sections are typed dataclasses, so a misspelt key or a wrong type fails at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vistok.errors import ConfigError


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 50
    image_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast; used where the device supports it)
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


@dataclass
class SampleConfig:
    """Sampling settings for the periodic sample grids of generator training (sample.py takes its own flags)."""

    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_images: int = 16


@dataclass
class EvalConfig:
    every: int = 0  # 0: off. Otherwise evaluate on a fixed held-out set every N steps (and at the end)
    num_images: int = 256
    data: dict[str, Any] = field(default_factory=dict)  # held-out set; empty: the training data with seed+1
    fid: bool = False  # also rFID/rKID (tokenizer stage) or FID/KID of samples vs the held-out set (generator stage)
    inception: str = "auto"  # auto | download | packaged | <weights path> (see docs/evaluation.md)


@dataclass
class RunConfig:
    stage: str = "tokenizer"  # tokenizer | generator
    run_dir: str = "runs/default"
    data: dict[str, Any] = field(default_factory=lambda: {"name": "shapes", "resolution": 32})
    model: dict[str, Any] = field(default_factory=lambda: {"name": "conv2d"})
    tokenizer: str | None = None  # generator stage: folder of a trained tokenizer
    token_cache_dir: str = "runs/.cache/tokens"
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults ← YAML file ← ``key=value`` overrides. Errors name the file or override at fault."""
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}: {_first_line(e)}") from e
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override in {overrides}: {_first_line(e)}") from e
    if cfg.stage not in ("tokenizer", "generator"):
        raise ConfigError(f"stage must be 'tokenizer' or 'generator', got {cfg.stage!r}")
    if cfg.stage == "generator" and not cfg.tokenizer:
        raise ConfigError("stage 'generator' needs tokenizer=<folder of a trained tokenizer>")
    return cfg


def to_container(section: Any) -> Any:
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]
