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

    def __init__(self, model: Any, eval_dataset: Dataset, eval_images: int = 256, batch_size: int = 64,
                 fid_inception: str | None = None) -> None:
        self.model = model
        self.eval_dataset, self.eval_images, self.batch_size = eval_dataset, eval_images, batch_size
        self.fid = _PeriodicFID(fid_inception)
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
        if not self.fid.enabled:
            return evaluate_reconstruction(self.model, self.eval_dataset, num_images=self.eval_images,
                                           batch_size=self.batch_size, device=device, progress=False)
        from vistok.metrics.reconstruction_fid import rfid

        result = rfid(self.model, self.eval_dataset, inception=self.fid.choice(), num_images=self.eval_images,
                      batch_size=self.batch_size, device=device, progress=False, extractor=self.fid.extractor(device))
        return {k: float(v) for k, v in result.items()
                if k in ("rfid", "rkid", "psnr", "ssim", "codebook_usage", "codebook_perplexity", "code_entropy_bits",
                         "bits_per_image")}


class GeneratorTask:
    """Stage 2: cached tokens + labels → next-token loss; sample grids decoded by the frozen tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, sample_cfg: Any, seed: int = 0,
                 sample_prompts: list[str] | None = None, eval_dataset: Dataset | None = None,
                 eval_images: int = 256, fid_inception: str | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer.eval().requires_grad_(False)
        self.sample_cfg, self.seed = sample_cfg, seed
        self.eval_dataset, self.eval_images = eval_dataset, eval_images
        self.fid = _PeriodicFID(fid_inception if eval_dataset is not None else None)
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
        """With ``eval.fid``: FID/KID of ``eval.num_images`` class-conditional samples (labels of the held-out images,
        the sampling settings of ``sample``) against those held-out images, at the tokenizer's resolution."""
        if not self.fid.enabled:
            return {}
        from vistok.metrics.fidelity import fid

        device = next(self.model.parameters()).device
        self.tokenizer.to(device)
        n = min(self.eval_images, len(self.eval_dataset))
        items = [self.eval_dataset[i] for i in range(n)]
        real = torch.stack([it["image"] for it in items])
        # the held-out images' own conditions: captions for a text-conditional model, class labels otherwise
        if self.text:
            conditions = [str(it["caption"]) for it in items]
            chunks = [conditions[i:i + 64] for i in range(0, n, 64)]
        else:
            chunks = [c.to(device) for c in torch.tensor([int(it["label"]) for it in items]).split(64)]
        s, samples = self.sample_cfg, []
        gen = torch.Generator(device).manual_seed(self.seed)
        for chunk in chunks:
            tokens = self.model.generate(chunk, cfg_scale=s.cfg_scale, temperature=s.temperature,
                                         top_k=s.top_k, top_p=s.top_p, generator=gen)
            samples.append(self.tokenizer.decode(tokens).cpu())
        result = fid(torch.cat(samples), real, inception=self.fid.choice(), metrics=("fid", "kid"),
                     resolution=int(real.shape[-1]), device=device, seed=self.seed, progress=False)
        return {"fid": float(result["fid"]), "kid": float(result["kid"])}


class _PeriodicFID:
    """The Inception choice for periodic (r)FID during training, resolved once on first use (None: off)."""

    def __init__(self, inception: str | None) -> None:
        self.inception, self._choice, self._extractor = inception, None, None

    @property
    def enabled(self) -> bool:
        return self.inception is not None

    def choice(self) -> Any:
        if self._choice is None:
            from vistok.metrics.inception import resolve_inception

            self._choice = resolve_inception(self.inception)
        return self._choice

    def extractor(self, device: torch.device) -> Any:
        if self._extractor is None:
            self._extractor = self.choice().create(["2048"], device)
        return self._extractor
