"""Measure an MLLM: understanding (accuracy of its free-text answers on held-out images) and generation (prompt
accuracy judged by the shapes judge; FID/KID through the harness with --fid).

    python eval/mllm.py --model runs/mllm_vocab_shapes32 --data shapes --out m.json
    python eval/mllm.py --model runs/<mllm> --data /path/to/imagenet/val --num-images 200 --out m.json

Understanding: each held-out image is asked --question; an answer is right when it names the image's color and
shape (shapes: read before any "on a … background") or contains its class name (folders). Generation (shapes):
--per-prompt images for each of the 24 "a <color> <shape>" prompts, classified by a ShapesJudge trained on real
shapes only (its own held-out accuracy is reported next to its verdicts). Chance levels are in the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vistok.cli.common import add_device_option
from vistok.errors import VistokError


def main(argv: list[str] | None = None, prog: str = "eval/mllm.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an MLLM folder")
    p.add_argument("--data", default="shapes", help="'shapes' (held-out seed) or an ImageFolder-layout folder")
    p.add_argument("--num-images", type=int, default=96, help="held-out images to answer about (0: skip)")
    p.add_argument("--question", default="What is in this image?")
    p.add_argument("--text-encoder", default="minilm",
                   help="folders: sentence encoder that ranks the class names by closeness to each answer ('none': "
                        "skip)")
    p.add_argument("--per-prompt", type=int, default=2, help="generated images per shapes prompt (0: skip)")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge-steps", type=int, default=500)
    p.add_argument("--judge-train-size", type=int, default=16000, help="real shapes the judge trains on")
    p.add_argument("--fid", action="store_true", help="also FID/KID of the generated images vs held-out shapes")
    p.add_argument("--batch-size", type=int, default=8)
    add_device_option(p)
    p.add_argument("--out", default="mllm_eval.json")
    args = p.parse_args(argv)
    if args.num_images < 0 or args.per_prompt < 0:
        print("mllm.py: error: --num-images and --per-prompt must be >= 0", file=sys.stderr)
        return 2
    try:
        import torch

        from vistok.data import build_dataset
        from vistok.data.judge import chance_level, judge_accuracy, train_judge
        from vistok.data.sources import data_cfg_from_arg
        from vistok.mllm.evaluation import (
            article,
            generate_for_prompts,
            name_ranks,
            shape_prompts,
            understanding_accuracy,
        )
        from vistok.mllm.sample import is_mllm_folder, load_mllm
        from vistok.training.loop import pick_device

        if not is_mllm_folder(args.model):
            raise VistokError(f"--model {args.model}: not an MLLM folder (no config.json of kind 'mllm')")
        device = pick_device(args.device)
        model = load_mllm(args.model, device)
        res = model.image_tokenizer.resolution
        shapes = args.data == "shapes"
        report: dict = {"model": str(args.model), "data": args.data, "command": " ".join(sys.argv),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bridge": model.bridge_cfg,
                        "token_kind": model.spec.kind}
        start = time.perf_counter()
        if args.num_images:
            data_cfg = data_cfg_from_arg(args.data, res, args.num_images)
            dataset = build_dataset(data_cfg)
            n = min(args.num_images, len(dataset))
            items = [dataset[i] for i in torch.linspace(0, len(dataset) - 1, n).long().tolist()]
            images = torch.stack([it["image"] for it in items])
            names = list(dataset.class_names)
            targets = [article(names[int(it["label"])]) if shapes else names[int(it["label"])] for it in items]
            und = understanding_accuracy(model, images, targets, args.question, shapes, args.batch_size,
                                         progress=True)
            report["understanding"] = {
                "accuracy": und["accuracy"], "num_images": n, "data": data_cfg, "question": args.question,
                "chance": chance_level() if shapes else 1.0 / len(names),
                "examples": [{"target": t, "answer": a} for t, a in zip(targets[:12], und["answers"][:12])]}
            if not shapes and args.text_encoder != "none":  # classes are many: how near the answers come too
                report["understanding"]["semantic"] = name_ranks(und["answers"], targets, names, args.text_encoder)
        if shapes and args.per_prompt:
            prompts, shape_idx, color_idx = shape_prompts(args.per_prompt)
            gen = generate_for_prompts(model, prompts, args.batch_size, progress=True, seed=args.seed,
                                       cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                                       top_p=args.top_p)
            judge, judge_acc = train_judge(res, steps=args.judge_steps, device=device, progress=False,
                                           train_size=args.judge_train_size,
                                           held_out_size=min(2000, args.judge_train_size))
            report["generation"] = {**judge_accuracy(judge, gen, shape_idx, color_idx), "num_images": len(prompts),
                                    "judge_held_out": judge_acc, "chance": chance_level(),
                                    "sampling": {"cfg_scale": args.cfg_scale, "temperature": args.temperature,
                                                 "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}}
            from vistok.data.imageio import save_grid

            grid = Path(args.out).with_suffix(".png")
            save_grid(gen[:: max(1, args.per_prompt)][:24], grid, nrow=6)
            report["generation"]["grid"] = str(grid)
            if args.fid:
                from vistok.metrics.fidelity import fid

                real = torch.stack([it["image"] for it in build_dataset(data_cfg_from_arg("shapes", res,
                                                                                            len(gen)))])
                result = fid(gen, real, metrics=("fid", "kid"), resolution=res, device=device, progress=False)
                report["generation"].update({"fid": float(result["fid"]), "kid": float(result["kid"])})
        report["seconds"] = time.perf_counter() - start
    except (VistokError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    summary = {k: {m: v[m] for m in ("accuracy", "both", "shape", "color", "chance", "semantic") if m in v}
               for k, v in report.items() if k in ("understanding", "generation")}
    print(json.dumps(summary))
    print(f"wrote {args.out}")
    return 0


def console() -> None:
    sys.exit(main())
