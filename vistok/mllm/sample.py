"""Prompts → images through an MLLM folder (what ``sample.py --model runs/<mllm>`` does), with the same outputs as
the generator's sampler: one PNG per sample, a grid per prompt and ``manifest.json`` with every setting. Prompt
number ``p`` samples with ``torch.Generator`` seeded ``seed * 1_000_003 + p``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vistok.errors import ConfigError
from vistok.hub import CONFIG_NAME, WEIGHTS_NAME, file_sha256


def is_mllm_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a saved MLLM (``config.json`` whose ``_vistok`` block says kind ``mllm``)."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return (json.loads(config.read_text()).get("_vistok") or {}).get("kind") == "mllm"
    except (json.JSONDecodeError, AttributeError):
        return False


def load_mllm(path: str | Path, device: str | torch.device = "cpu") -> Any:
    from vistok.hub import load_pretrained

    return load_pretrained(path, kind="mllm").to(device).eval()


def sample_mllm(model_dir: str | Path, prompts: list[str], out_dir: str | Path, num_per_prompt: int = 4,
                cfg_scale: float = 3.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                num_tokens: int | None = None, batch_size: int = 8, device: str | torch.device = "cpu",
                progress: bool = True) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from vistok.generate import save_prompt_images

    if any(isinstance(v, list) for v in (cfg_scale, temperature, top_k, top_p)):
        raise ConfigError("an MLLM takes one --cfg-scale/--temperature/--top-k/--top-p value, not one per sub-token")
    if any(not p.strip() for p in prompts):
        raise ConfigError("empty prompt; describe the image, e.g. 'a red circle'")
    model = load_mllm(model_dir, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"num_per_prompt": num_per_prompt, "cfg_scale": cfg_scale, "temperature": temperature,
                "top_k": top_k, "top_p": top_p, "seed": seed, "num_tokens": num_tokens, "batch_size": batch_size}
    manifest: dict[str, Any] = {"model": str(model_dir), "mllm_sha256": file_sha256(Path(model_dir) / WEIGHTS_NAME),
                                "settings": settings,
                                "seed_rule": "torch.Generator seeded seed * 1_000_003 + prompt_number",
                                "prompts": []}
    for p, prompt in enumerate(tqdm(prompts, desc="sampling", disable=not progress)):
        rng = torch.Generator(model.device).manual_seed(seed * 1_000_003 + p)
        images = []
        for start in range(0, num_per_prompt, batch_size):
            n = min(batch_size, num_per_prompt - start)
            images.append(model.generate_images([prompt] * n, cfg_scale=cfg_scale, temperature=temperature,
                                                top_k=top_k, top_p=top_p, seed=rng, num_tokens=num_tokens).cpu())
        saved = save_prompt_images(torch.cat(images), out_dir, p, prompt)
        manifest["prompts"].append({"prompt": prompt, "class_index": None, "class_name": None, **saved,
                                    "seed": seed * 1_000_003 + p})
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
