"""Train a tokenizer or a generator from a YAML config.

    python train.py --config configs/tokenizer/vq_f4_shapes32.yaml [key=value ...] [--resume] [--overwrite]
    torchrun --nproc_per_node 8 train.py --config ...      # several processes (DDP), see docs/training.md

Stage 1 (``stage: tokenizer``) trains a tokenizer on images. Stage 2 (``stage: generator``, ``tokenizer=<dir>``)
encodes the dataset once with the frozen tokenizer (cached) and trains the GPT on the tokens. Overrides use
OmegaConf dot notation, e.g. ``train.steps=2000 model.quantizer.codebook_size=1024``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

from vistok.errors import VistokError
from vistok.training.config import load_config


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run folder and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        from vistok.training.run import run_training

        run_training(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except VistokError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 speaks
        seconds = record_cpu_seconds(Path(cfg.run_dir), resumed=args.resume)
        print(f"saved to {cfg.run_dir} ({seconds:.0f} CPU-seconds in all)")
    return 0


def record_cpu_seconds(run_dir: Path, resumed: bool) -> float:
    """Add this process's CPU time (every thread, and finished data-loader workers) to ``<run_dir>/cpu_seconds``:
    the training budget of the run, resumed parts included, that benchmarks compare runs by."""
    used = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
    path = run_dir / "cpu_seconds"
    if resumed and path.is_file():
        used += float(path.read_text())
    path.write_text(f"{used:.1f}\n")
    return used


def console() -> None:
    """The `vistok-train` command."""
    sys.exit(main(prog="vistok-train"))
