"""Tokens pre-computed once by a frozen tokenizer, cached on disk for generator training (LlamaGen's "extract
codes" stage). The cache key is the tokenizer's weights hash plus the dataset config (and the augmentation), so a
retrained tokenizer or a different dataset never reuses stale tokens. Stored as safetensors (tokens, labels) + a
JSON manifest.

Augmented views, as LlamaGen's ``extract_codes_c2i.py``: ``flip`` encodes every image and its mirror image (2 views);
``ten_crop`` encodes the four corner and the center R×R crops of the 1.1R center crop and of its mirror image
(torchvision ``TenCrop``, 10 views; the caller passes the dataset at resolution ⌊1.1R⌋). Training then draws one view
per item and epoch, deterministically (the epoch comes with the index from the training sampler)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vistok.data.imagefolder import draw_rng
from vistok.errors import ConfigError
from vistok.hub import WEIGHTS_NAME, file_sha256

AUGMENTS = ("none", "flip", "ten_crop")
TEN_CROP_SCALE = 1.1  # LlamaGen's --crop-range


class TokenDataset(Dataset):
    """Items ``{"tokens": LongTensor token_shape, "label": int}`` from a cache, plus ``"caption"`` when the
    dataset had captions (captioned shapes), for text-conditional generators. With ``num_views`` > 1 the tokens are
    (N, views, *token_shape) and each draw picks one view at random, as a function of (index, epoch)."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, captions: list[str] | None = None,
                 num_views: int = 1) -> None:
        self.tokens, self.labels, self.captions, self.num_views = tokens, labels, captions, num_views

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        tokens = self.tokens[i]
        if self.num_views > 1:
            tokens = tokens[draw_rng(0, i).randrange(self.num_views)]
        item = {"tokens": tokens.long(), "label": int(self.labels[int(i)])}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item


def views(images: torch.Tensor, augment: str, resolution: int) -> torch.Tensor:
    """(B, 3, H, W) → (B, V, 3, R, R): the augmented views of each image (see the module docstring)."""
    if augment == "none":
        return images[:, None]
    if augment == "flip":
        return torch.stack([images, images.flip(-1)], 1)
    if augment == "ten_crop":
        from torchvision.transforms.functional import ten_crop

        return torch.stack(ten_crop(images, [resolution, resolution]), 1)
    raise ConfigError(f"token cache augment must be one of {AUGMENTS}, got {augment!r}")


@torch.no_grad()
def build_token_cache(tokenizer: Any, tokenizer_dir: str | Path, dataset: Dataset, data_cfg: dict[str, Any],
                      cache_dir: str | Path, batch_size: int = 256, num_workers: int = 0,
                      device: torch.device | str = "cpu", progress: bool = True, augment: str = "none") -> TokenDataset:
    """Encode ``dataset`` with ``tokenizer`` once (each image as the views ``augment`` says); later calls with the
    same tokenizer weights, data config and augmentation load the cached file instead."""
    if augment not in AUGMENTS:
        raise ConfigError(f"token cache augment must be one of {AUGMENTS}, got {augment!r}")
    key = {"tokenizer": file_sha256(Path(tokenizer_dir) / WEIGHTS_NAME), "data": data_cfg}
    if augment != "none":  # caches written before augmentation existed keep their keys
        key["augment"] = augment
    key_src = json.dumps(key, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key}.safetensors"
    captions_path = path.with_suffix(".captions.json")  # written only for captioned datasets
    stale = not captions_path.is_file() and len(dataset) > 0 and "caption" in dataset[0]  # cached before captions
    num_views = {"none": 1, "flip": 2, "ten_crop": 10}[augment]
    if path.is_file() and not stale:
        cached = load_file(str(path))
        captions = json.loads(captions_path.read_text()) if captions_path.is_file() else None
        return TokenDataset(cached["tokens"], cached["labels"], captions, num_views)

    tokenizer = tokenizer.to(device).eval()
    tokens, labels, captions = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    for batch in tqdm(loader, desc="encoding tokens", disable=not progress, dynamic_ncols=True):
        images = views(batch["image"].to(device), augment, tokenizer.resolution)  # (B, V, 3, R, R)
        encoded = tokenizer.encode(images.flatten(0, 1)).cpu().to(torch.int32)
        encoded = encoded.unflatten(0, images.shape[:2]) if num_views > 1 else encoded
        tokens.append(encoded)
        labels.append(torch.as_tensor(batch["label"]).to(torch.int64))
        captions.extend(batch.get("caption", []))
    all_tokens, all_labels = torch.cat(tokens), torch.cat(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"tokens": all_tokens.contiguous(), "labels": all_labels.contiguous()}, str(tmp),
              metadata={"key": key_src, "token_spec": json.dumps(tokenizer.token_spec.to_dict())})
    captions = captions if len(captions) == len(all_tokens) else None
    if captions is not None:
        tmp_captions = captions_path.with_name(f".{captions_path.name}.tmp")
        tmp_captions.write_text(json.dumps(captions))
        os.replace(tmp_captions, captions_path)
    os.replace(tmp, path)
    return TokenDataset(all_tokens, all_labels, captions, num_views)
