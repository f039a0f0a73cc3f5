"""How big is a real FID difference? FID/KID between two random halves of a real image set (sampling noise only)
vs FID/KID between the set and its JPEG-quality-10 copy (a visible degradation), at one evaluation resolution.

    python benchmarks/fid_halves_vs_jpeg.py --data /path/to/imagenet-sample --resolution 64 \
        --out runs/eval/halves_vs_jpeg.json

Images: ADM center crop to R×R (as every vistok data path), uint8; the JPEG copy re-encodes those R×R images with
PIL at quality 10. Features are extracted once per set (cached by content hash) and split afterwards. FID is biased
by N, so the table also gives the same-N comparison: half A vs the JPEG copy of half B.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vistok.cli.common import add_inception_option, add_threads_option, apply_threads
from vistok.data.imagefolder import ImageFolderDataset
from vistok.data.imageio import tensor_to_uint8
from vistok.metrics.fidelity import extract_features, metrics_from_features
from vistok.metrics.image_sets import ArrayImages
from vistok.metrics.inception import default_cache_dir, resolve_inception


def jpeg_copy(images: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder-layout folder")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--quality", type=int, default=10)
    add_inception_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    add_threads_option(p)
    p.add_argument("--out", default=None, help="JSON file for the numbers")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    start = time.perf_counter()
    choice = resolve_inception(args.inception)
    dataset = ImageFolderDataset(args.data, args.resolution)
    originals = np.stack([tensor_to_uint8(dataset[i]["image"]).numpy()
                          for i in tqdm(range(len(dataset)), desc="loading")])
    jpeg = jpeg_copy(originals, args.quality)
    extractor = choice.create(["2048"])
    cache_root = default_cache_dir() / "fidelity"
    feats = {}
    for name, arr in (("originals", originals), ("jpeg", jpeg)):
        f, _ = extract_features(ArrayImages(arr, name), extractor, batch_size=args.batch_size, cache_root=cache_root,
                                weights_sha256=choice.weights_sha256)
        feats[name] = f
    n = len(originals)
    perm = torch.from_numpy(np.random.default_rng(args.seed).permutation(n))
    a, b = perm[: n // 2], perm[n // 2: 2 * (n // 2)]

    def pick(f: dict, idx: torch.Tensor) -> dict:
        return {k: v[idx] for k, v in f.items()}

    rows = {
        f"half A vs half B ({len(a)} vs {len(b)})": metrics_from_features(pick(feats["originals"], a),
                                                                          pick(feats["originals"], b),
                                                                          metrics=("fid", "kid"), seed=args.seed),
        f"all vs JPEG-q{args.quality} copy ({n} vs {n})": metrics_from_features(feats["jpeg"], feats["originals"],
                                                                               metrics=("fid", "kid"), seed=args.seed),
        f"half A vs JPEG-q{args.quality} of half B ({len(a)} vs {len(b)})": metrics_from_features(
            pick(feats["jpeg"], b), pick(feats["originals"], a), metrics=("fid", "kid"), seed=args.seed),
    }
    print(f"\nFID/KID at {args.resolution}×{args.resolution}, {n} images of {args.data}, Inception: "
          f"{choice.source} ({choice.weights_sha256[:12]}…)")
    print(f"| {'comparison':<44} | {'FID':>8} | {'KID ×1e3':>9} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 11}|")
    for name, r in rows.items():
        print(f"| {name:<44} | {r['fid']:8.2f} | {1e3 * r['kid']:9.2f} |")
    report = {"data": args.data, "num_images": n, "resolution": args.resolution, "jpeg_quality": args.quality,
              "feature_extractor": choice.to_dict(), "seed": args.seed, "seconds": time.perf_counter() - start,
              "rows": {k: {m: v[m] for m in ("fid", "kid", "kid_std", "kid_subset_size")} for k, v in rows.items()}}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
