"""``run_training(cfg)``: what ``train.py`` does, callable from Python (thin CLI, thick library)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vistok.data import build_dataset
from vistok.data.token_cache import TEN_CROP_SCALE, build_token_cache
from vistok.errors import ConfigError
from vistok.hub import load_pretrained
from vistok.losses import AdversarialLoss, PerceptualLoss
from vistok.registry import build
from vistok.training import distributed
from vistok.training.checkpoint import latest_checkpoint
from vistok.training.config import to_container
from vistok.training.loop import pick_device, train
from vistok.training.tasks import GeneratorTask, TokenizerTask


def held_out_data_cfg(cfg: DictConfig) -> dict[str, Any]:
    """The eval set: ``eval.data`` if given; for generated data (shapes) the same generator with another seed;
    otherwise the training data itself (say so: a real held-out folder should be passed as eval.data). Evaluation
    never augments (the ADM center crop, as the metrics assume)."""
    if cfg.eval.data:
        return {k: v for k, v in to_container(cfg.eval.data).items() if k != "augment"}
    data = {k: v for k, v in to_container(cfg.data).items() if k != "augment"}
    if data.get("name") == "shapes":
        return {**data, "seed": int(data.get("seed", 0)) + 1000, "size": max(int(cfg.eval.num_images), 64)}
    return data


def run_training(cfg: DictConfig, *, resume: bool = False, overwrite: bool = False,
                 callbacks: list | None = None, progress: bool = True) -> Any:
    """Train as ``cfg`` says. Under ``torchrun`` every process calls this; it joins the process group (and leaves
    it at the end, also after an error)."""
    if cfg.stage == "mllm":  # the LLM plug-in (vistok/mllm/train.py)
        from vistok.mllm.train import run_mllm

        return run_mllm(cfg, resume=resume, overwrite=overwrite, callbacks=callbacks, progress=progress)
    env, dist_device = distributed.setup(cfg.train.device)
    try:
        return _run(cfg, env, dist_device, resume=resume, overwrite=overwrite, callbacks=callbacks, progress=progress)
    finally:
        distributed.teardown(env)


def _run(cfg: DictConfig, env: distributed.DistEnv, dist_device: torch.device | None, *, resume: bool,
         overwrite: bool, callbacks: list | None, progress: bool) -> Any:
    run_dir = Path(cfg.run_dir)
    if overwrite and run_dir.exists() and env.is_main:
        shutil.rmtree(run_dir)
    distributed.barrier()
    if not resume and latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"{run_dir} already has checkpoints; pass --resume to continue it or --overwrite to start "
                          "over (or choose another run_dir=...)")
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    device = dist_device or pick_device(cfg.train.device)
    data_cfg = to_container(cfg.data)
    dataset = build_dataset(data_cfg)
    model_cfg = to_container(cfg.model)

    if cfg.stage == "tokenizer":
        model_cfg.setdefault("resolution", data_cfg.get("resolution", 256))
        torch.manual_seed(cfg.train.seed)
        model = build("tokenizer", model_cfg)
        perceptual = PerceptualLoss(to_container(cfg.loss.perceptual)) if cfg.loss.perceptual else None
        gan = cfg.loss.gan
        adversary = None
        if gan.weight > 0:
            adversary = AdversarialLoss(to_container(gan.discriminator), weight=gan.weight, start=gan.start,
                                        d_loss=gan.d_loss, g_loss=gan.g_loss, adaptive_weight=gan.adaptive_weight,
                                        adaptive_weight_max=gan.adaptive_weight_max, lecam_weight=gan.lecam_weight,
                                        lecam_decay=gan.lecam_decay)
        task = TokenizerTask(model, build_dataset(held_out_data_cfg(cfg)), cfg.eval.num_images,
                             cfg.train.batch_size, fid_inception=cfg.eval.inception if cfg.eval.fid else None,
                             perceptual=perceptual, adversary=adversary, adversary_optim=gan)
    else:
        tokenizer = load_pretrained(cfg.tokenizer, kind="tokenizer")
        if data_cfg.get("resolution", tokenizer.resolution) != tokenizer.resolution:
            raise ConfigError(f"data.resolution={data_cfg['resolution']} but the tokenizer in {cfg.tokenizer} "
                              f"takes {tokenizer.resolution}×{tokenizer.resolution} images")
        if not env.is_main:
            distributed.barrier()  # rank 0 encodes the dataset first; the others then read its cache
        source = dataset
        if cfg.token_cache_augment == "ten_crop":  # crops of the ⌊1.1R⌋ center crop
            source = build_dataset({**data_cfg, "resolution": int(tokenizer.resolution * TEN_CROP_SCALE)})
        tokens = build_token_cache(tokenizer, cfg.tokenizer, source, data_cfg, cfg.token_cache_dir,
                                   batch_size=cfg.train.batch_size, num_workers=cfg.train.num_workers,
                                   device=device, progress=progress and env.is_main, augment=cfg.token_cache_augment)
        if env.is_main:
            tokenizer.save_pretrained(run_dir / "tokenizer")  # a generator run folder is self-contained
            distributed.barrier()
        torch.manual_seed(cfg.train.seed)
        model = build("generator", model_cfg, token_spec=tokenizer.token_spec.to_dict(),
                      num_classes=len(dataset.class_names), class_names=list(dataset.class_names))
        if hasattr(model, "set_codebook") and hasattr(model, "codebook"):  # xAR's flow head regresses the codes
            quantizer = getattr(tokenizer, "quantizer", None)
            if quantizer is None:
                raise ConfigError(f"the flow head needs the code vectors of the tokenizer in {cfg.tokenizer}")
            model.set_codebook(quantizer.indices_to_codes(torch.arange(model.codebook.shape[0])[None])[0].detach())
        prompts = None
        if getattr(model, "conditions_on_text", False):
            if tokens.captions is None:
                raise ConfigError(f"model.conditioning is text but the dataset {data_cfg.get('name')!r} has no "
                                  "captions; use data.name=shapes or a class conditioning")
            if cfg.prompt == "class":  # "a red circle" (shapes) / the class name, as the MLLM recipes' prompts
                from vistok.mllm.train import texts_for

                tokens.captions = texts_for(dataset, tokens.labels, None, "class")
            prompts = tokens.captions
        task = GeneratorTask(model, tokenizer, cfg.sample, seed=cfg.train.seed, sample_prompts=prompts,
                             eval_dataset=build_dataset(held_out_data_cfg(cfg)) if cfg.eval.fid else None,
                             eval_images=cfg.eval.num_images, fid_inception=cfg.eval.inception)
        dataset = tokens
    return train(task, dataset, cfg.train, run_dir, resume=resume, device=device, callbacks=callbacks,
                 eval_every=cfg.eval.every, progress=progress)
