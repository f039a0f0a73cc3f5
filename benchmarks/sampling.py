"""Sampling throughput of the GPT: static KV cache vs recomputing the whole prefix at every step, same model,
same tokens, one run. Prints a table (tokens/s and speed-up).

    python benchmarks/sampling.py [--dim 256 --depth 6 --heads 8 --grid 16 --vocab 1024 --batch 8]
"""

from __future__ import annotations

import argparse

import torch

from vistok.cli.common import timed
from vistok.generators.gpt import GPT
from vistok.spec import TokenSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--grid", type=int, nargs="+", default=[8, 16])
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    print(f"GPT dim {args.dim} depth {args.depth} heads {args.heads}, vocab {args.vocab}, batch {args.batch}, "
          f"CFG on (doubled batch), device {args.device}, torch threads {torch.get_num_threads()}")
    print("| tokens | KV cache tok/s | recompute tok/s | speed-up |\n|---|---|---|---|")
    for side in args.grid:
        spec = TokenSpec.vocab(args.vocab, grid=(side, side))
        model = GPT(spec.to_dict(), num_classes=10, dim=args.dim, depth=args.depth, heads=args.heads).eval()
        model.to(args.device)
        labels = torch.arange(args.batch, device=args.device) % 10
        rates = []
        for use_cache in (True, False):
            def run(m=model, y=labels, uc=use_cache):
                return m.generate(y, cfg_scale=2.0, use_cache=uc, generator=torch.Generator(args.device).manual_seed(0))

            seconds = timed(run, args.repeats)
            rates.append(args.batch * spec.length / seconds)
        print(f"| {spec.length} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[0] / rates[1]:.1f}× |")


if __name__ == "__main__":
    main()
