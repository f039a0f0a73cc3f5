"""FID, sFID, KID, precision/recall (and IS when the Inception has a classifier) of generated samples against a
reference, by the ADM evaluator's rules (openai/guided-diffusion evaluations/evaluator.py).

    python eval/fid.py --samples samples.npz --ref VIRTUAL_imagenet256_labeled.npz --out fid.json   # papers' gFID
    python eval/fid.py --samples samples/ --ref /data/imagenet/val --resolution 256 --out fid.json
    python eval/fid.py --samples samples/ --ref ref_stats.npz --out fid.json        # FID and sFID only
    python eval/fid.py --ref /data/imagenet/val --resolution 256 --write-stats ref_stats.npz   # stats file only

``--samples``/``--ref``: a folder of images (recursive), an ADM-style .npz (arr_0: uint8 NHWC), or for --ref a stats
file (mu, sigma, mu_s, sigma_s) written by --write-stats. An ADM reference batch holds arr_0 *and* mu/sigma/mu_s/
sigma_s: FID and sFID use its statistics (of the whole dataset), KID and precision/recall its arr_0 images
(``--ref-stats images`` computes everything from arr_0 instead); the JSON's ``ref_statistics`` says which.
``--inception auto|download|packaged|<path>``: see docs/evaluation.md. Reference features are cached by content hash
(``--cache-dir``, default ~/.cache/vistok) and recomputed when any reference image changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from vistok.cli.common import add_device_option, add_inception_option
from vistok.errors import VistokError


def main(argv: list[str] | None = None, prog: str = "eval/fid.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", help="folder or .npz of generated images")
    p.add_argument("--ref", required=True, help="reference: folder, ADM .npz (arr_0 [+ mu, sigma, mu_s, sigma_s]), or "
                   "a stats .npz (mu, sigma [, mu_s, sigma_s])")
    p.add_argument("--ref-stats", default="file", choices=("file", "images"),
                   help="file: FID/sFID against the reference's own mu/sigma, mu_s/sigma_s when it has them (ADM); "
                   "images: every statistic from its images")
    p.add_argument("--out", default="fid.json", help="result JSON")
    add_inception_option(p)
    p.add_argument("--resolution", type=int, default=None,
                   help="evaluation resolution R (default: that of the reference's statistics, else the samples' size)")
    p.add_argument("--metrics", default="fid,sfid,kid,prc,isc", help="comma-separated subset of fid,sfid,kid,prc,isc")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_option(p)
    p.add_argument("--seed", type=int, default=2020, help="KID subsets (default: torch-fidelity's seed)")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--cache-dir", default=None, help="converted weights + feature cache (default ~/.cache/vistok)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the reference feature cache")
    p.add_argument("--generator", default=None, help="generator folder that made the samples (recorded only)")
    p.add_argument("--write-stats", default=None, help="write the reference's FID statistics (.npz) to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from vistok.metrics.fidelity import fid, write_stats
        from vistok.training.loop import pick_device

        device = pick_device(args.device)
        start = time.perf_counter()
        if args.write_stats:
            meta = write_stats(args.ref, args.write_stats, inception=args.inception, resolution=args.resolution,
                               batch_size=args.batch_size, device=device, cache_dir=args.cache_dir)
            print(f"wrote {args.write_stats} ({meta['num_images']} images, {meta['resolution']}×{meta['resolution']}, "
                  f"Inception {meta['feature_extractor']['source']})")
            if not args.samples:
                return 0
        if not args.samples:
            raise VistokError("--samples is required (unless only --write-stats)")
        result = fid(args.samples, args.ref, inception=args.inception, metrics=tuple(args.metrics.split(",")),
                     resolution=args.resolution, ref_statistics=args.ref_stats, batch_size=args.batch_size,
                     device=device, seed=args.seed,
                     kid_subset_size=args.kid_subset_size, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                     generator=args.generator)
    except (VistokError, ValueError) as e:  # torch-fidelity reports bad arguments as ValueError
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    shown = {k: result[k] for k in ("fid", "sfid", "kid", "precision", "recall", "inception_score") if k in result}
    print(json.dumps({**shown, "num_images": result["num_images"], "resolution": result["resolution"],
                      "inception": result["feature_extractor"]["source"],
                      "ref_statistics": {m: u["from"] for m, u in result["ref_statistics"].items()},
                      "unavailable": result["unavailable"]}))
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {out}")
    return 0

