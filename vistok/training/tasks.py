"""The two training stages as Tasks for ``loop.train``: what one batch's loss is, what to draw, what to measure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vistok.metrics.evaluate import evaluate_reconstruction
from vistok.training import distributed


def _scalars(d: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v.detach()) for k, v in d.items()}


def _batch_codebook_stats(tokens: torch.Tensor, spec: Any) -> dict[str, float]:
    """Codebook usage and perplexity of this step's *global* batch (tokens gathered from every rank), per index
    channel and averaged, as the evaluation's ``CodebookUsage`` defines them; the same numbers at any world size."""
    from vistok.metrics.codebook import CodebookUsage

    usage = CodebookUsage(spec)
    usage.update(distributed.gather_cat(tokens.detach()))
    result = usage.result()
    return {"batch_codebook_usage": result["codebook_usage"],
            "batch_codebook_perplexity": result["codebook_perplexity"]}


class TokenizerTask:
    """Stage 1: images → reconstruction + named losses; grids of original/reconstruction pairs; PSNR/SSIM eval.

    The loss is the tokenizer's own (pixel + quantizer/KL/distillation terms) plus, when configured, perceptual terms
    on the reconstruction (``perceptual``: a :class:`~vistok.losses.perceptual.PerceptualLoss`) and the adversarial
    term (``adversary``: an :class:`~vistok.losses.gan.AdversarialLoss`, trained as the loop's ``discriminator``
    with the settings ``adversary_optim``). VQGAN's adaptive weight balances the GAN term against
    L_nll = pixel + perceptual at the tokenizer's ``last_layer``. Works for any tokenizer whose forward returns a
    ``TokenizerOutput`` with a ``"recon"`` loss.
    """

    def __init__(self, model: Any, eval_dataset: Dataset, eval_images: int = 256, batch_size: int = 64,
                 fid_inception: str | None = None, perceptual: Any = None, adversary: Any = None,
                 adversary_optim: Any = None) -> None:
        self.model = self.train_model = model
        self.eval_dataset, self.eval_images, self.batch_size = eval_dataset, eval_images, batch_size
        self.fid = _PeriodicFID(fid_inception)
        n = min(16, len(eval_dataset))
        self.fixed = torch.stack([eval_dataset[i]["image"] for i in range(n)])
        self.perceptual = perceptual
        self.discriminator = self.train_discriminator = adversary
        if adversary is not None:
            self.discriminator_optim = adversary_optim
        self._for_discriminator: tuple[torch.Tensor, torch.Tensor] | None = None

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        out = self.train_model(images)
        losses = dict(out.losses)
        if self.perceptual is not None:
            self.perceptual.to(images.device)
            losses.update(self.perceptual(out.reconstruction, images))
        logs: dict[str, float] = {}
        if self.discriminator is not None:
            nll = losses["recon"] + sum((losses[k] for k in getattr(self.perceptual, "names", [])), 0.0)
            gan, logs = self.discriminator.generator_loss(out.reconstruction, nll, step,
                                                          getattr(self.model, "last_layer", None))
            if self.discriminator.active(step):
                losses["gan"] = gan
            self._for_discriminator = (images, out.reconstruction.detach())
        loss = sum(losses.values())
        stats = _scalars(out.stats)
        if out.tokens is not None:
            stats.update(_batch_codebook_stats(out.tokens, self.model.token_spec))
        return loss, {**_scalars(losses, "loss/"), **stats, **logs}

    def discriminator_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's loss on this micro-batch's images and the reconstructions its training_step made."""
        images, recon = self._for_discriminator
        self._for_discriminator = None
        return self.discriminator.discriminator_loss(self.train_discriminator, images, recon)

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
        self.train_model = model
        self.sample_cfg, self.seed = sample_cfg, seed
        self.eval_dataset, self.eval_images = eval_dataset, eval_images
        self.fid = _PeriodicFID(fid_inception if eval_dataset is not None else None)
        num_classes = model.num_classes
        n = int(sample_cfg.num_images)
        self.text = bool(getattr(model, "conditions_on_text", False))  # prompts (captions) instead of labels
        self.sample_labels = list(sample_prompts or [])[:n] if self.text else torch.arange(n) % num_classes

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.train_model(batch["tokens"], batch["caption"] if self.text else batch["label"])
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
