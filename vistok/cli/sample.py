"""Sample images for prompts from a trained generator run.

    python sample.py --model runs/demo/generator --prompt "red circle" --prompt "goldfish" \
        --num-per-prompt 4 --cfg-scale 2.0 --seed 0 --out samples/

A prompt resolves to a class by exact or fuzzy name match (class names, wnids, or an integer index). Writes one
PNG per sample, a grid PNG per prompt and manifest.json (prompt → class → files, seed, settings). For sub-token
(subvocab) models --cfg-scale, --temperature, --top-k and --top-p take one value per sub-token, comma-separated
(Open-MAGVIT2-XL: --cfg-scale 1.75,1.85 --temperature 1.1,1.0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vistok.cli.common import add_device_option
from vistok.errors import VistokError


def _values(kind: type):
    """One number, or a comma-separated list of them (one per sub-token)."""
    def parse(text: str):
        values = [kind(v) for v in text.split(",")]
        return values[0] if len(values) == 1 else values
    return parse


def main(argv: list[str] | None = None, prog: str = "sample.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="generator run folder (holds config.json, model.safetensors, "
                                                  "tokenizer/), or an MLLM folder")
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--num-per-prompt", type=int, default=4)
    p.add_argument("--cfg-scale", type=_values(float), default=2.0)
    p.add_argument("--cfg-schedule", choices=["constant", "linear", "cosine"], default=None,
                   help="guidance scale over the decoding steps (default: the generator's; GPT constant, xAR linear)")
    p.add_argument("--cfg-interval", type=int, default=-1,
                   help="LlamaGen's cfg_interval: -1 guides every step; c >= 0 guides steps 0..c+1 only")
    p.add_argument("--temperature", type=_values(float), default=1.0)
    p.add_argument("--top-k", type=_values(int), default=0)
    p.add_argument("--top-p", type=_values(float), default=1.0)
    p.add_argument("--num-tokens", type=int, default=None, help="tokens to generate (1D prefix tokenizers only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    add_device_option(p)
    p.add_argument("--out", default="samples")
    args = p.parse_args(argv)

    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            print(f"{prog}: error: --prompts-file {path} not found", file=sys.stderr)
            return 2
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        print(f"{prog}: error: give at least one --prompt or a --prompts-file", file=sys.stderr)
        return 2
    if args.num_per_prompt < 1:
        print(f"{prog}: error: --num-per-prompt must be at least 1", file=sys.stderr)
        return 2
    if args.cfg_interval < -1:
        print(f"{prog}: error: --cfg-interval must be -1 (guide every step) or >= 0", file=sys.stderr)
        return 2
    try:
        from vistok.generate import SamplingSettings, sample_prompts
        from vistok.mllm.sample import is_mllm_folder
        from vistok.training.loop import pick_device

        if is_mllm_folder(args.model):  # an LLM with a vistok tokenizer plugged in (vistok/mllm)
            from vistok.mllm.sample import sample_mllm

            sample_mllm(args.model, prompts, args.out, args.num_per_prompt, args.cfg_scale, args.temperature,
                        args.top_k, args.top_p, args.seed, args.num_tokens, args.batch_size, pick_device(args.device))
            print(f"wrote {args.out}/manifest.json")
            return 0
        settings = SamplingSettings(num_per_prompt=args.num_per_prompt, cfg_scale=args.cfg_scale,
                                    cfg_schedule=args.cfg_schedule, cfg_interval=args.cfg_interval,
                                    temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p, seed=args.seed, num_tokens=args.num_tokens,
                                    batch_size=args.batch_size)
        manifest = sample_prompts(args.model, prompts, args.out, settings, device=pick_device(args.device))
    except (VistokError, ValueError) as e:  # ValueError: sampling options the model cannot take
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    for entry in manifest["prompts"]:
        target = "text prompt" if entry["class_index"] is None else \
            f"class {entry['class_index']} ({entry['class_name']})"
        print(f"{entry['prompt']!r} → {target}: {entry['grid']}")
    print(f"wrote {args.out}/manifest.json")
    return 0



def console() -> None:
    """The `vistok-sample` command."""
    sys.exit(main(prog="vistok-sample"))
