"""The ``mllm`` training stage: ``python train.py --config configs/mllm/<…>.yaml`` (what ``run_mllm`` does).

1. Build the MLLM (LLM + frozen tokenizer + bridge; what trains as ``trainable`` says).
2. Encode the dataset once with the frozen tokenizer (the token cache the generator stage uses).
3. Mix understanding, generation and text-only sequences by ``objectives`` weights; generation prompts are dropped
   to ``<uncond>`` with probability ``prompt_dropout``.
4. Train with the shared loop (AdamW, warmup + cosine, clipping, accumulation, atomic checkpoints, ``--resume``);
   evaluations report understanding accuracy on held-out images and the held-out text perplexity, measured once
   before training too (``text_ppl.json`` keeps both).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vistok.data import build_dataset
from vistok.data.token_cache import build_token_cache
from vistok.errors import ConfigError
from vistok.hub import load_pretrained
from vistok.mllm.data import MLLMDataset, stdlib_text
from vistok.mllm.evaluation import (
    article,
    generate_for_prompts,
    perplexity,
    shape_prompts,
    understanding_accuracy,
)
from vistok.mllm.model import MLLM
from vistok.training.checkpoint import latest_checkpoint
from vistok.training.config import to_container
from vistok.training.loop import pick_device, train


def texts_for(dataset: Any, labels: torch.Tensor, captions: list[str] | None, mode: str) -> list[str]:
    """Per-image text: ``class`` → "a red circle" / the class name; ``caption`` → the dataset's caption."""
    if mode == "caption" and captions:
        return list(captions)
    names = list(dataset.class_names)
    shapes = getattr(dataset, "registry_name", "") == "shapes"
    return [article(names[int(y)]) if shapes else names[int(y)] for y in labels]


class MLLMTask:
    """The loop's Task for the mllm stage."""

    def __init__(self, model: MLLM, eval_images: torch.Tensor, eval_targets: list[str], shapes: bool,
                 held_out_text: list[str], cfg: DictConfig) -> None:
        self.model, self.cfg = model, cfg
        self.eval_images, self.eval_targets, self.shapes = eval_images, eval_targets, shapes
        self.held_out_text = held_out_text
        self.sample_prompts = (eval_targets * 8)[: max(1, int(cfg.sample.num_images))]
        self.last_metrics: dict[str, float] = {}
        self.judge = None
        n = int(cfg.mllm_eval.generation_images)
        if n and shapes:  # "a <color> <shape>" prompts in turn, scored by a judge trained on real shapes only
            prompts, shape_idx, color_idx = shape_prompts()
            self.gen_targets = [(prompts[i % 24], shape_idx[i % 24], color_idx[i % 24]) for i in range(n)]

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        used = int(batch["attention_mask"].any(0).nonzero().max()) + 1  # drop padding columns no row uses
        batch = {k: v[:, :used] if k in ("input_ids", "labels", "attention_mask") else v for k, v in batch.items()}
        loss, stats = self.train_model(**batch)
        return loss, {k: float(v) for k, v in stats.items()}

    def save_images(self, step: int, path: Path) -> None:
        from vistok.data.imageio import save_grid

        s = self.cfg.sample
        images = self.model.generate_images(self.sample_prompts, cfg_scale=s.cfg_scale, temperature=s.temperature,
                                            top_k=s.top_k, top_p=s.top_p, seed=self.cfg.train.seed)
        save_grid(images.cpu(), path)

    def generation_accuracy(self) -> dict[str, float]:
        from vistok.data.judge import judge_accuracy, train_judge

        if self.judge is None:
            e = self.cfg.mllm_eval
            with torch.enable_grad():  # evaluations run under no_grad; the judge trains here, once
                self.judge, held = train_judge(self.model.image_tokenizer.resolution, steps=int(e.judge_steps),
                                               train_size=int(e.judge_train_size),
                                               held_out_size=min(2000, int(e.judge_train_size)), progress=False)
            self.judge_held_out = held
        s = self.cfg.sample
        prompts, shape_idx, color_idx = map(list, zip(*self.gen_targets))
        images = generate_for_prompts(self.model, prompts, batch_size=8, seed=self.cfg.train.seed,
                                      cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        acc = judge_accuracy(self.judge, images, shape_idx, color_idx)
        return {"generation_acc": acc["both"], "generation_shape": acc["shape"], "generation_color": acc["color"],
                "judge_held_out_acc": self.judge_held_out["both"]}

    def evaluate(self, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if len(self.eval_images):
            und = understanding_accuracy(self.model, self.eval_images, self.eval_targets, self.cfg.question,
                                         self.shapes)
            metrics["understanding_acc"] = und["accuracy"]
        if int(self.cfg.mllm_eval.generation_images) and self.shapes:
            metrics.update(self.generation_accuracy())
        if self.held_out_text:
            metrics["text_ppl"] = perplexity(self.model, self.held_out_text)
        self.last_metrics = metrics
        return metrics


def build_model(cfg: DictConfig) -> MLLM:
    return MLLM.build(to_container(cfg.llm), cfg.tokenizer, bridge=to_container(cfg.bridge),
                      trainable=to_container(cfg.trainable), chat_template=cfg.chat_template,
                      system_prompt=cfg.system_prompt, features=cfg.features)


def run_mllm(cfg: DictConfig, *, resume: bool = False, overwrite: bool = False, callbacks: list | None = None,
             progress: bool = True) -> MLLM:
    from vistok.training.run import held_out_data_cfg

    run_dir = Path(cfg.run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    if not resume and latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"{run_dir} already has checkpoints; pass --resume to continue it or --overwrite to start "
                          "over (or choose another run_dir=...)")
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    device = pick_device(cfg.train.device)

    tokenizer = load_pretrained(cfg.tokenizer, kind="tokenizer")
    data_cfg = to_container(cfg.data)
    if data_cfg.get("resolution", tokenizer.resolution) != tokenizer.resolution:
        raise ConfigError(f"data.resolution={data_cfg['resolution']} but the tokenizer in {cfg.tokenizer} takes "
                          f"{tokenizer.resolution}×{tokenizer.resolution} images")
    dataset = build_dataset(data_cfg)
    cache = build_token_cache(tokenizer, cfg.tokenizer, dataset, data_cfg, cfg.token_cache_dir,
                              batch_size=min(256, max(1, len(dataset))), device=device, progress=progress)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    answers = texts_for(dataset, cache.labels, cache.captions, cfg.answer)
    prompts = texts_for(dataset, cache.labels, cache.captions, cfg.prompt)
    o = cfg.objectives
    objectives = {"understanding": o.understanding, "generation": o.generation, "text": o.text}
    train_text = stdlib_text("train", chunk_chars=int(cfg.text_chars) // 2) if o.text > 0 else None
    train_set = MLLMDataset(model.builder, cache.tokens.long(), prompts, answers, objectives,
                            prompt_dropout=cfg.prompt_dropout, seed=cfg.train.seed, texts=train_text,
                            question=cfg.question)

    held = build_dataset(held_out_data_cfg(cfg))
    n_eval = min(int(cfg.mllm_eval.understanding_images), len(held))
    items = [held[i] for i in range(n_eval)]
    eval_images = torch.stack([it["image"] for it in items]) if items else torch.zeros(0)
    eval_targets = texts_for(held, torch.tensor([int(it["label"]) for it in items]),
                             [it.get("caption", "") for it in items], cfg.answer) if items else []
    held_text = stdlib_text("held_out")[: int(cfg.mllm_eval.text_chunks)]
    shapes = data_cfg.get("name") == "shapes"
    task = MLLMTask(model, eval_images, eval_targets, shapes, held_text, cfg)

    ppl_file = run_dir / "text_ppl.json"
    if latest_checkpoint(run_dir) is None and held_text:  # before any training step
        model.to(device).eval()
        before = perplexity(model, held_text)
        ppl_file.write_text(json.dumps({"before": before}, indent=2))
        with (run_dir / "log.jsonl").open("a") as f:
            f.write(json.dumps({"step": 0, "eval": {"text_ppl": before}}) + "\n")
    trained = train(task, train_set, cfg.train, run_dir, resume=resume, device=device, callbacks=callbacks,
                    eval_every=cfg.eval.every, progress=progress)
    if held_text and ppl_file.is_file():
        record = json.loads(ppl_file.read_text())
        record["after"] = task.last_metrics.get("text_ppl")
        ppl_file.write_text(json.dumps(record, indent=2))
    return trained
