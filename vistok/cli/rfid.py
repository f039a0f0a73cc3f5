"""rFID of a tokenizer (reconstructions vs the same originals, both at the evaluation resolution), with PSNR, SSIM,
codebook usage/perplexity and bits/image; a grid PNG of original/reconstruction pairs and a per-image CSV.

    python eval/rfid.py --tokenizer runs/vq_f8_imagenet64 --data /data/imagenet-sample --resolution 64 \
        --out runs/eval/rfid_vq64
    python eval/rfid.py --tokenizer <dir> --data /data/imagenet/val --resolution 256 --out m.json

``--out``: a folder (gets rfid.json, pairs.png, per_image.csv) or a .json path (pairs/CSV written next to it).
``--inception auto|download|packaged|<path>``: see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from vistok.cli.common import (
    add_device_option,
    add_inception_option,
    add_tokenizer_data_options,
    load_tokenizer_and_data,
)
from vistok.errors import VistokError


def main(argv: list[str] | None = None, prog: str = "eval/rfid.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tokenizer_data_options(p)
    p.add_argument("--num-tokens", type=int, default=None,
                   help="decode from the first k tokens (1D tokenizers with prefix decoding only)")
    add_inception_option(p)
    p.add_argument("--batch-size", type=int, default=64)
    add_device_option(p)
    p.add_argument("--seed", type=int, default=2020, help="KID subsets (default: torch-fidelity's seed)")
    p.add_argument("--cache-dir", default=None, help="converted weights + feature cache (default ~/.cache/vistok)")
    p.add_argument("--out", default="rfid", help="output folder, or a .json file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    json_path, folder = (out, out.parent) if out.suffix == ".json" else (out / "rfid.json", out)
    try:
        from vistok.metrics.reconstruction_fid import rfid
        from vistok.training.loop import pick_device

        tokenizer, _, data_cfg, dataset = load_tokenizer_and_data(args)
        if args.num_tokens is not None:
            tokenizer = _prefix_decoding(tokenizer, args.num_tokens)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = rfid(tokenizer, dataset, inception=args.inception, num_images=args.num_images,
                      batch_size=args.batch_size, device=pick_device(args.device), seed=args.seed,
                      cache_dir=args.cache_dir, pairs_path=folder / "pairs.png", csv_path=folder / "per_image.csv",
                      tokenizer_path=str(args.tokenizer))
    except VistokError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    result.update(seconds=time.perf_counter() - start, data=data_cfg, num_tokens_used=args.num_tokens)
    if args.num_tokens is not None:
        result["bits_per_image"] = tokenizer.token_spec.bits_per_image(num_tokens=args.num_tokens)
    json_path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("rfid", "rkid", "psnr", "ssim", "codebook_usage", "bits_per_image",
                                              "num_images", "resolution") if k in result}))
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {json_path}, {folder}/pairs.png, {folder}/per_image.csv")
    return 0


def _prefix_decoding(tokenizer, k: int):
    """Wrap a tokenizer so decode sees only its first k tokens (TokenSpec.prefix_ok tokenizers)."""
    from vistok.errors import ConfigError

    spec = tokenizer.token_spec
    if not getattr(spec, "prefix_ok", False):
        raise ConfigError(f"--num-tokens {k}: this tokenizer's TokenSpec does not allow prefix decoding "
                          "(prefix_ok=False); drop --num-tokens")
    if not 1 <= k <= spec.length:
        raise ConfigError(f"--num-tokens {k}: must be in 1..{spec.length}")
    encode = tokenizer.encode
    tokenizer.encode = lambda images: encode(images)[:, :k]
    return tokenizer

