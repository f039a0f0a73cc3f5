"""Bytes vs quality: prefix lengths 1..K of trained 1D tokenizers against Pillow's JPEG and WebP.

For every model given with ``--model label=run_dir`` (a trained ``vit1d`` tokenizer) and every prefix length k:
bytes/image = k · bits per token / 8 (the token indices at their information content, no container), and mean PSNR
and SSIM over the images. For JPEG and WebP, every image is encoded at a sweep of qualities with Pillow and the
measured file size is the byte count (headers included: that is what a codec file costs). Writes

    OUT/rate_distortion.md    the table (also printed) and where each model is above/below JPEG/WebP
    OUT/rate_distortion.json  every number
    OUT/rate_distortion.png   PSNR and SSIM vs bytes/image (log scale), one curve per method
    OUT/prefixes.png          originals and each model's reconstructions from 1, 2, 4, … K tokens
    OUT/adaptive.md           encode_adaptive: mean tokens/bytes an image needs for each --target-psnr

For a model in the latent space of a frozen autoencoder (``vit1d`` with ``autoencoder``, FlexTok's layout) the
autoencoder's own quality (continuous latents) is reported too, and drawn as a dotted line: the ceiling its tokens
can approach.

Example (the numbers in docs/tokenizers-1d.md):

    python benchmarks/rate_distortion.py --data runs/imagenet_split/heldout \
        --model "VQ + tail drop=runs/vit1d_vq_tail_drop_imagenet64" \
        --model "FSQ + nested dropout=runs/vit1d_fsq_nested_dropout_imagenet64" \
        --model "VQ, no regularizer=runs/vit1d_vq_noreg_imagenet64" --out runs/rate_distortion

``--overfit-config CONFIG`` additionally trains that tokenizer config three times (tail drop, nested dropout, none)
on the first ``--overfit-images`` images for ``--overfit-steps`` steps and reports PSNR per prefix length on them
(OUT/overfit_evidence.md): the regularizers' effect on the order of information, apart from generalization.

``--include OUT/rate_distortion.json`` merges the curves of an earlier run on the same images (models trained at
different times measured once each); the included models are loaded again only for the prefix grid.

``--make-split DIR`` first writes a train/held-out split of ``--data`` as symlinks (every 6th class folder held out;
nothing is copied) under DIR/train and DIR/heldout, so the tokenizers can be trained on one part and measured on
the other, then exits.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import vistok
from vistok.data import build_dataset, save_grid
from vistok.data.split import split_by_class
from vistok.metrics.codecs import JPEG_QUALITIES, WEBP_QUALITIES, codec_roundtrip, interpolate
from vistok.metrics.recon import psnr, ssim, to_unit_range


def make_split(src: Path, dst: Path, every: int = 6) -> dict[str, int]:
    """Symlink class folders of ``src`` into ``dst/train`` and ``dst/heldout`` (every ``every``-th class held out)."""
    return split_by_class(src, dst, every)


def load_images(root: str, resolution: int, num_images: int | None) -> torch.Tensor:
    dataset = build_dataset({"name": "imagefolder", "root": root, "resolution": resolution})
    if num_images is not None and num_images < len(dataset):
        dataset = Subset(dataset, range(num_images))
    return torch.cat([b["image"] for b in DataLoader(dataset, batch_size=64)])


def quality(reference: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR and SSIM on uint8-quantized images (as vistok.metrics computes them)."""
    x, y = to_unit_range(reference), to_unit_range(images)
    return psnr(x, y), ssim(x, y)


def reconstruction_fid(reference: torch.Tensor, images: torch.Tensor, inception: Any,
                       cache_dir: Path | None = None) -> dict[str, float]:
    """rFID and rKID of ``images`` against the ``reference`` images they reconstruct, through the harness
    (``vistok.metrics.fid``, both sides at the reference's resolution); ``inception`` is a resolved choice. With
    ``cache_dir`` the reference's Inception features are computed once and reused (cached by content hash)."""
    from vistok.metrics import fid

    m = fid(images, reference, inception=inception, metrics=("fid", "kid"), resolution=int(reference.shape[-1]),
            cache_dir=cache_dir, use_cache=cache_dir is not None, progress=False)
    return {"rfid": float(m["fid"]), "rkid": float(m["kid"])}


@torch.no_grad()
def tokenizer_curve(model: Any, images: torch.Tensor, batch_size: int, rfid_ks: set[int] | None = None,
                    inception: Any = None, cache_dir: Path | None = None) -> list[dict[str, float]]:
    """PSNR/SSIM (and rFID/rKID at the prefix lengths in ``rfid_ks``) of decoding every prefix length 1..K."""
    spec = model.token_spec
    tokens = torch.cat([model.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    rows = []
    for k in tqdm(range(1, spec.length + 1), desc="prefix lengths", leave=False):
        rec = torch.cat([model.decode(tokens[i:i + batch_size, :k]) for i in range(0, len(images), batch_size)])
        p, s = quality(images, rec)
        rows.append({"k": k, "bytes": spec.bits_per_image(k) / 8, "psnr": float(p.mean()), "ssim": float(s.mean())})
        if rfid_ks and k in rfid_ks:
            rows[-1].update(reconstruction_fid(images, rec, inception, cache_dir))
    return rows


@torch.no_grad()
def autoencoder_ceiling(ae: Any, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """PSNR/SSIM of a latent-space model's frozen autoencoder on its own (continuous latents, posterior mean): the
    quality its 1D tokens can at best approach."""
    rec = torch.cat([ae.decode_latents(ae.encode_latents(images[i:i + batch_size])).clamp(-1, 1)
                     for i in range(0, len(images), batch_size)])
    p, s = quality(images, rec)
    return {"psnr": float(p.mean()), "ssim": float(s.mean())}


def codec_curve(images: torch.Tensor, fmt: str, qualities: tuple[int, ...], inception: Any = None,
                cache_dir: Path | None = None, rfid_qualities: set[int] | None = None) -> list[dict[str, float]]:
    """Encode every image at each quality; mean file size (bytes), PSNR, SSIM, and with ``inception`` rFID/rKID
    (at every quality, or only those in ``rfid_qualities``)."""
    rows = []
    for q in tqdm(qualities, desc=fmt, leave=False):
        sizes, rec = codec_roundtrip(images, fmt, q)
        p, s = quality(images, rec)
        rows.append({"quality": q, "bytes": float(sizes.mean()), "psnr": float(p.mean()), "ssim": float(s.mean())})
        if inception is not None and (rfid_qualities is None or q in rfid_qualities):
            rows[-1].update(reconstruction_fid(images, rec, inception, cache_dir))
    return rows


def compare(label: str, rows: list[dict[str, float]], codecs: dict[str, list[dict[str, float]]]) -> list[str]:
    """Sentences saying where the model is above/below each codec and at which budgets."""
    lines = []
    for codec, curve in codecs.items():
        smallest = min(r["bytes"] for r in curve)
        below_range = [r for r in rows if r["bytes"] < smallest]
        inside = [(r, interpolate(curve, r["bytes"], "psnr")) for r in rows]
        inside = [(r, v) for r, v in inside if v is not None]
        parts = []
        if below_range:
            parts.append(f"{below_range[0]['bytes']:.0f}–{below_range[-1]['bytes']:.0f} B is below {codec}'s smallest "
                         f"file ({smallest:.0f} B at its lowest quality), where {codec} has no point at all; "
                         f"there {label} reaches {below_range[0]['psnr']:.1f}–{below_range[-1]['psnr']:.1f} dB")
        if inside:
            above = [r for r, v in inside if r["psnr"] > v]
            below = [r for r, v in inside if r["psnr"] <= v]
            for name, group in (("above", above), ("below", below)):
                if group:
                    parts.append(f"{name} {codec} in PSNR at {len(group)} of {len(inside)} budgets inside its range "
                                 f"({group[0]['bytes']:.0f}–{group[-1]['bytes']:.0f} B)")
        at_max = rows[-1]
        equal = _bytes_for(curve, at_max["psnr"])
        if equal is not None:
            parts.append(f"{codec} needs ≈{equal:.0f} B for the {at_max['psnr']:.1f} dB that {label} reaches with "
                         f"{at_max['bytes']:.0f} B (all {at_max['k']} tokens)")
        elif at_max["psnr"] < min(r["psnr"] for r in curve):
            parts.append(f"{codec}'s lowest quality ({min(r['psnr'] for r in curve):.1f} dB) is already above "
                         f"{label}'s best ({at_max['psnr']:.1f} dB)")
        lines.append(f"- {label} vs {codec}: " + "; ".join(parts) + ".")
    return lines


def _bytes_for(curve: list[dict[str, float]], target_psnr: float) -> float | None:
    pts = sorted((r["bytes"], r["psnr"]) for r in curve)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if p0 <= target_psnr <= p1 and p1 > p0:
            t = (target_psnr - p0) / (p1 - p0)
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return None


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {**{f"vistok: {k}": (v, "o-", 3) for k, v in results["tokenizers"].items()},
              **{f"Pillow {k}": (v, "s--", 4) for k, v in results["codecs"].items()}}
    keys = ["psnr", "ssim"]
    if any("rfid" in r for rows, _, _ in curves.values() for r in rows):
        keys.append("rfid")  # a third panel when --rfid-ks measured rFID (only the measured points are drawn)
    names = {"psnr": "PSNR (dB)", "ssim": "SSIM", "rfid": "rFID (lower is better)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 5))
    for ax, key in zip(axes, keys):
        for label, (rows, style, ms) in curves.items():
            pts = [(r["bytes"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, ms=ms, label=label)
        lines: dict[float, list[str]] = {}  # models sharing one autoencoder share one line
        for label, ceiling in results.get("ceilings", {}).items():
            if key in ceiling:
                lines.setdefault(round(ceiling[key], 6), []).append(label)
        for value, labels in lines.items():
            ax.axhline(value, ls=":", color="gray", lw=1)
            ax.annotate(f"the frozen autoencoder alone ({'; '.join(labels)})", (0.01, value),
                        xycoords=("axes fraction", "data"), fontsize=7, color="gray", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image (log scale)")
        ax.set_ylabel(names[key])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['num_images']} images, {results['resolution']}×{results['resolution']} center crop "
                 f"({results['data']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    out = ["| method | setting | bytes/image | PSNR (dB) | SSIM | rFID | rKID |", "|---|---|---:|---:|---:|---:|---:|"]

    def fid_cells(r: dict[str, float]) -> str:
        return f"{r['rfid']:.1f} | {r['rkid']:.4f}" if "rfid" in r else "– | –"

    for label, rows in results["tokenizers"].items():
        for r in rows:
            out.append(f"| {label} | k={r['k']} | {r['bytes']:.1f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{fid_cells(r)} |")
    for codec, rows in results["codecs"].items():
        for r in rows:
            out.append(f"| {codec} | q={r['quality']} | {r['bytes']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{fid_cells(r)} |")
    return "\n".join(out)


@torch.no_grad()
def adaptive(models: dict[str, Any], images: torch.Tensor, targets: list[float], batch_size: int) -> str:
    out = ["| model | target PSNR (dB) | mean tokens | mean bytes | images meeting it | tokens: min / median / max |",
           "|---|---:|---:|---:|---:|---|"]
    for label, model in models.items():
        if not model.token_spec.prefix_ok:
            continue
        for target in targets:
            ks, met = [], []
            for i in range(0, len(images), batch_size):
                res = model.encode_adaptive(images[i:i + batch_size], target_psnr=target)
                ks.append(res.num_tokens)
                met.append(res.met)
            k, m = torch.cat(ks).float(), torch.cat(met)
            bits = model.token_spec.bits_per_token
            out.append(f"| {label} | {target:g} | {k.mean():.2f} | {k.mean() * bits / 8:.1f} | "
                       f"{int(m.sum())}/{len(m)} | {int(k.min())} / {int(k.median())} / {int(k.max())} |")
    return "\n".join(out)


def prefix_grid(models: dict[str, Any], images: torch.Tensor, path: Path, num: int = 6) -> None:
    """Rows: originals, then per model its reconstructions from k = 1, 2, 4, …, K tokens (columns = images)."""
    x = images[:num]
    rows = [x]
    for model in models.values():
        kk = 1
        while kk <= model.token_spec.length:
            rows.append(model.decode(model.encode(x, num_tokens=kk)))
            kk = kk * 2 if kk * 2 <= model.token_spec.length or kk == model.token_spec.length \
                else model.token_spec.length
    save_grid(torch.cat(rows), path, nrow=num)


def overfit_evidence(images: torch.Tensor, config: str, steps: int, out: Path) -> str:
    """Train the config's model three times on the same few images (tail drop, nested dropout, none; same seed,
    steps and batch) and report PSNR per prefix length on those images. Memorization regime (train = test): on a
    CPU budget this is where a ViT tokenizer gets past "mean colour" and actually spreads information over its
    tokens, so it isolates what the regularizer does to the *order* of information from generalization."""
    from vistok.training.config import load_config

    cfg = load_config(config)
    base = {k: v for k, v in dict(cfg.model).items()}
    base["resolution"] = images.shape[-1]
    variants = {"tail drop": {"name": "tail_drop"}, "nested dropout (pow2)": {"name": "nested_dropout", "mode": "pow2"},
                "no regularizer": {"name": "none"}}
    curves = {}
    for label, prefix in variants.items():
        torch.manual_seed(0)
        model = vistok.build("tokenizer", {**base, "prefix": prefix})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
        for _ in tqdm(range(steps), desc=f"overfit {label}", leave=False):
            loss = sum(model(images).losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        curves[label] = tokenizer_curve(model.eval(), images, len(images))
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    ks = [k for k in ks if k <= len(next(iter(curves.values())))]
    header = f"| model (memorizing {len(images)} images, {steps} steps) | "
    lines = [header + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|" + "---:|" * len(ks)]
    for label, rows in curves.items():
        lines.append(f"| {label} | " + " | ".join(f"{rows[k - 1]['psnr']:.2f}" for k in ks) + " |")
    (out / "overfit_evidence.json").write_text(json.dumps(curves, indent=1))
    return "PSNR (dB) by prefix length k\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ImageFolder-layout image folder (e.g. ImageNet val)")
    parser.add_argument("--model", action="append", default=[], help="label=run_dir of a trained vit1d tokenizer")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--target-psnr", type=float, nargs="*", default=[15.0, 17.0, 19.0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--rfid-ks", type=int, nargs="*", default=[],
                        help="prefix lengths k at which to also compute rFID/rKID (+ codec qualities: below)")
    parser.add_argument("--rfid-codec-qualities", type=int, nargs="*", default=None,
                        help="with --rfid-ks: the codec qualities to compute rFID at (default: every one)")
    parser.add_argument("--inception", default="auto", help="auto | download | packaged | <path> (docs/evaluation.md)")
    parser.add_argument("--out", default="runs/rate_distortion")
    parser.add_argument("--include", action="append", default=[], metavar="JSON",
                        help="merge the curves of an earlier run (its rate_distortion.json, same --data, resolution "
                             "and images) into this table and plot; its models join the prefix grid")
    parser.add_argument("--make-split", metavar="DIR", help="write a train/held-out symlink split of --data and exit")
    parser.add_argument("--overfit-config", help="also run the memorization-regime evidence with this tokenizer config")
    parser.add_argument("--overfit-images", type=int, default=16)
    parser.add_argument("--overfit-steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.make_split:
        if not Path(args.data).is_dir():
            parser.error(f"--data {args.data} is not a folder")
        print(make_split(Path(args.data), Path(args.make_split)))
        return 0
    torch.set_num_threads(args.threads)
    models = {}
    for spec in args.model:
        if "=" not in spec:
            parser.error(f"--model {spec!r}: expected label=run_dir")
        label, run_dir = spec.split("=", 1)
        models[label] = vistok.load(run_dir, kind="tokenizer").eval()
        if models[label].resolution != args.resolution:
            parser.error(f"--model {run_dir} takes {models[label].resolution}×{models[label].resolution} images; "
                         f"pass --resolution {models[label].resolution}")
    images = load_images(args.data, args.resolution, args.num_images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"data": args.data, "resolution": args.resolution, "num_images": len(images),
                               "tokenizers": {}, "codecs": {},
                               "models": {spec.split("=", 1)[0]: spec.split("=", 1)[1] for spec in args.model}}
    inception = None
    if args.rfid_ks:
        from vistok.metrics.inception import resolve_inception

        inception = resolve_inception(args.inception)
        results["feature_extractor"] = inception.to_dict()  # which Inception computed the rFID columns
    for label, model in models.items():
        results["tokenizers"][label] = tokenizer_curve(model, images, args.batch_size, set(args.rfid_ks), inception,
                                                       out / "fid_cache")
        if getattr(model, "autoencoder", None) is not None:
            results.setdefault("ceilings", {})[label] = autoencoder_ceiling(model.autoencoder, images, args.batch_size)
    grid_models = dict(models)
    for path in args.include:
        earlier = json.loads(Path(path).read_text())
        same = {k: earlier.get(k) == results[k] for k in ("data", "resolution", "num_images")}
        if not all(same.values()):
            parser.error(f"--include {path}: measured on other images ({', '.join(k for k, v in same.items() if not v)}"
                         " differ); rerun it with this --data/--resolution/--num-images")
        clash = set(earlier["tokenizers"]) & set(results["tokenizers"])
        if clash:
            parser.error(f"--include {path}: labels {sorted(clash)} are already measured in this run")
        results["tokenizers"].update(earlier["tokenizers"])
        results.setdefault("ceilings", {}).update(earlier.get("ceilings", {}))
        for label, run_dir in earlier.get("models", {}).items():
            results["models"][label] = run_dir
            grid_models[label] = vistok.load(run_dir, kind="tokenizer").eval()
    rfid_qualities = set(args.rfid_codec_qualities) if args.rfid_codec_qualities is not None else None
    for name, fmt, qualities in (("JPEG", "JPEG", JPEG_QUALITIES), ("WebP", "WEBP", WEBP_QUALITIES)):
        results["codecs"][name] = codec_curve(images, fmt, qualities, inception, out / "fid_cache", rfid_qualities)
    summary = [line for label, rows in results["tokenizers"].items()
               for line in compare(label, rows, results["codecs"])]
    summary += [f"{label}: its frozen autoencoder alone (continuous latents) reaches {c['psnr']:.2f} dB PSNR, "
                f"SSIM {c['ssim']:.3f}" for label, c in results.get("ceilings", {}).items()]
    results["summary"] = summary
    (out / "rate_distortion.json").write_text(json.dumps(results, indent=1))
    text = table(results) + "\n\n" + "\n".join(summary) + "\n"
    (out / "rate_distortion.md").write_text(text)
    print(text)
    plot(results, out / "rate_distortion.png")
    if grid_models:
        prefix_grid(grid_models, images, out / "prefixes.png")
        if args.target_psnr:
            adapt = adaptive(models, images, args.target_psnr, args.batch_size)
            (out / "adaptive.md").write_text(adapt + "\n")
            print(adapt)
    if args.overfit_config:
        evidence = overfit_evidence(images[:args.overfit_images], args.overfit_config, args.overfit_steps, out)
        (out / "overfit_evidence.md").write_text(evidence + "\n")
        print(evidence)
    print(f"wrote {out}/rate_distortion.{{md,json,png}}, prefixes.png, adaptive.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
