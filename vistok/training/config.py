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
class EMAConfig:
    """EMA of the trainable weights (``ema.py``). decay 0 turns it off; LlamaGen's GPT uses 0.9999, TiTok 0.999."""

    decay: float = 0.0
    start: int = 0  # before this step the EMA follows the weights
    every: int = 1  # update every k optimizer steps
    use_for_outputs: bool = True  # evaluation, image grids and save_pretrained (so the token cache) use EMA weights


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    batch_scope: str = "global"  # global: batch_size images per optimizer step over all ranks | per_rank
    grad_accum: int = 1  # micro-batches per optimizer step (each rank: its batch / grad_accum images at a time)
    parallel: str = "ddp"  # with several processes: ddp (full copy per rank) | fsdp (weights, grads, AdamW sharded)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8  # AdamW epsilon
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
    ema: EMAConfig = field(default_factory=EMAConfig)


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
    data: dict[str, Any] = field(default_factory=dict)  # held-out set (empty: see held_out_data_cfg)
    fid: bool = False  # also rFID/rKID (tokenizer stage) or FID/KID of samples vs the held-out set (generator stage)
    inception: str = "auto"  # auto | download | packaged | <weights path> (see docs/evaluation.md)


@dataclass
class GANConfig:
    """The adversarial loss (``vistok/losses/gan.py``); weight 0 turns it off. Defaults: LlamaGen's VQ training."""

    weight: float = 0.0  # LlamaGen 0.5 (disc_weight), TiTok 0.01-0.1, Open-MAGVIT2 0.1
    start: int = 0  # disc_start: no GAN term and no discriminator training before this step (LlamaGen 20000)
    discriminator: dict[str, Any] = field(default_factory=lambda: {"name": "patchgan"})
    d_loss: str = "hinge"  # hinge | non_saturating
    g_loss: str = "hinge"  # hinge | non_saturating
    adaptive_weight: bool = False  # VQGAN's gradient-norm ratio at the decoder's last layer
    adaptive_weight_max: float = 1e4
    lecam_weight: float = 0.0  # TiTok 0.001, Open-MAGVIT2 0.05
    lecam_decay: float = 0.999
    # the discriminator's own optimizer (AdamW) and schedule (warmup + cosine over the steps after `start`)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    grad_clip: float = 1.0


@dataclass
class LossConfig:
    """Training losses added to a tokenizer's own (tokenizer stage only)."""

    # None, or {name: lpips|convnext, weight: w, ...}, or a list of those (vistok/losses/perceptual.py)
    perceptual: Any = None
    gan: GANConfig = field(default_factory=GANConfig)


@dataclass
class RunConfig:
    stage: str = "tokenizer"  # tokenizer | generator
    run_dir: str = "runs/default"
    data: dict[str, Any] = field(default_factory=lambda: {"name": "shapes", "resolution": 32})
    model: dict[str, Any] = field(default_factory=lambda: {"name": "conv2d"})
    tokenizer: str | None = None  # generator stage: folder of a trained tokenizer
    token_cache_dir: str = "runs/.cache/tokens"
    token_cache_augment: str = "none"  # none | flip | ten_crop: views of each image the token cache encodes (LlamaGen)
    prompt: str = "caption"  # text-conditional generators: caption ("a red circle on a teal background") | class
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults ← YAML file ← ``key=value`` overrides. Errors name the file or override at fault."""
    from vistok.mllm.config import load_mllm_config, yaml_stage

    if yaml_stage(path) == "mllm":  # the LLM plug-in's stage has its own schema (vistok/mllm/config.py)
        return load_mllm_config(path, overrides)
    cfg = merge_yaml_and_overrides(OmegaConf.structured(RunConfig), path, overrides)
    if cfg.stage not in ("tokenizer", "generator"):
        raise ConfigError(f"stage must be 'tokenizer' or 'generator', got {cfg.stage!r}")
    if cfg.stage == "generator" and not cfg.tokenizer:
        raise ConfigError("stage 'generator' needs tokenizer=<folder of a trained tokenizer>")
    if cfg.stage == "generator" and (cfg.loss.perceptual or cfg.loss.gan.weight):
        raise ConfigError("loss.perceptual and loss.gan are tokenizer-stage losses; remove them for stage generator")
    if cfg.prompt not in ("caption", "class"):
        raise ConfigError(f"prompt must be 'caption' or 'class', got {cfg.prompt!r}")
    if cfg.token_cache_augment not in ("none", "flip", "ten_crop"):
        raise ConfigError(f"token_cache_augment must be none, flip or ten_crop, got {cfg.token_cache_augment!r}")
    if cfg.train.batch_scope not in ("global", "per_rank"):
        raise ConfigError(f"train.batch_scope must be 'global' or 'per_rank', got {cfg.train.batch_scope!r}")
    if cfg.train.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"train.parallel must be 'ddp' or 'fsdp', got {cfg.train.parallel!r}")
    if cfg.train.parallel == "fsdp" and cfg.loss.gan.weight and cfg.loss.gan.adaptive_weight:
        raise ConfigError("loss.gan.adaptive_weight needs the decoder's last layer whole on every rank; it does not "
                          "combine with train.parallel=fsdp (use ddp, or loss.gan.adaptive_weight=false)")
    if cfg.train.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {cfg.train.grad_accum}")
    return cfg


def to_container(section: Any) -> Any:
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section


def merge_yaml_and_overrides(schema: DictConfig, path: str | Path | None, overrides: list[str] | None) -> DictConfig:
    """``schema`` ← YAML file ← ``key=value`` overrides; a ConfigError names the file or override at fault."""
    cfg = schema
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}: {_first_line(e)}") from e
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override in {overrides}: {_first_line(e)}") from e


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]
