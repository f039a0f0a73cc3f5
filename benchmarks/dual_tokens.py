"""Semantic and pixel fidelity of dual-codebook tokenizers (TokenFlow's shared index, DualToken's separate indices)
on an image folder: per image, the tokens are decoded back into the teacher's deep feature space by the semantic
decoder and compared with the frozen teacher's features by cosine similarity (the distillation target, measured on
tokens, not on continuous latents); with a shallow teacher layer configured, likewise for the pixel codes. Also
PSNR and per-sub-vocabulary codebook usage. rFID comes from eval/rfid.py.

    python benchmarks/dual_tokens.py --tokenizer runs/dual_f8_imagenet64 runs/dualtoken_f8_imagenet64 \
        --data /path/to/heldout --resolution 64 --out runs/eval/dual_tokens.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import vistok
from vistok.data import build_dataset
from vistok.data.sources import data_cfg_from_arg
from vistok.errors import ConfigError, VistokError
from vistok.metrics.codebook import CodebookUsage
from vistok.metrics.recon import psnr, to_unit_range


@torch.no_grad()
def measure(tokenizer, dataset, batch_size: int = 32) -> dict[str, float]:
    from vistok.tokenizers.dual import DualCodebookTokenizer

    if not isinstance(tokenizer, DualCodebookTokenizer):
        raise ConfigError(f"{type(tokenizer).__name__}: not a dual-codebook tokenizer (tokenizer/dual)")
    tokenizer.eval()
    sums = {"semantic_cosine": 0.0, "pixel_cosine": 0.0, "psnr": 0.0}
    usage, n = CodebookUsage(tokenizer.token_spec), 0
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="dual tokens", leave=False):
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        tokens = tokenizer.encode(images)
        usage.update(tokens)
        codes = tokenizer.quantizer.indices_to_codes(tokens)
        teacher_sem, teacher_pix = tokenizer._split_teacher(tokenizer.teacher_features(images))
        sem = F.cosine_similarity(tokenizer._decode_semantics(codes), teacher_sem, dim=-1).mean(1)
        sums["semantic_cosine"] += sem.sum().item()
        if tokenizer.pixel_feature_out is not None:
            pix = tokenizer.pixel_feature_out(codes[..., tokenizer.quantizer.semantic_dim:])
            sums["pixel_cosine"] += F.cosine_similarity(pix, teacher_pix, dim=-1).mean(1).sum().item()
        sums["psnr"] += psnr(to_unit_range(tokenizer.decode(tokens)), to_unit_range(images)).sum().item()
        n += images.shape[0]
    result = {k: v / n for k, v in sums.items()}
    if tokenizer.pixel_feature_out is None:
        result["pixel_cosine"] = None
    per_channel = usage.result()
    result.update(num_images=n, bits_per_image=tokenizer.token_spec.bits_per_image(),
                  vocab_sizes=list(tokenizer.token_spec.vocab_sizes), **per_channel,
                  usage_per_subvocab=[(c > 0).double().mean().item() for c in usage.counts])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", nargs="+", required=True, help="dual tokenizer folders")
    p.add_argument("--data", required=True, help="an ImageFolder-layout folder (held-out images)")
    p.add_argument("--resolution", type=int, default=None, help="default: the tokenizer's resolution")
    p.add_argument("--num-images", type=int, default=None, help="default: all")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="a .json file for the results")
    args = p.parse_args(argv)
    results = {}
    try:
        for path in args.tokenizer:
            tok = vistok.load(path, kind="tokenizer")
            dataset = build_dataset(data_cfg_from_arg(args.data, args.resolution or tok.resolution))
            if args.num_images:
                dataset = Subset(dataset, range(min(args.num_images, len(dataset))))
            results[path] = measure(tok, dataset, args.batch_size)
            print(json.dumps({path: results[path]}))
    except VistokError as e:
        print(f"dual_tokens.py: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
