"""Post-training dimension-wise quantization (TokenBridge) of a trained KL autoencoder: fit the bins to a dataset's
latents (no gradient, no retraining), report reconstruction PSNR/SSIM of the continuous autoencoder vs its PTQ
versions, and save one PTQ version as an ordinary tokenizer.

    python eval/ptq.py --autoencoder runs/kl_ae_f8_imagenet64 --data /path/to/imagenet-sample \
        --bins 4 8 16 32 64 --save-bins 64 --out runs/kl_ae_f8_imagenet64_ptq

Writes ``<out>/ptq.json`` (one row per B) and, with ``--save-bins B``, the tokenizer to ``<out>/tokenizer``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vistok.errors import VistokError


def main(argv: list[str] | None = None, prog: str = "eval/ptq.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="a kl_ae or diffusers_kl folder (save_pretrained output / run)")
    p.add_argument("--data", required=True, help="ImageFolder-layout folder whose latents the bins are fitted to")
    p.add_argument("--bins", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="bins per dimension to report")
    p.add_argument("--save-bins", type=int, default=None, help="save the PTQ tokenizer with this many bins")
    p.add_argument("--num-images", type=int, default=None, help="default: all")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="ptq", help="output folder")
    args = p.parse_args(argv)
    try:
        from vistok.data import build_dataset
        from vistok.data.sources import data_cfg_from_arg
        from vistok.hub import load_pretrained
        from vistok.tokenizers.continuous import ContinuousLatentTokenizer, ptq_report

        ae = load_pretrained(args.autoencoder, kind="tokenizer")
        if not isinstance(ae, ContinuousLatentTokenizer):
            raise VistokError(f"--autoencoder {args.autoencoder}: holds a {type(ae).__name__}, not a continuous "
                              "autoencoder (kl_ae: train one with configs/tokenizer/kl_ae_f8_imagenet64.yaml; "
                              "diffusers_kl: wrap a diffusers AutoencoderKL)")
        dataset = build_dataset(data_cfg_from_arg(args.data, ae.resolution, args.num_images))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows, saved = ptq_report(ae, dataset, sorted(set(args.bins)), num_images=args.num_images,
                                 batch_size=args.batch_size, save_bins=args.save_bins)
    except VistokError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if saved is not None:
        saved.save_pretrained(out / "tokenizer")
    (out / "ptq.json").write_text(json.dumps({"autoencoder": str(args.autoencoder), "data": str(args.data),
                                              "rows": rows}, indent=2))
    print(f"{'bins':>6} {'bits/image':>11} {'PSNR':>7} {'SSIM':>7} {'PSNR gap':>9}")
    for r in rows:
        print(f"{r['bins']:>6} {r['bits_per_image']:>11.0f} {r['psnr']:>7.2f} {r['ssim']:>7.4f} {r['psnr_gap']:>9.3f}")
    print(f"wrote {out}/ptq.json" + (f" and the B={args.save_bins} tokenizer to {out}/tokenizer" if saved else ""))
    return 0

