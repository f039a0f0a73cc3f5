"""Reconstruction evaluation of a tokenizer on a dataset: PSNR, SSIM, codebook usage, bits/image, plus a grid of
original/reconstruction pairs and a per-image CSV. Used by ``eval/recon.py`` and by training's periodic eval."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vistok.metrics.codebook import CodebookUsage
from vistok.metrics.recon import psnr, ssim, to_unit_range


@torch.no_grad()
def evaluate_reconstruction(tokenizer: Any, dataset: Dataset, *, num_images: int | None = None, batch_size: int = 64,
                            device: torch.device | str = "cpu", num_workers: int = 0, progress: bool = True,
                            pairs_path: str | Path | None = None, csv_path: str | Path | None = None,
                            num_pairs: int = 16,
                            on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    """Reconstruct ``num_images`` (all by default) images and return mean PSNR (dB), SSIM and codebook stats.

    PSNR/SSIM are computed per image on uint8-quantized images (what a saved PNG holds) and averaged.
    ``on_batch(originals, reconstructions)`` (both [-1, 1], on the device) sees every batch, in order: rFID uses it
    to collect the images for Inception.
    """
    if num_images is not None and num_images < len(dataset):
        dataset = Subset(dataset, range(num_images))
    if len(dataset) == 0:
        raise ValueError("evaluate_reconstruction: the dataset is empty")
    tokenizer = tokenizer.to(device).eval()
    spec = tokenizer.token_spec
    usage = CodebookUsage(spec)
    psnrs, ssims, indices = [], [], []
    pair_orig, pair_rec = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    for batch in tqdm(loader, desc="reconstructing", disable=not progress, dynamic_ncols=True):
        images = batch["image"].to(device)
        tokens = tokenizer.encode(images)
        recon = tokenizer.decode(tokens)
        usage.update(tokens)
        if on_batch is not None:
            on_batch(images, recon)
        x, y = to_unit_range(images), to_unit_range(recon)
        psnrs.append(psnr(x, y).cpu())
        ssims.append(ssim(x, y).cpu())
        indices.append(torch.as_tensor(batch.get("index", torch.arange(len(images)))))
        if sum(len(p) for p in pair_orig) < num_pairs:
            pair_orig.append(images.cpu())
            pair_rec.append(recon.cpu())
    all_psnr, all_ssim = torch.cat(psnrs), torch.cat(ssims)
    finite = all_psnr[torch.isfinite(all_psnr)]
    result = {
        "psnr": float(finite.mean()) if len(finite) else float("inf"),
        "ssim": float(all_ssim.mean()),
        **usage.result(),
        "bits_per_image": spec.bits_per_image(),
        "num_tokens": spec.length,
        "num_images": len(all_psnr),
    }
    if pairs_path is not None:
        from vistok.data.imageio import make_pairs_grid

        make_pairs_grid(torch.cat(pair_orig)[:num_pairs], torch.cat(pair_rec)[:num_pairs], pairs_path)
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "psnr", "ssim"])
            for i, p, s in zip(torch.cat(indices).tolist(), all_psnr.tolist(), all_ssim.tolist(), strict=True):
                writer.writerow([i, f"{p:.4f}", f"{s:.6f}"])
    return result
