"""Training throughput (images/s) side by side in one run: the cost of a tokenizer step with pixel losses only, + the
PatchGAN discriminator, + LPIPS, + both; and DDP with 1 vs 2 gloo ranks (torchrun) at the same global batch.

    python benchmarks/train_throughput.py --out runs/train_throughput.json
    python benchmarks/train_throughput.py --config configs/tokenizer/llamagen_vq_imagenet64.yaml \\
        --data /path/to/imagenet-sample --batch-size 16 --steps 4 --rounds 3

Every measurement is a real ``train.py`` run under ``torchrun`` (the training loop, its task, its logged
``items_per_s``) of ``--steps`` steps, whose first step (start-up) is left out; the loss variants run on one rank
(``--nproc_per_node 1``, the DDP code path), which is also the 1-rank side of the DDP comparison. The runs take turns,
``--rounds`` times over, and the median is reported, so that other load on the machine weighs on all of them alike.
All runs go through the same launcher because it matters on a shared Linux machine: torchrun starts each worker in a
session of its own, and with the scheduler's autogroups (``/proc/sys/kernel/sched_autogroup_enabled``) each session
gets its own share of the CPUs, so a worker is scheduled unlike a ``python train.py`` started from a busy shell, and
2 ranks hold two shares where 1 rank holds one. The LPIPS trunk is random unless its
torchvision weights are in the cache: the cost of a step does not depend on the weights' values. The data are the
built-in shapes at the config's resolution unless ``--data`` names an ImageNet-layout folder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {  # config overrides per variant (on the recipe, which has LPIPS and the GAN)
    "pixel": ["loss.perceptual=null", "loss.gan.weight=0"],
    "+gan": ["loss.perceptual=null", "loss.gan.start=0"],
    "+lpips": ["loss.gan.weight=0"],
    "+lpips+gan": ["loss.gan.start=0"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(overrides: list[str], run_dir: Path, nproc: int) -> float:
    """One train.py run under torchrun with ``nproc`` gloo ranks; the median images/s over its steps after the
    first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port())]
    cmd = [*launcher, "train.py", "--no-progress", "--overwrite", *overrides, f"run_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    ips = [r["items_per_s"] for r in records if "loss" in r][1:]
    return statistics.median(ips)


def _trunk() -> str:
    from torchvision.models import VGG16_Weights

    from vistok.losses.perceptual import torchvision_weights_file

    return "pretrained" if torchvision_weights_file(VGG16_Weights.IMAGENET1K_V1)[0].is_file() else "random"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tokenizer/llamagen_vq_imagenet64.yaml",
                   help="a tokenizer recipe with loss.perceptual and loss.gan (default: the LlamaGen CPU recipe)")
    p.add_argument("--data", default=None, help="ImageNet-layout folder (default: the built-in shapes)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch, the same for 1 and 2 ranks")
    p.add_argument("--steps", type=int, default=4, help="steps per measured run (the first is left out)")
    p.add_argument("--rounds", type=int, default=2, help="turns over all variants; the median is reported")
    p.add_argument("--ddp-variant", default="pixel", choices=sorted(VARIANTS), help="losses of the DDP runs")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--out", default="runs/train_throughput.json")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is left out)")
    trunk = _trunk()
    plan = [(name, 1) for name in VARIANTS] + ([] if args.skip_ddp else [("2 ranks", 2)])
    results: dict[str, list[float]] = {name: [] for name, _ in plan}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        config = _with_data(args.config, args.data, Path(tmp) / "config.yaml")
        common = [f"--config={config}", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                  "train.batch_scope=global", "train.log_every=1", "train.image_every=0", "train.ckpt_every=0",
                  "train.threads=1", "train.num_workers=0", "train.device=cpu", "eval.num_images=8",
                  f"loss.perceptual.backbone={trunk}", "loss.perceptual.download=false"]
        for r in range(args.rounds):
            for name, nproc in plan:
                overrides = [*common, *VARIANTS[args.ddp_variant if nproc == 2 else name]]
                results[name].append(_run(overrides, Path(tmp) / f"{name}_{r}", nproc))
                print(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]:.2f} img/s", flush=True)
    median = {name: statistics.median(v) for name, v in results.items()}
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)),
        "cpus": os.cpu_count(), "config": args.config, "data": args.data or "shapes", "global_batch": args.batch_size,
        "steps_per_run": args.steps, "rounds": args.rounds, "lpips_trunk": trunk, "img_per_s": median,
        "img_per_s_all_rounds": results,
        "step_cost_vs_pixel": {name: median["pixel"] / median[name] for name in VARIANTS},
    }
    if not args.skip_ddp:
        report["ddp_variant"] = args.ddp_variant
        report["ddp_speedup_2_vs_1"] = median["2 ranks"] / median[args.ddp_variant]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| run | ranks | img/s (median) | step cost vs pixel |\n|---|---|---|---|")
    for name, nproc in plan:
        cost = report["step_cost_vs_pixel"].get(name)
        label = f"{args.ddp_variant}, 2 ranks" if nproc == 2 else name
        print(f"| {label} | {nproc} | {median[name]:.2f} | {'' if cost is None else f'{cost:.2f}×'} |")
    if not args.skip_ddp:
        print(f"2 ranks vs 1: {report['ddp_speedup_2_vs_1']:.2f}×")
    return 0


def _with_data(config: str, data: str | None, out: Path) -> Path:
    """The recipe with its data sections replaced (a key=value override would merge into them): ``data`` as an
    ImageNet-layout folder with the recipe's augmentation, or the built-in shapes at the recipe's resolution."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    resolution = int(cfg.data.get("resolution", 64))
    if data:
        cfg.data = {"name": "imagefolder", "root": str(data), "resolution": resolution, "validate": False,
                    "augment": OmegaConf.to_container(cfg.data.get("augment") or {})}
        cfg.eval.data = {"name": "imagefolder", "root": str(data), "resolution": resolution, "validate": False}
    else:
        cfg.data = {"name": "shapes", "resolution": resolution, "size": 512}
        cfg.eval.data = {"name": "shapes", "resolution": resolution, "size": 8, "seed": 1000}
    OmegaConf.save(cfg, out)
    return out


if __name__ == "__main__":
    sys.exit(main())
