"""rFID of a tokenizer: FID (and KID) between a dataset's images and their reconstructions, both at the evaluation
resolution, plus PSNR, SSIM, codebook usage/perplexity and bits/image (``evaluate_reconstruction``).

As the tokenizer papers (VQGAN, LlamaGen, TiTok, ...) compute it: every image is center-cropped to R×R (ADM rule,
``vistok.data.imageio.center_crop_resize``), encoded and decoded; originals and reconstructions are quantized to
uint8 (what a saved PNG holds) and both go through the same Inception (torch-fidelity). Paper numbers use ImageNet
val, 50,000 images at 256×256; numbers from other N or R are not comparable with them (the result records both).

The uint8 originals and reconstructions are written to two memory-mapped arrays (in ``work_dir``, default a temp
folder) so 50,000 images at 256×256 do not have to fit in RAM; the originals' features are cached by content hash,
so evaluating a second tokenizer on the same data only runs Inception on its reconstructions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.data.imageio import tensor_to_uint8
from vistok.metrics.evaluate import evaluate_reconstruction
from vistok.metrics.fidelity import (
    DEFAULT_SEED,
    _provenance,
    check_finite,
    extract_features,
    metrics_from_features,
    small_set_warning,
)
from vistok.metrics.image_sets import ArrayImages
from vistok.metrics.inception import InceptionChoice, default_cache_dir, resolve_inception


class _Collector:
    """Writes each batch's uint8 originals/reconstructions (NHWC) into preallocated memory-mapped arrays."""

    def __init__(self, work_dir: Path, n: int, resolution: int) -> None:
        shape = (n, resolution, resolution, 3)
        self.originals = np.lib.format.open_memmap(work_dir / "originals.npy", "w+", np.uint8, shape)
        self.reconstructions = np.lib.format.open_memmap(work_dir / "reconstructions.npy", "w+", np.uint8, shape)
        self.count = 0

    def __call__(self, images: torch.Tensor, recon: torch.Tensor) -> None:
        if recon.shape != images.shape:
            raise ValueError(f"reconstructions {tuple(recon.shape)} differ from the inputs {tuple(images.shape)}")
        k = len(images)
        self.originals[self.count:self.count + k] = tensor_to_uint8(images).numpy()
        self.reconstructions[self.count:self.count + k] = tensor_to_uint8(recon).numpy()
        self.count += k


def rfid(tokenizer: Any, dataset: Dataset, *, inception: str | InceptionChoice = "auto", num_images: int | None = None,
         batch_size: int = 64, device: torch.device | str = "cpu", seed: int = DEFAULT_SEED, kid: bool = True,
         cache_dir: str | Path | None = None, use_cache: bool = True, work_dir: str | Path | None = None,
         progress: bool = True, pairs_path: str | Path | None = None, csv_path: str | Path | None = None,
         tokenizer_path: str | None = None, extractor: torch.nn.Module | None = None) -> dict[str, Any]:
    """Reconstruct ``num_images`` images of ``dataset`` (items ``{"image": (3, R, R) in [-1, 1]}``) and return rFID,
    rKID, PSNR, SSIM, codebook stats and how they were computed. ``extractor``: a ready torch-fidelity extractor
    for ``inception`` (periodic evaluation during training reuses one)."""
    choice = inception if isinstance(inception, InceptionChoice) else resolve_inception(inception, cache_dir)
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    resolution = int(dataset[0]["image"].shape[-1])
    cache_root = Path(cache_dir or default_cache_dir()) / "fidelity" if use_cache else None
    if extractor is None:
        extractor = choice.create(["2048"], device)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        collect = _Collector(Path(tmp), n, resolution)
        recon = evaluate_reconstruction(tokenizer, dataset, num_images=n, batch_size=batch_size, device=device,
                                        progress=progress, pairs_path=pairs_path, csv_path=csv_path,
                                        on_batch=collect)
        originals = ArrayImages(collect.originals, "originals (uint8)")
        reconstructions = ArrayImages(collect.reconstructions, "reconstructions (uint8)")
        feats_o, cache_o = extract_features(originals, extractor, batch_size=batch_size, device=device,
                                            cache_root=cache_root, weights_sha256=choice.weights_sha256,
                                            progress=progress)
        feats_r, _ = extract_features(reconstructions, extractor, batch_size=batch_size, device=device,
                                      progress=progress)
        content = originals.content_sha256()
    check_finite(feats_o["2048"], "originals")
    check_finite(feats_r["2048"], "reconstructions")
    values = metrics_from_features(feats_r, feats_o, metrics=("fid", "kid") if kid else ("fid",), seed=seed)
    values.pop("unavailable")
    warn = [w for w in [small_set_warning(n, "rFID")] if w]
    skipped = getattr(dataset, "skipped", [])
    return {"rfid": values.pop("fid"), **{f"r{k}" if k.startswith("kid") else k: v for k, v in values.items()},
            **recon, "num_images": {"originals": n, "reconstructions": n}, "num_skipped": len(skipped),
            "skipped_files": [f"{p} ({r})" for p, r in skipped[:20]],
            "originals": {"content_sha256": content, **cache_o}, "warnings": warn,
            **_provenance(choice, seed, resolution, None, tokenizer_path),
            "resize_rule": "dataset images: ADM center crop to R×R (BOX halving + BICUBIC); reconstructions at the "
                           "tokenizer's output size R×R; both uint8, then torch-fidelity's TF1-bilinear resize to 299"}
