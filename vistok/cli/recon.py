"""Reconstruction report of a tokenizer: PSNR, SSIM, codebook usage/perplexity, bits/image, a grid of
original/reconstruction pairs and a per-image CSV.

    python eval/recon.py --tokenizer runs/demo/tokenizer --data shapes --resolution 32 --out runs/demo/recon
    python eval/recon.py --tokenizer <dir> --data /path/to/imagenet/val --resolution 256 --num-images 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vistok.cli.common import add_device_option, add_tokenizer_data_options, load_tokenizer_and_data
from vistok.errors import VistokError


def main(argv: list[str] | None = None, prog: str = "eval/recon.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tokenizer_data_options(p)
    p.add_argument("--batch-size", type=int, default=64)
    add_device_option(p)
    p.add_argument("--out", default="recon", help="output folder (recon.json, pairs.png, per_image.csv)")
    args = p.parse_args(argv)
    try:
        import vistok
        from vistok.metrics.evaluate import evaluate_reconstruction
        from vistok.training.loop import pick_device

        tokenizer, resolution, data_cfg, dataset = load_tokenizer_and_data(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        metrics = evaluate_reconstruction(tokenizer, dataset, num_images=args.num_images, batch_size=args.batch_size,
                                          device=pick_device(args.device), pairs_path=out / "pairs.png",
                                          csv_path=out / "per_image.csv")
    except VistokError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    report = {**metrics, "seconds": time.perf_counter() - start, "tokenizer": str(args.tokenizer),
              "data": data_cfg, "resolution": resolution, "resize_rule": "ADM center crop (BOX halving + BICUBIC)",
              "metric_rule": "per-image PSNR/SSIM on uint8-quantized images, averaged; SSIM: Gaussian σ=1.5, 11×11",
              "vistok_version": vistok.__version__}
    (out / "recon.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: metrics[k] for k in ("psnr", "ssim", "codebook_usage", "bits_per_image", "num_images")}))
    print(f"wrote {out}/recon.json, {out}/pairs.png, {out}/per_image.csv")
    return 0

