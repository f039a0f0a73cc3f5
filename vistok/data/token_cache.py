"""Tokens pre-computed once by a frozen tokenizer, cached on disk for generator training (LlamaGen's "extract
codes" stage). The cache key is the tokenizer's weights hash plus the dataset config, so a retrained tokenizer or
a different dataset never reuses stale tokens. Stored as safetensors (tokens, labels) + a JSON manifest."""

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

from vistok.hub import WEIGHTS_NAME, file_sha256


class TokenDataset(Dataset):
    """Items ``{"tokens": LongTensor token_shape, "label": int}`` from a cache, plus ``"caption"`` when the
    dataset had captions (captioned shapes), for text-conditional generators."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, captions: list[str] | None = None) -> None:
        self.tokens, self.labels, self.captions = tokens, labels, captions

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"tokens": self.tokens[i].long(), "label": int(self.labels[i])}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item


@torch.no_grad()
def build_token_cache(tokenizer: Any, tokenizer_dir: str | Path, dataset: Dataset, data_cfg: dict[str, Any],
                      cache_dir: str | Path, batch_size: int = 256, num_workers: int = 0,
                      device: torch.device | str = "cpu", progress: bool = True) -> TokenDataset:
    """Encode ``dataset`` with ``tokenizer`` once; later calls with the same tokenizer weights and data config load
    the cached file instead."""
    key_src = json.dumps({"tokenizer": file_sha256(Path(tokenizer_dir) / WEIGHTS_NAME), "data": data_cfg},
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key}.safetensors"
    captions_path = path.with_suffix(".captions.json")  # written only for captioned datasets
    stale = not captions_path.is_file() and len(dataset) > 0 and "caption" in dataset[0]  # cached before captions
    if path.is_file() and not stale:
        cached = load_file(str(path))
        captions = json.loads(captions_path.read_text()) if captions_path.is_file() else None
        return TokenDataset(cached["tokens"], cached["labels"], captions)

    tokenizer = tokenizer.to(device).eval()
    tokens, labels, captions = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    for batch in tqdm(loader, desc="encoding tokens", disable=not progress, dynamic_ncols=True):
        tokens.append(tokenizer.encode(batch["image"].to(device)).cpu().to(torch.int32))
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
    return TokenDataset(all_tokens, all_labels, captions)
