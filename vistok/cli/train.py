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
import sys

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
        print(f"saved to {cfg.run_dir}")
    return 0



def console() -> None:
    """The `vistok-train` command."""
    sys.exit(main(prog="vistok-train"))
