"""The two training stages as Tasks for ``loop.train``: what one batch's loss is, what to draw, what to measure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vistok.metrics.evaluate import evaluate_reconstruction


def _scalars(d: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v.detach()) for k, v in d.items()}


class TokenizerTask:
    """Stage 1: images → reconstruction + named losses; grids of original/reconstruction pairs; PSNR/SSIM eval."""

    def __init__(self, model: Any, eval_dataset: Dataset, eval_images: int = 256, batch_size: int = 64) -> None:
        self.model = model
        self.eval_dataset, self.eval_images, self.batch_size = eval_dataset, eval_images, batch_size
        n = min(16, len(eval_dataset))
        self.fixed = torch.stack([eval_dataset[i]["image"] for i in range(n)])

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(batch["image"])
        loss = sum(out.losses.values())
        return loss, {**_scalars(out.losses, "loss/"), **_scalars(out.stats)}

    def save_images(self, step: int, path: Path) -> None:
        from vistok.data.imageio import make_pairs_grid

        device = next(self.model.parameters()).device
        recon = self.model.decode(self.model.encode(self.fixed.to(device)))
        make_pairs_grid(self.fixed, recon.cpu(), path)

    def evaluate(self, step: int) -> dict[str, float]:
        device = next(self.model.parameters()).device
        return evaluate_reconstruction(self.model, self.eval_dataset, num_images=self.eval_images,
                                       batch_size=self.batch_size, device=device, progress=False)


class GeneratorTask:
    """Stage 2: cached tokens + labels → next-token loss; sample grids decoded by the frozen tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, sample_cfg: Any, seed: int = 0,
                 sample_prompts: list[str] | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer.eval().requires_grad_(False)
        self.sample_cfg, self.seed = sample_cfg, seed
        num_classes = model.num_classes
        n = int(sample_cfg.num_images)
        self.text = bool(getattr(model, "conditions_on_text", False))  # prompts (captions) instead of labels
        self.sample_labels = list(sample_prompts or [])[:n] if self.text else torch.arange(n) % num_classes

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(batch["tokens"], batch["caption"] if self.text else batch["label"])
        return out.loss, {**_scalars(out.losses, "loss/"), **_scalars(out.stats)}

    def save_images(self, step: int, path: Path) -> None:
        from vistok.data.imageio import save_grid

        device = next(self.model.parameters()).device
        self.tokenizer.to(device)
        s = self.sample_cfg
        labels = self.sample_labels if self.text else self.sample_labels.to(device)
        tokens = self.model.generate(labels, cfg_scale=s.cfg_scale, temperature=s.temperature,
                                     top_k=s.top_k, top_p=s.top_p,
                                     generator=torch.Generator(device).manual_seed(self.seed))
        save_grid(self.tokenizer.decode(tokens).cpu(), path)

    def evaluate(self, step: int) -> dict[str, float]:
        return {}  # FID on samples is the evaluation harness's job (eval/fid.py)
