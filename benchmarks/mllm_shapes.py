"""MLLMs and standalone vistok GPTs side by side on captioned shapes, in one run with one judge.

    python benchmarks/mllm_shapes.py --mllm runs/mllm_vocab_shapes32 runs/mllm_adapter_shapes32 \
        --gpt runs/text_shapes32 --per-prompt 2 --num-images 48 --out runs/mllm_bench.json

For every MLLM: understanding accuracy (its free-text answer names the held-out image's color and shape; chance
1/24) and generation accuracy (the shapes judge finds the prompt's shape and color in images generated from the 24
"a <color> <shape>" prompts). For every GPT run (text-conditional generator): the same generation accuracy from the
same prompts. One ShapesJudge, trained on real shapes only, scores everything; its held-out accuracy is reported.
Each run's training CPU time is read from ``<run>/cpu_seconds`` when present (written by the caller).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mllm", nargs="*", default=[], help="MLLM folders")
    p.add_argument("--gpt", nargs="*", default=[], help="text-conditional generator run folders")
    p.add_argument("--num-images", type=int, default=48, help="held-out images for understanding")
    p.add_argument("--per-prompt", type=int, default=2)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge-steps", type=int, default=1000)
    p.add_argument("--judge-train-size", type=int, default=16000)
    p.add_argument("--out", default="runs/mllm_bench.json")
    p.add_argument("--grid-dir", default=None, help="save each run's generated images as <dir>/<run name>.png")
    args = p.parse_args(argv)

    import torch

    from vistok.data import build_dataset
    from vistok.data.judge import chance_level, judge_accuracy, train_judge
    from vistok.data.sources import data_cfg_from_arg
    from vistok.generate import SamplingSettings, load_generator_run, sample_images
    from vistok.mllm.evaluation import article, generate_for_prompts, shape_prompts, understanding_accuracy
    from vistok.mllm.sample import load_mllm

    torch.set_num_threads(1)
    prompts, shape_idx, color_idx = shape_prompts(args.per_prompt)
    start = time.perf_counter()
    judge, judge_acc = train_judge(32, steps=args.judge_steps, progress=False, train_size=args.judge_train_size,
                                   held_out_size=1000)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
              "judge_held_out": judge_acc, "chance": chance_level(), "prompts": len(prompts), "runs": []}

    def cpu(run: str) -> float | None:
        f = Path(run) / "cpu_seconds"
        return float(f.read_text()) if f.is_file() else None

    held = build_dataset(data_cfg_from_arg("shapes", 32, 256))
    held_items = [held[i] for i in range(len(held))]
    held_images = torch.stack([it["image"] for it in held_items])

    @torch.no_grad()
    def ceiling(tokenizer) -> dict[str, float]:
        """The judge on the tokenizer's reconstructions of held-out shapes: what a perfect generator could reach."""
        recon = torch.cat([tokenizer.decode(tokenizer.encode(x)).clamp(-1, 1) for x in held_images.split(64)])
        return judge_accuracy(judge, recon, [it["shape"] for it in held_items], [it["color"] for it in held_items])

    def grid_name(run: str) -> str:  # runs/x -> x; runs/x/checkpoints/step_0001100/model -> x_step_0001100
        parts = [q for q in Path(run).parts if q not in ("runs", "checkpoints", "model", ".")]
        return "_".join(parts[-2:]) if len(parts) > 1 and parts[-1].startswith("step_") else parts[-1]

    def save_grid(run: str, images: torch.Tensor) -> None:
        """One row per shape: its 6 colors ("a red circle", "a green circle", …), per_prompt images each."""
        if args.grid_dir:
            from torchvision.utils import save_image
            Path(args.grid_dir).mkdir(parents=True, exist_ok=True)
            save_image(images.clamp(-1, 1) * 0.5 + 0.5, Path(args.grid_dir) / f"{grid_name(run)}.png",
                       nrow=max(args.per_prompt, 1) * 6, padding=1)

    for run in args.mllm:
        model = load_mllm(run)
        row = {"run": run, "kind": "mllm", "bridge": model.bridge_cfg["name"], "token_kind": model.spec.kind,
               "train_cpu_seconds": cpu(run), "tokenizer_ceiling": ceiling(model.image_tokenizer)}
        if args.num_images:
            held = build_dataset(data_cfg_from_arg("shapes", model.image_tokenizer.resolution, args.num_images))
            items = [held[i] for i in range(args.num_images)]
            targets = [article(held.class_names[int(it["label"])]) for it in items]
            und = understanding_accuracy(model, torch.stack([it["image"] for it in items]), targets,
                                         "What is in this image?", shapes=True)
            row["understanding_acc"] = und["accuracy"]
            row["answers"] = list(zip(targets[:6], und["answers"][:6]))
        images = generate_for_prompts(model, prompts, batch_size=8, seed=args.seed, cfg_scale=args.cfg_scale,
                                      temperature=args.temperature, top_k=args.top_k)
        row["generation"] = judge_accuracy(judge, images, shape_idx, color_idx)
        save_grid(run, images)
        report["runs"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "answers"}), flush=True)
    for run in args.gpt:
        generator, tokenizer = load_generator_run(run)
        settings = SamplingSettings(num_per_prompt=args.per_prompt, cfg_scale=args.cfg_scale, seed=args.seed,
                                    temperature=args.temperature, top_k=args.top_k)
        images: list[torch.Tensor] = []
        for i, prompt in enumerate(prompts[:: args.per_prompt]):
            rng = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
            images.append(sample_images(generator, tokenizer, prompt, settings, rng))
        row = {"run": run, "kind": "gpt", "train_cpu_seconds": cpu(run), "tokenizer_ceiling": ceiling(tokenizer),
               "params_m": sum(p.numel() for p in generator.parameters()) / 1e6,
               "generation": judge_accuracy(judge, torch.cat(images), shape_idx, color_idx)}
        save_grid(run, torch.cat(images))
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    report["seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
