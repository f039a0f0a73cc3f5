"""Feature-extraction throughput (images/s) of the harness vs a direct torch-fidelity call on the same image files,
in one run, with the same extractor instance (the same Inception weights).

    python benchmarks/fid_throughput.py --data /path/to/imagenet-sample --num-images 64 --resolution 64

The images are first written as R×R PNGs into a temporary folder (ADM center crop), so both paths decode the same
files. "harness" = ``FolderImages`` (decode check of every file, skip/resize bookkeeping, content hash) +
``vistok.metrics.fidelity.extract_features``; "torch-fidelity" = ``torch_fidelity.utils.
extract_featuresdict_from_input_id`` on the folder path (its own ImagesPathDataset). Goal: harness ≥ 0.95×.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch_fidelity.utils import extract_featuresdict_from_input_id

from vistok.cli.common import add_inception_option, add_threads_option, apply_threads
from vistok.data.imagefolder import ImageFolderDataset
from vistok.data.imageio import save_image
from vistok.metrics.fidelity import extract_features
from vistok.metrics.image_sets import FolderImages
from vistok.metrics.inception import resolve_inception


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder-layout folder to take images from")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    add_inception_option(p)
    add_threads_option(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    choice = resolve_inception(args.inception)
    extractor = choice.create(["2048"])
    dataset = ImageFolderDataset(args.data, args.resolution, validate=False)
    n = min(args.num_images, len(dataset))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            save_image(dataset[i]["image"], Path(tmp) / f"{i:05d}.png")
        with torch.no_grad():  # warm-up (allocator, oneDNN kernels) outside the timings
            extractor(torch.zeros(2, 3, args.resolution, args.resolution, dtype=torch.uint8))
        start = time.perf_counter()
        direct = extract_featuresdict_from_input_id(1, extractor, input1=tmp, batch_size=args.batch_size, cuda=False,
                                                    verbose=False, save_cpu_ram=n < 256)
        t_direct = time.perf_counter() - start
        start = time.perf_counter()
        images = FolderImages(tmp, progress=False)
        ours, _ = extract_features(images, extractor, batch_size=args.batch_size, progress=False)
        images.content_sha256()  # part of every harness call that caches
        t_ours = time.perf_counter() - start
    same = torch.allclose(direct["2048"], ours["2048"], rtol=1e-4, atol=1e-4)
    print(f"\nInception feature extraction, {n} PNGs at {args.resolution}×{args.resolution} → 299×299, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads, weights: {choice.source}; features identical: {same}")
    print(f"| {'path':<16} | {'seconds':>8} | {'images/s':>9} | {'vs torch-fidelity':>17} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 11}|{'-' * 19}|")
    print(f"| {'torch-fidelity':<16} | {t_direct:8.2f} | {n / t_direct:9.2f} | {1.0:16.2f}× |")
    print(f"| {'vistok harness':<16} | {t_ours:8.2f} | {n / t_ours:9.2f} | {t_direct / t_ours:16.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
