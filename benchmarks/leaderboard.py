"""The tokenizer leaderboard: every tokenizer family trained at the same budget on the same images, measured on
held-out images of classes it never saw, next to JPEG and WebP at matching byte budgets.

    python benchmarks/leaderboard.py --data /path/to/imagenet --resolution 64 --steps 3000 --out runs/leaderboard \
        [--rows vq_f8 vit1d_fsq_tail_drop_128 ...] [--load "my VAE=runs/my_vae" ...] [--publish docs]

The data folder (ImageNet layout) is split by class into train/held-out symlinks (every 6th class held out). Each
row is a tokenizer config from configs/tokenizer/ (its family's recipe: architecture, lr, losses) trained for
``--steps`` steps × ``--batch-size`` images with ``--seed`` on the train part; ``--load`` adds already trained
folders (e.g. a diffusers autoencoder wrapped by vistok). Per row, on the held-out images: bits and bytes per image
(the token indices at their information content), saved parameters, encode and decode images/s on this machine,
PSNR, SSIM, rFID and rKID through the harness, codebook usage; and the PSNR JPEG and WebP reach at the row's byte
budget (interpolated in log-bytes between measured qualities; "–" below a codec's smallest file). 1D tokenizers
with prefix decoding are measured at full length (benchmarks/rate_distortion.py draws their whole curves).

Resumable: a row whose OUT/rows/<name>.json holds the same settings is not run again, and an interrupted training
continues from its last checkpoint. Every row records its train command, seed, git commit and timings. Writes
OUT/leaderboard.{md,json,png}; ``--publish DIR`` also writes DIR/leaderboard.md and DIR/img/leaderboard.png.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import vistok
from vistok.cli.common import add_inception_option, add_threads_option, apply_threads
from vistok.data import build_dataset
from vistok.data.split import split_by_class
from vistok.errors import VistokError
from vistok.metrics.codecs import CODECS, codec_roundtrip, interpolate
from vistok.metrics.recon import psnr, ssim, to_unit_range

ROOT = Path(__file__).resolve().parent.parent
# name -> (label, config under configs/tokenizer/, extra overrides). Same steps, batch, seed and images for all.
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "vq_f8": ("conv2d f8 + VQ (LlamaGen-style)", "vq_f8_imagenet64.yaml", []),
    "lfq_f8": ("conv2d f8 + group LFQ (WeTok)", "lfq_f8_imagenet64.yaml", []),
    "dual_f8": ("conv2d f8 + dual codebook (TokenFlow)", "dual_f8_imagenet64.yaml", []),
    "dualtoken_f8": ("conv2d f8 + two codebooks (DualToken)", "dualtoken_f8_imagenet64.yaml", []),
    "kl_ae_f8_ptq": ("KL AE f8 + dimension-wise PTQ (TokenBridge)", "kl_ae_f8_imagenet64.yaml", []),
    "vit1d_vq_tail_drop_32": ("1D, 32 tokens, VQ + tail drop (One-D-Piece)", "vit1d_vq_tail_drop_imagenet64.yaml", []),
    "vit1d_lfq_tail_drop_32": ("1D, 32 tokens, group LFQ + tail drop", "vit1d_lfq_tail_drop_imagenet64.yaml", []),
    "vit1d_fsq_tail_drop_32": ("1D, 32 tokens, FSQ + tail drop", "vit1d_fsq_tail_drop_imagenet64.yaml", []),
    # FlexTok as built: causal registers in the latent space of a frozen autoencoder, here the kl_ae row's own (so
    # this row runs after kl_ae_f8_ptq and its budget is that row's plus its own)
    "vit1d_fsq_nested_dropout_32": ("1D, 32 tokens, FSQ + nested dropout (FlexTok, latents of the kl_ae row)",
                                    "vit1d_fsq_nested_dropout_imagenet64.yaml",
                                    ["model.autoencoder={out}/runs/kl_ae_f8_ptq"]),
    "vit1d_binary_32": ("1D, 32 tokens, binary latents (Instella-T2I)", "vit1d_binary_imagenet64.yaml", []),
    # long enough that their bytes overlap JPEG's and WebP's smallest files (One-D-Piece compares at equal bytes)
    "vit1d_fsq_tail_drop_128": ("1D, 128 tokens, FSQ + tail drop", "vit1d_fsq_tail_drop_imagenet64.yaml",
                                ["model.num_tokens=128"]),
    "vit1d_fsq_tail_drop_256": ("1D, 256 tokens, FSQ + tail drop", "vit1d_fsq_tail_drop_imagenet64.yaml",
                                ["model.num_tokens=256"]),
}
CODEC_QUALITIES = {"JPEG": (1, 5, 10, 20, 50, 90), "WebP": (0, 5, 10, 20, 50, 90)}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def saved_parameters(folder: Path) -> int:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = f.keys()  # a safe_open handle is not iterable itself
        return sum(math.prod(f.get_slice(k).get_shape()) for k in names)


def row_settings(args: argparse.Namespace, name: str) -> dict[str, Any]:
    _, config, extra = ROWS[name]
    text = (ROOT / "configs" / "tokenizer" / config).read_text()
    return {"config": f"configs/tokenizer/{config}", "config_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
            "overrides": extra, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
            "resolution": args.resolution, "data": str(Path(args.data).resolve())}


def train_row(args: argparse.Namespace, name: str, split: Path, out: Path) -> tuple[Path, list[str], float]:
    """Train (or continue training) one row's tokenizer; returns its folder, the train.py command, seconds."""
    from vistok.training.config import load_config
    from vistok.training.run import run_training

    _, config, extra = ROWS[name]
    run_dir = out / "runs" / name
    extra = [e.format(out=out) for e in extra]
    for needed in (e.split("=", 1)[1] for e in extra if e.startswith("model.autoencoder=")):
        if not (Path(needed) / "model.safetensors").is_file():
            raise VistokError(f"row {name} reads the autoencoder {needed}: run its row first (--rows "
                              f"{Path(needed).name} {name})")
    overrides = ["data.name=imagefolder", f"data.root={split / 'train'}", f"data.resolution={args.resolution}",
                 f"run_dir={run_dir}", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                 f"train.seed={args.seed}", f"train.threads={args.threads}", f"train.image_every={args.steps}",
                 f"train.ckpt_every={max(1, args.steps // 5)}", f"train.log_every={max(1, args.steps // 50)}",
                 "eval.every=0", "eval.num_images=16", "eval.fid=false", *extra]
    command = ["python", "train.py", "--config", f"configs/tokenizer/{config}", *overrides, "--resume"]
    t0 = time.perf_counter()
    if not (run_dir / "model.safetensors").is_file():
        run_training(load_config(ROOT / "configs" / "tokenizer" / config, overrides), resume=True,
                     progress=not args.no_progress)
    model = vistok.load(run_dir, kind="tokenizer")
    if getattr(model, "registry_name", "") == "kl_ae":  # TokenBridge: fit the bins on the training latents
        from vistok.tokenizers.continuous import post_training_quantize

        bins, folder = model.quantizer.num_bins, run_dir / "tokenizer"  # where eval/ptq.py --out run_dir saves
        command += ["&&", "python", "eval/ptq.py", "--autoencoder", str(run_dir), "--data", str(split / "train"),
                    "--num-images", "512", "--bins", str(bins), "--save-bins", str(bins), "--out", str(run_dir)]
        if not (folder / "model.safetensors").is_file():
            images = load_images(split / "train", args.resolution, 512)
            with torch.no_grad():
                latents = torch.cat([model.encode_latents(x) for x in images.split(64)])
            post_training_quantize(model, latents, bins).save_pretrained(folder)
        return folder, command, time.perf_counter() - t0
    return run_dir, command, time.perf_counter() - t0


def load_images(root: Path, resolution: int, num_images: int | None = None) -> torch.Tensor:
    dataset = build_dataset({"name": "imagefolder", "root": str(root), "resolution": resolution})
    if num_images is not None and num_images < len(dataset):
        dataset = Subset(dataset, range(num_images))
    return torch.cat([b["image"] for b in DataLoader(dataset, batch_size=64)])


@torch.no_grad()
def throughput(fn, batches: list[torch.Tensor], repeats: int = 3) -> float:
    """Images/s of ``fn`` over ``batches`` (one warm-up pass, then the median of ``repeats`` timed passes)."""
    for b in batches[:1]:
        fn(b)
    n, times = sum(len(b) for b in batches), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        times.append(time.perf_counter() - t0)
    return n / sorted(times)[len(times) // 2]


@torch.no_grad()
def measure(model: Any, folder: Path, images: torch.Tensor, heldout: Path, args: argparse.Namespace,
            inception: Any) -> dict[str, Any]:
    from vistok.metrics import rfid

    model = model.eval()
    batches = list(images.split(args.batch_size))
    tokens = [model.encode(b) for b in batches]
    encode_ips = throughput(model.encode, batches)
    decode_ips = throughput(model.decode, tokens)
    dataset = build_dataset({"name": "imagefolder", "root": str(heldout), "resolution": args.resolution})
    m = rfid(model, dataset, inception=inception, batch_size=args.batch_size, progress=False,
             cache_dir=Path(args.out) / "fid_cache") if inception is not None else None
    recon = torch.cat([model.decode(t) for t in tokens])
    p, s = psnr(to_unit_range(images), to_unit_range(recon)), ssim(to_unit_range(images), to_unit_range(recon))
    spec = model.token_spec
    row = {"bits_per_image": spec.bits_per_image(), "bytes_per_image": spec.bits_per_image() / 8,
           "num_tokens": spec.length, "token_kind": spec.kind, "parameters": saved_parameters(folder),
           "encode_images_per_s": encode_ips, "decode_images_per_s": decode_ips,
           "psnr": float(p[torch.isfinite(p)].mean()), "ssim": float(s.mean()), "num_images": len(images)}
    if m is not None:
        row.update(rfid=float(m["rfid"]), rkid=float(m["rkid"]), codebook_usage=float(m["codebook_usage"]))
    return row


def codec_rows(images: torch.Tensor, inception: Any, cache_dir: Path) -> dict[str, list[dict[str, float]]]:
    from vistok.metrics import fid

    out: dict[str, list[dict[str, float]]] = {}
    for label, (fmt, sweep) in CODECS.items():
        rows = []
        for q in tqdm(sweep, desc=label, leave=False):
            sizes, rec = codec_roundtrip(images, fmt, q)
            p, s = psnr(to_unit_range(images), to_unit_range(rec)), ssim(to_unit_range(images), to_unit_range(rec))
            row = {"quality": q, "bytes": float(sizes.mean()), "psnr": float(p[torch.isfinite(p)].mean()),
                   "ssim": float(s.mean())}
            if inception is not None and q in CODEC_QUALITIES[label]:
                m = fid(rec, images, inception=inception, metrics=("fid", "kid"), resolution=int(images.shape[-1]),
                        cache_dir=cache_dir, progress=False)
                row.update(rfid=float(m["fid"]), rkid=float(m["kid"]))
            rows.append(row)
        out[label] = rows
    return out


def markdown(results: dict[str, Any]) -> str:
    rows, codecs = results["rows"], results["codecs"]
    head = ("| tokenizer | tokens | bits/image | bytes | params (M) | encode img/s | decode img/s | PSNR (dB) | SSIM | "
            "rFID | rKID | usage | JPEG PSNR at its bytes | WebP PSNR at its bytes |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def at(codec: str, nbytes: float) -> str:
        v = interpolate(codecs[codec], nbytes, "psnr")
        smallest = min(r["bytes"] for r in codecs[codec])
        return f"{v:.2f}" if v is not None else ("– (below its smallest file)" if nbytes < smallest else "–")

    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "–"

    for r in sorted(rows.values(), key=lambda r: r["bytes_per_image"]):
        lines.append(f"| {r['label']} | {r['num_tokens']} | {r['bits_per_image']:.0f} | {r['bytes_per_image']:.1f} | "
                     f"{r['parameters'] / 1e6:.2f} | {r['encode_images_per_s']:.0f} | {r['decode_images_per_s']:.0f} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {num(r, 'rfid', '.1f')} | {num(r, 'rkid', '.4f')} | "
                     f"{num(r, 'codebook_usage', '.3f')} | {at('JPEG', r['bytes_per_image'])} | "
                     f"{at('WebP', r['bytes_per_image'])} |")
    lines += ["", "| codec | quality | bytes/image | PSNR (dB) | SSIM | rFID | rKID |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for codec, sweep in codecs.items():
        for r in sweep:
            lines.append(f"| {codec} | {r['quality']} | {r['bytes']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                         f"{num(r, 'rfid', '.1f')} | {num(r, 'rkid', '.4f')} |")
    for name, error in results.get("failed", {}).items():
        lines.append(f"\nNot measured: `{name}` failed: {error}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["psnr", "rfid"] if any("rfid" in r for r in results["rows"].values()) else ["psnr"]
    fig, axes = plt.subplots(1, len(keys), figsize=(7.5 * len(keys), 5.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for codec, sweep in results["codecs"].items():
            pts = [(r["bytes"], r[key]) for r in sweep if key in r]
            ax.plot(*zip(*pts), "s--", ms=4, label=f"Pillow {codec}")
        for r in results["rows"].values():
            if key in r:
                ax.plot(r["bytes_per_image"], r[key], "o", ms=7)
                ax.annotate(r["label"], (r["bytes_per_image"], r[key]), fontsize=6, xytext=(4, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image (log scale)")
        ax.set_ylabel({"psnr": "PSNR (dB)", "rfid": "rFID (lower is better)"}[key])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    s = results["settings"]
    fig.suptitle(f"{results['num_heldout']} held-out images, {s['resolution']}×{s['resolution']}; every tokenizer "
                 f"{s['steps']} steps × {s['batch_size']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ImageNet-layout folder (one sub-folder per class)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, required=True, help="training steps, the same for every row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows to run (default all: {', '.join(ROWS)})")
    parser.add_argument("--load", action="append", default=[], metavar="LABEL=DIR",
                        help="also measure an already trained tokenizer folder")
    parser.add_argument("--holdout-every", type=int, default=6, help="hold out every N-th class")
    add_inception_option(parser, extra=" | none (no rFID)")
    add_threads_option(parser)
    parser.add_argument("--out", default="runs/leaderboard")
    parser.add_argument("--publish", metavar="DIR", help="also write DIR/leaderboard.md and DIR/img/leaderboard.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    apply_threads(args.threads)
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    split = out / "split"
    counts = split_by_class(args.data, split, args.holdout_every)
    inception = None
    if args.inception != "none":
        from vistok.metrics.inception import resolve_inception

        inception = resolve_inception(args.inception)
    heldout = load_images(split / "heldout", args.resolution)
    commit, started = git_commit(), datetime.datetime.now().isoformat(timespec="seconds")
    rows: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in args.rows:
        settings, path = row_settings(args, name), out / "rows" / f"{name}.json"
        if path.is_file() and json.loads(path.read_text()).get("settings") == settings:
            rows[name] = json.loads(path.read_text())
            print(f"{name}: done earlier, skipped ({path})")
            continue
        try:
            folder, command, seconds = train_row(args, name, split, out)
        except VistokError as e:  # one broken row must not cost the others; the table lists it as failed
            print(f"{name}: failed: {e}", file=sys.stderr)
            failed[name] = str(e)
            continue
        row = {"label": ROWS[name][0], "settings": settings, "train_command": shlex.join(command),
               "train_seconds": seconds, "git_commit": commit, "machine": machine(),
               **measure(vistok.load(folder, kind="tokenizer"), folder, heldout, split / "heldout", args, inception)}
        path.write_text(json.dumps(row, indent=1))
        rows[name] = row
        print(f"{name}: PSNR {row['psnr']:.2f} dB, {row['bytes_per_image']:.1f} B/image")
    for spec in args.load:
        label, _, folder = spec.partition("=")
        if not folder:
            parser.error(f"--load {spec!r}: expected LABEL=DIR")
        row = {"label": label, "settings": {"loaded": str(Path(folder).resolve())}, "git_commit": commit,
               "machine": machine(), **measure(vistok.load(folder, kind="tokenizer"), Path(folder), heldout,
                                               split / "heldout", args, inception)}
        rows[f"load:{label}"] = row
    codec_settings = json.loads(json.dumps({  # as it reads back from JSON (tuples become lists)
        "resolution": args.resolution, "holdout_every": args.holdout_every, "qualities": CODEC_QUALITIES,
        "data": str(Path(args.data).resolve()), "inception": inception.to_dict()["name"] if inception else None}))
    codec_path = out / "rows" / "codecs.json"
    if codec_path.is_file() and json.loads(codec_path.read_text())["settings"] == codec_settings:
        codecs = json.loads(codec_path.read_text())["codecs"]
    else:
        codecs = codec_rows(heldout, inception, out / "fid_cache")
        codec_path.write_text(json.dumps({"settings": codec_settings, "codecs": codecs}, indent=1))
    results = {"rows": rows, "failed": failed, "codecs": codecs, "num_heldout": len(heldout), "split": counts,
               "settings": {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                            "resolution": args.resolution, "holdout_every": args.holdout_every},
               "feature_extractor": inception.to_dict() if inception is not None else None,
               "command": shlex.join(["python", "benchmarks/leaderboard.py", *(argv if argv is not None
                                                                             else sys.argv[1:])]),
               "git_commit": commit, "date": started, "machine": machine()}
    (out / "leaderboard.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "leaderboard.md").write_text(table + "\n")
    plot(results, out / "leaderboard.png")
    print(table)
    if args.publish:
        publish(results, table, Path(args.publish))
    return 0


def publish(results: dict[str, Any], table: str, docs: Path) -> None:
    s = results["settings"]
    plot(results, docs / "img" / "leaderboard.png")
    fe = results["feature_extractor"] or {}
    text = f"""# Tokenizer leaderboard

Every tokenizer family of vistok trained at the same budget ({s['steps']} steps × batch {s['batch_size']}, seed
{s['seed']}, each with its family's recipe from `configs/tokenizer/`) on the same images, and measured on
{results['num_heldout']} held-out images of classes none of them saw ({results['split']['train']} training images;
every {s['holdout_every']}th class held out), at {s['resolution']}×{s['resolution']} (ADM center crop). JPEG and
WebP (Pillow) are measured on the same held-out images; their PSNR at a tokenizer's byte budget is interpolated in
log-bytes between measured qualities. Bytes per image count the token indices at their information content
(bits/image ÷ 8, no container); codec bytes are file sizes, headers included. rFID/rKID through the harness
({fe.get('name', 'no Inception')}); with {results['num_heldout']} images rFID is biased upward: compare rows, not
papers. Speeds are on the machine below, batch {s['batch_size']}.

- Date: {results['date']}; git commit {results['git_commit']}
- Machine: {results['machine']}
- Command: `{results['command']}`
- Each row's own train command, timings and seed: `leaderboard.json` in the output folder.

![leaderboard](img/leaderboard.png)

{table}
"""
    (docs / "leaderboard.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
